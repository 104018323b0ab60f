"""Pending guarded actions in Redis, and their one-time claim.

Usage::

    pending = guard.create(PendingAction(...), ttl=300)
    claim = guard.claim(pending.id, "confirmed", "U123")   # Claim(state="claimed", pending=...)
    claim = guard.claim(pending.id, "confirmed", "U123")   # Claim(state="taken", by="confirmed:U123")

A pending action lives under ``<prefix>pending:<id>`` with a TTL. Confirming
and cancelling both *claim* it with one Lua script: exactly one claim wins,
whether the second comes from a double click, a Slack retry or another replica.
The claim marker outlives the pending action so late clicks are told who won.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any, Literal, TYPE_CHECKING

if TYPE_CHECKING:
    import redis

__all__ = ["PendingAction", "Claim", "PendingStore"]

_CLAIM = """
local body = redis.call('GET', KEYS[1])
if not body then
  local prior = redis.call('GET', KEYS[2])
  if prior then return {'taken', prior} end
  return {'expired', ''}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return {'claimed', body}
end
return {'taken', redis.call('GET', KEYS[2])}
"""

# RELEASE: undo a claim whose action never started (its confirm row could not be logged): the pending
# action is back for its remaining time. KEYS: pending, claim. ARGV: claim value, body, ttl ms.
_RELEASE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'NX')
return 1
"""

CLAIM_MEMORY = 86400


@dataclass(frozen=True)
class PendingAction:
    command: str
    text: str
    requester: str
    team: str
    channel: str
    fingerprint: str
    plan: dict[str, Any]
    two_person: bool = False
    thread_ts: str | None = None
    channel_name: str | None = None
    context: str | None = None  # requested in a group's conversation (Where.context): results go there
    args: dict[str, Any] | None = None  # the parsed arguments, so the confirm runs them without parsing again
    created: float = field(default_factory=time.time)
    expires: float = 0.0
    id: str = field(default_factory=lambda: secrets.token_hex(8))

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str | bytes) -> "PendingAction":
        fields = json.loads(text)
        unknown = set(fields) - {f.name for f in dataclass_fields(cls)}
        if "context" not in fields and len(unknown) == 1:  # an older release named the context after its group
            fields["context"] = fields.pop(unknown.pop())
        for name in unknown:
            del fields[name]
        return cls(**fields)


@dataclass(frozen=True)
class Claim:
    state: Literal["claimed", "taken", "expired"]
    pending: PendingAction | None = None
    by: str = ""


class PendingStore:
    def __init__(self, client: redis.Redis, prefix: str = "opsbot:"):
        self.client = client
        self.prefix = prefix
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    def _keys(self, pending_id: str) -> list[str]:
        return [f"{self.prefix}pending:{pending_id}", f"{self.prefix}claim:{pending_id}"]

    def create(self, action: PendingAction, ttl: float) -> PendingAction:
        ttl_ms = max(int(ttl * 1000), 1)
        stamped = PendingAction(**{**asdict(action), "expires": action.created + ttl})
        self.client.set(self._keys(stamped.id)[0], stamped.to_json(), px=ttl_ms, nx=True)
        return stamped

    def get(self, pending_id: str) -> PendingAction | None:
        body = self.client.get(self._keys(pending_id)[0])
        return PendingAction.from_json(body) if body else None

    def outcome(self, pending_id: str) -> str | None:
        """Who claimed it and how (``confirmed:U1``, ``cancelled:U2``), if anyone did."""
        value = self.client.get(self._keys(pending_id)[1])
        return value.decode() if value else None

    def claim(self, pending_id: str, how: str, user: str) -> Claim:
        state, payload = self._claim(keys=self._keys(pending_id), args=[f"{how}:{user}", CLAIM_MEMORY])
        state = state.decode()
        if state == "claimed":
            return Claim("claimed", PendingAction.from_json(payload))
        return Claim(state, by=payload.decode() if payload else "")

    def release(self, pending: PendingAction, how: str, user: str, now: float | None = None) -> bool:
        """Give back a claim whose action never started; False if it expired meanwhile (or was not ours)."""
        ttl_ms = int((pending.expires - (now or time.time())) * 1000)
        if ttl_ms <= 0:
            return False
        return bool(self._release(keys=self._keys(pending.id), args=[f"{how}:{user}", pending.to_json(), ttl_ms]))

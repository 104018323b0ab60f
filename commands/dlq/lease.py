"""The one-task-per-queue lease: a requeue and a trim of one queue never run at the same time.

Usage::

    lease = QueueLease(client, "opsbot:dlq:lease:jobs")
    value = lease.take("trim", task_id, owner="host:pid", ttl=15.0)   # or raises LeaseBusy(holder)
    lease.renew(value, ttl=15.0)      # False: lost (taken over, expired, or Redis restarted)
    lease.release(value)
    lease.holder()                    # Holder(kind="trim", task="ab12", owner="host:pid") or None

The value is ``<task>:<owner>:<nonce>|<kind>|<run_id>`` (``owner`` is host:pid), where
``run_id`` is the Redis server's (``INFO server``) when the lease was granted; on a Redis
Cluster, that of the node serving the lease's slot (read inside a script on the key, so the
client asks the right node). A Redis restart gives a new run_id: a lease restored from disk
then belongs to no one; the next request takes it over at once instead of waiting out its
TTL, and its old holder stops at its next renewal.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.core.invocation import CommandError
from commands.dlq import lua

if TYPE_CHECKING:
    import redis

__all__ = ["QueueLease", "Holder", "LeaseBusy"]


@dataclass(frozen=True)
class Holder:
    kind: str   # requeue | trim | task (a lease written by an older version)
    task: str
    owner: str
    value: str


class LeaseBusy(CommandError):
    def __init__(self, queue: str, holder: Holder):
        super().__init__(f"a {holder.kind} of {queue!r} is already running ({holder.owner})")
        self.holder = holder


def parse(value: str) -> Holder:
    main, _, tail = value.partition("|")  # no "|": written before leases carried kind and run_id
    kind = tail.partition("|")[0] or "task"
    task, _, rest = main.partition(":")
    return Holder(kind, task, rest.rpartition(":")[0], value)


def run_id_of(value: str) -> str | None:
    parts = value.split("|")
    return parts[2] if len(parts) == 3 else None


class QueueLease:
    def __init__(self, client: redis.Redis, key: str, queue: str = ""):
        self.client = client
        self.key = key
        self.queue = queue
        self._take = client.register_script(lua.LEASE_TAKE)
        self._renew = client.register_script(lua.LEASE_RENEW)
        self._release = client.register_script(lua.LEASE_RELEASE)
        self._holder = client.register_script(lua.LEASE_HOLDER)

    def take(self, kind: str, task_id: str, *, owner: str, ttl: float) -> str:
        token = f"{task_id}:{owner}:{secrets.token_hex(4)}|{kind}"
        taken, value = self._take(keys=[self.key], args=[token, max(int(ttl * 1000), 1)])
        if not taken:
            raise LeaseBusy(self.queue, parse(value.decode()))
        return value.decode()

    def renew(self, value: str, *, ttl: float) -> bool:
        return bool(self._renew(keys=[self.key], args=[value, max(int(ttl * 1000), 1)]))

    def release(self, value: str) -> None:
        self._release(keys=[self.key], args=[value])

    def holder(self) -> Holder | None:
        """Who holds the lease now; None when nobody does, or it was granted before Redis restarted."""
        raw, run_id = self._holder(keys=[self.key])  # on the node holding the key (a cluster has several)
        if raw is None:
            return None
        holder = parse(raw.decode())
        granted = run_id_of(holder.value)
        if granted is not None and granted != run_id.decode():
            return None
        return holder

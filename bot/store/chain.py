"""The v1 hash-chain scheme (docs/conventions.md), shared by the action log and ``audit verify``.

Usage::

    digest = v1_hash(prev_hash, "42", "tenant-a", created_at, "alice", "case.update", '{"a": 1}')

``hash = hex(sha256(F(prevHash) || F(id) || F(tenantId) || F(createdAt) ||
F(actor) || F(action) || F(payload)))`` where ``F(NULL) = "-1:"`` and
``F(v) = <UTF-8 byte length of v> ":" v``. ``createdAt`` is UTC ISO-8601 with
milliseconds and ``payload`` is PostgreSQL's own ``jsonb::text``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

__all__ = ["field", "v1_hash", "iso_ms"]


def field(value: str | None) -> bytes:
    if value is None:
        return b"-1:"
    encoded = value.encode("utf-8")
    return b"%d:%s" % (len(encoded), encoded)


def iso_ms(moment: datetime) -> str:
    """``2026-01-31T09:15:02.123Z`` (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def v1_hash(
    prev_hash: str | None,
    row_id: str,
    tenant: str | None,
    created_at: datetime | str,
    actor: str | None,
    action: str | None,
    payload_text: str | None,
) -> str:
    created = created_at if isinstance(created_at, str) else iso_ms(created_at)
    digest = hashlib.sha256()
    for value in (prev_hash, row_id, tenant, created, actor, action, payload_text):
        digest.update(field(value))
    return digest.hexdigest()

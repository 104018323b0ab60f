"""``audit:``: the application's hash-chained audit table and how ``audit`` checks it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from bot.config.types import ConfigModel as _Model
from bot.config.types import Duration

__all__ = ["AUDIT_FIELDS", "AuditColumns", "AuditField", "AuditSettings", "HashScheme"]


AUDIT_FIELDS = ("prev_hash", "id", "tenant", "created", "actor", "action", "payload", "writer")
AuditField = Literal["prev_hash", "id", "tenant", "created", "actor", "action", "payload", "writer"]


class AuditColumns(_Model):
    """Column names of the audit table; ``writer`` (the node that wrote a row) is optional."""

    id: str = "id"
    tenant: str = "tenantId"
    created: str = "createdAt"
    actor: str = "actor"
    action: str = "action"
    payload: str = "payload"
    prev_hash: str = "prevHash"
    hash: str = "hash"
    writer: str | None = None


class HashScheme(_Model):
    """How one row's hash is computed. The default is v1 (docs/conventions.md)."""

    fields: list[AuditField] = ["prev_hash", "id", "tenant", "created", "actor", "action", "payload"]
    algorithm: str = "sha256"
    framing: Literal["length-prefixed", "separator"] = "length-prefixed"
    separator: str = "|"
    null: str = "-1:"
    created_format: Literal["iso-ms", "iso-us", "epoch-ms"] = "iso-ms"
    digest: Literal["hex", "base64"] = "hex"
    function: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

    @model_validator(mode="after")
    def _known_algorithm(self) -> HashScheme:
        import hashlib

        if self.algorithm not in hashlib.algorithms_available:
            raise ValueError(f"algorithm: unknown hash algorithm {self.algorithm!r}")
        if not self.fields and not self.function:
            raise ValueError("fields: name at least one field, or a function")
        return self


class AuditSettings(_Model):
    """The application's hash-chained audit table and how ``audit`` checks it."""

    database: str = "main"
    table: str = "AuditLog"
    columns: AuditColumns = AuditColumns()
    scheme: HashScheme = HashScheme()
    snapshot_secret: SecretStr | None = None
    hash_in_database: bool = True  # screen chains with PostgreSQL's own hashing; only suspect tenants are walked
    failure_limit: int = Field(20, ge=1, le=1000)
    window: int = Field(4096, ge=16, le=1_000_000)
    fork_window: Duration = 2.0
    timeout: Duration = 1800.0
    full_rescan_every: Duration = 7 * 86400.0
    stale_after: Duration = 86400.0

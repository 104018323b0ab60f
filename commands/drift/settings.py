"""``databases.<name>.migrations``: where a database's expected migrations come from, for ``drift``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from bot.config.types import ConfigModel as _Model
from bot.config.types import Duration, Identifier

__all__ = ["MigrationSource"]


class MigrationSource(_Model):
    """Where a database's expected migrations come from, for ``drift``.

    ``source`` is a folder (relative to app.yaml) — Prisma's ``prisma/migrations`` or
    Alembic's versions folder — or an http(s) URL answering the list as JSON.
    """

    tool: Literal["prisma", "alembic"]
    source: str
    table: Identifier | None = None  # _prisma_migrations / alembic_version
    db_schema: Identifier | None = Field(None, alias="schema")
    token: SecretStr | None = None  # bearer token for an http(s) source
    timeout: Duration = 10.0

"""Create and upgrade the bot's own PostgreSQL schema, idempotently.

Usage::

    applied = migrate(conn, "opsbot", folders)    # ['001_action_log', ...] the first time, [] after

Migrations are ``NNN_name.sql`` files: the framework's own (``bot/store/migrations``)
and those of the command groups (``Group.migrations``), applied together in name
order, each in its own transaction with ``search_path`` set to the bot's schema,
under an advisory lock so replicas starting together apply each exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql

__all__ = ["migrate", "pending_migrations", "MIGRATE_LOCK"]

MIGRATE_LOCK = 0x6F707362  # "opsb"


def _migrations(folders: Iterable[Path] = ()) -> list[tuple[str, str]]:
    """(name, SQL) of every migration, the framework's and the groups', in name order; names are unique."""
    sources = [resources.files("bot.store").joinpath("migrations"), *folders]
    found: dict[str, str] = {}
    for folder in sources:
        for entry in folder.iterdir():
            if entry.name.endswith(".sql"):
                name = entry.name.removesuffix(".sql")
                if name in found:
                    raise ValueError(f"two migrations are named {name!r}")
                found[name] = entry.read_text(encoding="utf-8")
    return sorted(found.items())


def pending_migrations(conn: psycopg.Connection, schema: str, folders: Iterable[Path] = ()) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f'"{schema}".schema_migrations',))
        if cur.fetchone()[0] is None:
            return [name for name, _ in _migrations(folders)]
        cur.execute(sql.SQL("SELECT version FROM {}.schema_migrations").format(sql.Identifier(schema)))
        done = {row[0] for row in cur.fetchall()}
    conn.rollback()
    return [name for name, _ in _migrations(folders) if name not in done]


def migrate(conn: psycopg.Connection, schema: str, folders: Iterable[Path] = ()) -> list[str]:
    """Apply every pending migration; returns the names applied now."""
    applied: list[str] = []
    ident = sql.Identifier(schema)
    for name, text in _migrations(folders):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.schema_migrations"
                    " (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(ident)
            )
            done = conn.execute(
                sql.SQL("SELECT 1 FROM {}.schema_migrations WHERE version = %s").format(ident), (name,)
            ).fetchone()
            if done:
                continue
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
            conn.execute(text)
            conn.execute(sql.SQL("INSERT INTO {}.schema_migrations (version) VALUES (%s)").format(ident), (name,))
            applied.append(name)
    return applied

"""The audit table as the verifier reads it: one SELECT, and the scheme that hashes its rows.

Usage::

    layout = Layout.load(conn, settings.audit)       # reads the column types once
    query = layout.select(where=sql.SQL("TRUE"))     # tenant, id, created, prev, hash, [writer], others
    hasher = compile_scheme(settings.audit.scheme, layout.positions)
    hasher(fields) == fields[layout.HASH]

Rows are read as PostgreSQL's own text (``COPY ... TO STDOUT``) and hashed as
stored: ``payload`` is ``jsonb::text`` and ``createdAt`` is formatted by the
server, never rebuilt in Python (docs/conventions.md). ``fields`` is a list of ``bytes``
with ``None`` for NULL, in the order of the SELECT.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING

from commands.audit.settings import AuditSettings, HashScheme
from bot.core.invocation import CommandError

if TYPE_CHECKING:
    from psycopg import sql

__all__ = ["CREATED", "HASH", "ID", "PREV", "TENANT", "Hasher", "Layout", "compile_scheme"]

TENANT, ID, CREATED, PREV, HASH = range(5)
_FIRST = ("tenant", "id", "created", "prev_hash", "hash")
_FORMATS = {
    "iso-ms": 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"',
    "iso-us": 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"',
}

Hasher = Callable[[Sequence[bytes | None]], bytes]


@dataclass(frozen=True)
class Layout:
    """Which columns are read, in which order, and how each becomes text."""

    settings: AuditSettings
    created_has_zone: bool
    names: tuple[str, ...]  # logical field names in SELECT order
    not_null: frozenset[str] = frozenset()  # logical fields whose column is NOT NULL

    @classmethod
    def load(cls, conn, settings: AuditSettings) -> Layout:
        from psycopg import sql

        cols = settings.columns
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a"
            " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
            (sql.Identifier(settings.table).as_string(conn),),
        ).fetchall()
        found = {name: kind for name, kind, _ in rows}
        required = {name for name, _, not_null in rows if not_null}
        if not found:
            raise CommandError(f"audit table {settings.table!r} does not exist in database {settings.database!r}")
        wanted = {name: getattr(cols, name) for name in _logical_fields(settings)}
        missing = [f"{name} ({column!r})" for name, column in wanted.items() if column not in found]
        if missing:
            raise CommandError(f"audit table {settings.table!r} has no column for: {', '.join(missing)}"
                               " (audit.columns in app.yaml)")
        return cls(settings, found[cols.created].startswith("timestamp with time zone"),
                   tuple(_logical_fields(settings)),
                   frozenset(name for name, column in wanted.items() if column in required))

    @property
    def positions(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.names)}

    def text_of(self, name: str, value: sql.Composable | None = None) -> sql.Composable:
        """The text the walk reads for a field: of its column, or of ``value`` (an expression of the column's type)."""
        from psycopg import sql

        column = sql.Identifier(getattr(self.settings.columns, name)) if value is None else \
            sql.SQL("({})").format(value)
        if name != "created":
            return sql.SQL("{}::text").format(column)
        utc = sql.SQL("({} AT TIME ZONE 'UTC')").format(column) if self.created_has_zone else column
        style = self.settings.scheme.created_format
        if style == "epoch-ms":
            return sql.SQL("floor(extract(epoch FROM {}) * 1000)::bigint::text").format(utc)
        return sql.SQL("to_char({}, {})").format(utc, sql.Literal(_FORMATS[style]))

    def select(self, where: sql.Composable, limit: int | None = None) -> sql.Composed:
        from psycopg import sql

        cols = self.settings.columns
        order = sql.SQL(", ").join(sql.Identifier(c) for c in (cols.tenant, cols.created, cols.id))
        query = sql.SQL("SELECT {fields} FROM {table} WHERE {where} ORDER BY {order}").format(
            fields=sql.SQL(", ").join(self.text_of(name) for name in self.names),
            table=sql.Identifier(self.settings.table), where=where, order=order)
        return query + (sql.SQL(" LIMIT {}").format(sql.Literal(limit)) if limit else sql.SQL(""))

    def column(self, name: str) -> sql.Identifier:
        from psycopg import sql

        return sql.Identifier(getattr(self.settings.columns, name))


def _logical_fields(settings: AuditSettings) -> list[str]:
    names = list(_FIRST)
    if settings.columns.writer:
        names.append("writer")
    for name in settings.scheme.fields:
        if name not in names:
            names.append(name)
    return names


def compile_scheme(scheme: HashScheme, positions: dict[str, int]) -> Hasher:
    """A function from a row's fields (bytes, None for NULL) to the hash it should have, as stored bytes."""
    if scheme.function:
        return _custom(scheme.function, positions)
    if "writer" in scheme.fields and "writer" not in positions:
        raise CommandError("audit.scheme.fields names writer but audit.columns.writer is not set")
    pick = _picker([positions[name] for name in scheme.fields])
    new = getattr(hashlib, scheme.algorithm, None) or (lambda data: hashlib.new(scheme.algorithm, data))
    finish = _finisher(scheme.digest)
    null = scheme.null.encode()
    if scheme.framing == "separator":
        separator = scheme.separator.encode()

        def separated(fields: Sequence[bytes | None]) -> bytes:
            return finish(new(separator.join(null if v is None else v for v in pick(fields))))

        return separated

    template = b"%d:%b" * len(scheme.fields)
    slots: list[object] = [None] * (2 * len(scheme.fields))
    hex_digest = scheme.digest == "hex"

    def framed(values: tuple) -> bytes:
        if None in values:
            return b"".join(null if v is None else b"%d:%b" % (len(v), v) for v in values)
        slots[0::2] = map(len, values)
        slots[1::2] = values
        return template % tuple(slots)

    if len(scheme.fields) == 7 and hex_digest:
        # v1's seven fields, unpacked into locals: about twice as fast as the general path, which
        # matters at millions of rows. A NULL (len(None)) falls back to the general path.
        def seven(fields: Sequence[bytes | None]) -> bytes:
            a, b, c, d, e, f, g = values = pick(fields)
            try:
                message = template % (len(a), a, len(b), b, len(c), c, len(d), d, len(e), e, len(f), f, len(g), g)
            except TypeError:
                message = framed(values)
            return new(message).hexdigest().encode()

        return seven

    def length_prefixed(fields: Sequence[bytes | None]) -> bytes:
        return finish(new(framed(pick(fields))))

    return length_prefixed


def _picker(indexes: list[int]) -> Callable[[Sequence], tuple]:
    if len(indexes) == 1:
        only = indexes[0]
        return lambda fields: (fields[only],)
    return itemgetter(*indexes)


def _finisher(digest: str) -> Callable[[object], bytes]:
    if digest == "base64":
        return lambda h: base64.b64encode(h.digest())
    return lambda h: h.hexdigest().encode("ascii")


def load_function(spec: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise CommandError(f"audit.scheme.function {spec!r} cannot be loaded: {exc}") from None
    if not callable(function):
        raise CommandError(f"audit.scheme.function {spec!r} is not callable")
    return function


def _custom(spec: str, positions: dict[str, int]) -> Hasher:
    """``module:function`` receives the row as {field: str | None} and returns the hash as text."""
    function = load_function(spec)
    names = list(positions)

    def custom(fields: Sequence[bytes | None]) -> bytes:
        row = {name: None if v is None else bytes(v).decode("utf-8") for name, v in zip(names, fields)}
        return str(function(row)).encode("utf-8")

    return custom

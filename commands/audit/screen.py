"""Screen chains where their rows are: PostgreSQL hashes every row and checks every link, and sends back counts.

Usage::

    screen = Screen.of(conn, layout, settings.audit)      # None: the scheme needs the Python walk
    verdicts = screen.run(tenant=None)                     # per tenant, in (tenant) order; run in a repeatable-read
                                                           # transaction, so both of its passes see the same rows
    clean = [v.report(snapshot) for v in verdicts if v.clean]
    walk = [v.tenant for v in verdicts if not v.clean]     # these are walked row by row, which explains them

A tenant whose every row matches its hash and names the row before it as its
``prevHash``, and whose snapshot head (if any) is still there with its hash, is one
the Python walk (:class:`commands.audit.walk.ChainWalker`) would report with no
finding at all: nothing else can produce one. So only the count, the head and the
number of suspect rows travel, and only tenants with a suspect row are walked. The
findings are therefore exactly the walk's; the database only decides who needs it.

The hash is the scheme's own framing over the same text the walk reads
(:meth:`Layout.text_of`), hashed with PostgreSQL's built-in ``sha224``/``sha256``/
``sha384``/``sha512``/``md5``. A ``function`` scheme, another algorithm, or a
database whose encoding is not UTF-8 (the walk hashes UTF-8 bytes) is not screened:
``Screen.of`` returns None and everything is walked, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from commands.audit.report import Snapshot, TenantReport
from commands.audit.scheme import Layout
from commands.audit.settings import AuditSettings, HashScheme

if TYPE_CHECKING:
    from psycopg import sql

__all__ = ["Screen", "Verdict"]

_DIGESTS = {"sha224", "sha256", "sha384", "sha512"}


@dataclass(frozen=True)
class Verdict:
    """What the database found in one tenant's chain."""

    tenant: str
    rows: int
    suspect: int  # rows whose hash or link does not hold
    head_id: str | None
    head_created: str | None
    head_hash: str | None

    @property
    def clean(self) -> bool:
        return self.suspect == 0

    def report(self, snapshot: Snapshot | None) -> TenantReport:
        """The walk's report of a clean chain: its rows and head, no findings."""
        return TenantReport(self.tenant, rows=self.rows, snapshot=snapshot, head_id=self.head_id,
                            head_created=self.head_created, head_hash=self.head_hash)


@dataclass(frozen=True)
class Screen:
    conn: object
    layout: Layout
    settings: AuditSettings
    digest: sql.Composable

    @classmethod
    def of(cls, conn, layout: Layout, settings: AuditSettings) -> Screen | None:
        scheme = settings.scheme
        if scheme.function or not settings.hash_in_database:
            return None
        if scheme.algorithm not in _DIGESTS | {"md5"}:
            return None
        if conn.execute("SHOW server_encoding").fetchone()[0].upper() not in ("UTF8", "UTF-8"):
            return None
        return cls(conn, layout, settings, _digest(scheme, _message(layout, scheme)))

    def run(self, tenant: str | None) -> list[Verdict]:
        """Two passes over the table (or one tenant's rows), both read by the database only.

        Contents need no order, so PostgreSQL may hash them with parallel workers; links are
        checked in (createdAt, id) order over the narrow columns only (the table's index gives
        that order), so the wide ones are never sorted.
        """
        from psycopg import sql

        layout, cols = self.layout, self.settings.columns
        tenant_col, hash_col, prev_col = (layout.column(name) for name in ("tenant", "hash", "prev_hash"))
        table = sql.Identifier(self.settings.table)
        where = sql.SQL("TRUE") if tenant is None else sql.SQL("{} = {}").format(tenant_col, sql.Literal(tenant))
        contents = dict((t, bad) for t, bad in self.conn.execute(sql.SQL(
            "SELECT {tenant}::text, count(*) FILTER (WHERE {digest} IS DISTINCT FROM {hash}::text)"
            " FROM {table} WHERE {where} GROUP BY 1").format(
            tenant=tenant_col, digest=self.digest, hash=hash_col, table=table, where=where)).fetchall())
        order = sql.SQL("PARTITION BY {t} ORDER BY {c}, {i}").format(
            t=tenant_col, c=sql.Identifier(cols.created), i=sql.Identifier(cols.id))
        links = self.conn.execute(sql.SQL("""
            SELECT t, count(*), count(*) FILTER (WHERE prev IS DISTINCT FROM before),
                   max(id) FILTER (WHERE last), max(created) FILTER (WHERE last), max(stored) FILTER (WHERE last)
            FROM (SELECT {tenant}::text AS t, {hash}::text AS stored, {prev}::text AS prev,
                         lag({hash}::text) OVER w AS before, lead(true) OVER w IS NULL AS last,
                         {id} AS id, {created} AS created
                  FROM {table} WHERE {where} WINDOW w AS ({order})) AS rows
            GROUP BY t ORDER BY t""").format(
            tenant=tenant_col, hash=hash_col, prev=prev_col, id=layout.text_of("id"),
            created=layout.text_of("created"), table=table, where=where, order=order)).fetchall()
        # Rows written between the two passes are not seen by either: the caller's transaction is repeatable read.
        return [Verdict(t, rows, broken + contents.get(t, rows), head_id, head_created, head_hash)
                for t, rows, broken, head_id, head_created, head_hash in links]


def _message(layout: Layout, scheme: HashScheme) -> sql.Composable:
    """The bytes the walk hashes, built in SQL: the scheme's fields, framed, NULL as ``scheme.null``."""
    from psycopg import sql

    null = sql.Literal(scheme.null)
    values = [(layout.text_of(name), name in layout.not_null) for name in scheme.fields]
    if scheme.framing == "separator":
        parts = [value if not_null else sql.SQL("coalesce({}, {})").format(value, null) for value, not_null in values]
        text = sql.SQL("concat_ws({}, {})").format(sql.Literal(scheme.separator), sql.SQL(", ").join(parts))
    else:
        # A NOT NULL column's text is computed twice per row instead of three times: it is most of the cost.
        parts = [sql.SQL("octet_length({v}) || ':' || {v}" if not_null else
                         "CASE WHEN {v} IS NULL THEN {null} ELSE octet_length({v}) || ':' || {v} END").format(
            v=value, null=null) for value, not_null in values]
        text = sql.SQL("concat({})").format(sql.SQL(", ").join(parts))
    return sql.SQL("convert_to({}, 'UTF8')").format(text)


def _digest(scheme: HashScheme, message: sql.Composable) -> sql.Composable:
    from psycopg import sql

    raw = (sql.SQL("decode(md5({}), 'hex')") if scheme.algorithm == "md5"
           else sql.SQL(f"{scheme.algorithm}({{}})")).format(message)
    if scheme.digest == "base64":
        return sql.SQL("translate(encode({}, 'base64'), E'\\n', '')").format(raw)
    return sql.SQL("encode({}, 'hex')").format(raw)

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

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass

from psycopg import sql

from commands.audit.report import Snapshot, TenantReport
from commands.audit.scheme import Layout
from commands.audit.settings import AuditSettings, HashScheme

__all__ = ["Fork", "Screen", "Verdict"]

_DIGESTS = {"sha224", "sha256", "sha384", "sha512"}

Fork = Callable[[str], AbstractContextManager]  # snapshot id -> a connection in a transaction that joined it


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

    @classmethod
    def of(cls, conn, layout: Layout, settings: AuditSettings) -> Screen | None:
        scheme = settings.scheme
        if scheme.function or not settings.hash_in_database:
            return None
        if scheme.algorithm not in _DIGESTS | {"md5"}:
            return None
        if conn.execute("SHOW server_encoding").fetchone()[0].upper() not in ("UTF8", "UTF-8"):
            return None
        return cls(conn, layout, settings)

    def run(self, tenant: str | None, fork: Fork | None = None) -> list[Verdict]:
        """Two passes over the table (or one tenant's rows), both read by the database only.

        Contents need no order; links are checked in (createdAt, id) order over the narrow columns
        only (the table's index gives that order), so the wide ones are never sorted.

        Without ``fork``, both passes run one after the other in this transaction, and PostgreSQL may
        hash contents with parallel workers. With ``fork`` (opens a connection whose transaction joins
        this one's exported snapshot) all of them run at once and see exactly the same rows: the link
        pass on one connection, and the contents of the whole table split in two halves of its pages,
        one here and one on another connection, each computing every field's text once per row
        (which PostgreSQL's parallel plan cannot). On a hot standby, as without ``fork``.
        """
        snapshot = _export_snapshot(self.conn) if fork is not None else None
        links_query = self._links(tenant)
        if snapshot is None:
            contents = self.conn.execute(self._contents(tenant, inline=True)).fetchall()
            links = self.conn.execute(links_query).fetchall()
        else:
            halves = self._halves() if tenant is None else [sql.SQL("TRUE")]
            with ThreadPoolExecutor(len(halves), thread_name_prefix="audit-screen") as pool:
                linked = pool.submit(_read_on, fork, snapshot, links_query)
                others = [pool.submit(_read_on, fork, snapshot, self._contents(tenant, inline=False, part=part))
                          for part in halves[1:]]
                # If this one fails, leaving the block waits for the others, and its error is the one raised.
                contents = self.conn.execute(self._contents(tenant, inline=False, part=halves[0])).fetchall()
                links = linked.result()
                for other in others:
                    contents += other.result()
        # Rows written during the passes are seen by none of them: they all read this transaction's snapshot.
        bad: dict[str, int] = {}
        for t, count in contents:
            bad[t] = bad.get(t, 0) + count
        return [Verdict(t, rows, broken + bad.get(t, rows), head_id, head_created, head_hash)
                for t, rows, broken, head_id, head_created, head_hash in links]

    def _where(self, tenant: str | None) -> sql.Composable:
        column = self.layout.column("tenant")
        return sql.SQL("TRUE") if tenant is None else sql.SQL("{} = {}").format(column, sql.Literal(tenant))

    def _contents(self, tenant: str | None, *, inline: bool, part: sql.Composable = sql.SQL("TRUE")) -> sql.Composed:
        """Rows whose hash does not match, per tenant. ``inline``: one expression per row, which a parallel plan
        can run; else each field's text is computed once in a subquery (``OFFSET 0`` keeps PostgreSQL from
        merging it back into the expression, which would compute ``jsonb::text`` and ``to_char`` again for
        the length prefix), and the plan is serial."""
        layout, scheme = self.layout, self.settings.scheme
        tenant_col, hash_col = layout.column("tenant"), layout.column("hash")
        table, where = sql.Identifier(self.settings.table), self._where(tenant)
        if inline:
            digest = _digest(scheme, _message(layout, scheme, layout.text_of))
            return sql.SQL("SELECT {tenant}::text, count(*) FILTER (WHERE {digest} IS DISTINCT FROM {hash}::text)"
                           " FROM {table} WHERE {where} GROUP BY 1").format(
                tenant=tenant_col, digest=digest, hash=hash_col, table=table, where=where)
        names = {name: sql.Identifier(f"_text_{n}") for n, name in enumerate(scheme.fields)}
        digest = _digest(scheme, _message(layout, scheme, names.__getitem__))
        texts = sql.SQL(", ").join(sql.SQL("{} AS {}").format(layout.text_of(name), alias)
                                   for name, alias in names.items())
        return sql.SQL("SELECT _tenant, count(*) FILTER (WHERE {digest} IS DISTINCT FROM _hash)"
                       " FROM (SELECT {tenant}::text AS _tenant, {hash}::text AS _hash, {texts} FROM {table}"
                       " WHERE {where} AND {part} OFFSET 0) AS texts GROUP BY 1").format(
            digest=digest, tenant=tenant_col, hash=hash_col, texts=texts, table=table, where=where, part=part)

    def _halves(self) -> list[sql.Composable]:
        """The table's pages in two halves (TID range scans), or all of it where it is not a plain table."""
        table = sql.Identifier(self.settings.table).as_string(self.conn)
        pages = self.conn.execute(
            "SELECT pg_relation_size(c.oid) / current_setting('block_size')::int FROM pg_class c"
            " WHERE c.oid = to_regclass(%s) AND c.relkind = 'r'", (table,)).fetchone()
        if not pages or pages[0] < 2:
            return [sql.SQL("TRUE")]
        middle = sql.Literal(f"({pages[0] // 2},0)")
        # The second half is open-ended: pages added since the size was read hold no row this snapshot sees,
        # and nothing can fall between the two.
        return [sql.SQL("ctid < {}::tid").format(middle), sql.SQL("ctid >= {}::tid").format(middle)]

    def _links(self, tenant: str | None) -> sql.Composed:
        layout, cols = self.layout, self.settings.columns
        tenant_col, hash_col, prev_col = (layout.column(name) for name in ("tenant", "hash", "prev_hash"))
        order = sql.SQL("PARTITION BY {t} ORDER BY {c}, {i}").format(
            t=tenant_col, c=sql.Identifier(cols.created), i=sql.Identifier(cols.id))
        # The head's id and createdAt travel as they are and become text once per tenant, not once per row
        # (to_char on every row cost this pass a fifth of its time).
        head_id, head_created = (layout.text_of(name, sql.SQL("(array_agg({}) FILTER (WHERE last))[1]").format(
            sql.Identifier(name))) for name in ("id", "created"))
        return sql.SQL("""
            SELECT t, count(*), count(*) FILTER (WHERE prev IS DISTINCT FROM before),
                   {head_id}, {head_created}, max(stored) FILTER (WHERE last)
            FROM (SELECT {tenant}::text AS t, {hash}::text AS stored, {prev}::text AS prev,
                         lag({hash}::text) OVER w AS before, lead(true) OVER w IS NULL AS last,
                         {id} AS id, {created} AS created
                  FROM {table} WHERE {where} WINDOW w AS ({order})) AS rows
            GROUP BY t ORDER BY t""").format(
            head_id=head_id, head_created=head_created, tenant=tenant_col, hash=hash_col, prev=prev_col,
            id=layout.column("id"), created=layout.column("created"), table=sql.Identifier(self.settings.table),
            where=self._where(tenant), order=order)


def _export_snapshot(conn) -> str | None:
    """This transaction's snapshot for other connections to join, or None on a hot standby (kept to one
    connection there: not tested on one). Not in a savepoint: PostgreSQL exports no snapshot from a
    subtransaction, so a failure here fails the verification rather than falling back."""
    if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
        return None
    return conn.execute("SELECT pg_export_snapshot()").fetchone()[0]


def _read_on(fork: Fork, snapshot: str, query: sql.Composed) -> list[tuple]:
    with fork(snapshot) as conn:
        return conn.execute(query).fetchall()


def _message(layout: Layout, scheme: HashScheme, value_of: Callable[[str], sql.Composable]) -> sql.Composable:
    """The bytes the walk hashes, built in SQL: the scheme's fields (``value_of`` a field: its text), framed,
    NULL as ``scheme.null``."""
    null = sql.Literal(scheme.null)
    values = [(value_of(name), name in layout.not_null) for name in scheme.fields]
    if scheme.framing == "separator":
        parts = [value if not_null else sql.SQL("coalesce({}, {})").format(value, null) for value, not_null in values]
        text = sql.SQL("concat_ws({}, {})").format(sql.Literal(scheme.separator), sql.SQL(", ").join(parts))
    else:
        # A NOT NULL column's text is named twice per row instead of three times: inline, it is computed each time.
        parts = [sql.SQL("octet_length({v}) || ':' || {v}" if not_null else
                         "CASE WHEN {v} IS NULL THEN {null} ELSE octet_length({v}) || ':' || {v} END").format(
            v=value, null=null) for value, not_null in values]
        text = sql.SQL("concat({})").format(sql.SQL(", ").join(parts))
    return sql.SQL("convert_to({}, 'UTF8')").format(text)


def _digest(scheme: HashScheme, message: sql.Composable) -> sql.Composable:
    raw = (sql.SQL("decode(md5({}), 'hex')") if scheme.algorithm == "md5"
           else sql.SQL(f"{scheme.algorithm}({{}})")).format(message)
    if scheme.digest == "base64":
        return sql.SQL("translate(encode({}, 'base64'), E'\\n', '')").format(raw)
    return sql.SQL("encode({}, 'hex')").format(raw)

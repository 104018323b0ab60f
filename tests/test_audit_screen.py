"""The database screen (``audit.hash_in_database``) agrees with the Python hasher, byte for byte, or it is not used.

Chains are written here with the bot's own Python hasher (``compile_scheme``) over hostile values
(NULLs, empty strings, tabs, backslashes, newlines, quotes, emoji, markup, JSON escapes), under
every built-in scheme variant PostgreSQL can compute. The screen must find every one of them clean,
with the walk's row count and head, and must flag exactly the tenant whose row was edited. If it
ever disagreed, a valid chain would merely be walked (slow, still right), so the first test is what
keeps the fast path fast, and the oracle test (tests/test_audit_oracle.py) checks both paths give
the same reports.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.types.json import Jsonb

from commands.audit.rows import copy_rows
from commands.audit.scheme import HASH, PREV, TENANT, Layout, compile_scheme
from commands.audit.screen import Screen
from commands.audit.settings import AuditColumns, AuditSettings, HashScheme
from commands.audit.walk import ChainWalker, WalkOptions

TABLE = "ScreenLog"
V1 = ["prev_hash", "id", "tenant", "created", "actor", "action", "payload"]
SCHEMES = {
    "v1": HashScheme(),
    "separator, NULL as text": HashScheme(framing="separator", separator="|", null="NULL"),
    "sha512 base64": HashScheme(algorithm="sha512", digest="base64"),
    "md5": HashScheme(algorithm="md5"),
    "md5 base64": HashScheme(algorithm="md5", digest="base64"),
    "sha224, microseconds": HashScheme(algorithm="sha224", created_format="iso-us"),
    "sha384, epoch ms, writer": HashScheme(algorithm="sha384", created_format="epoch-ms", fields=[*V1, "writer"]),
    "few fields": HashScheme(fields=["payload", "prev_hash"]),
}
HOSTILE = ["", "\t", "a\\b", "line\nbreak", "\\N", "quote ' and \"", "<!here> *bold* <https://x|y>", "😀 ünïcödé",
           "\r\n", "-1:", "|", "\\\\t"]
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)  # no NUL in text
text_values = st.one_of(st.none(), st.sampled_from(HOSTILE), texts)


@pytest.fixture
def conn(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn
        conn.execute(f'DROP TABLE IF EXISTS "{TABLE}"')


def _audit(scheme: HashScheme, created_type: str) -> AuditSettings:
    return AuditSettings(table=TABLE, columns=AuditColumns(writer="writer"), scheme=scheme)


def write_chains(conn, audit: AuditSettings, rows: list[tuple], created_type: str) -> Layout:
    """``rows`` (tenant, actor, payload, writer) one second apart, then linked and hashed by the Python hasher."""
    conn.execute(f'DROP TABLE IF EXISTS "{TABLE}"')
    conn.execute(f'CREATE TABLE "{TABLE}" (id bigserial PRIMARY KEY, "tenantId" text NOT NULL,'
                 f' "createdAt" {created_type} NOT NULL, actor text, action text NOT NULL, payload jsonb NOT NULL,'
                 ' writer text, "prevHash" text, hash text)')
    start = datetime(2026, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)
    with conn.cursor() as cur:
        cur.executemany(f'INSERT INTO "{TABLE}" ("tenantId", "createdAt", actor, action, payload, writer)'
                        " VALUES (%s, %s, %s, 'case.update', %s, %s)",
                        [(tenant, start + timedelta(seconds=n), actor, Jsonb(payload), writer)
                         for n, (tenant, actor, payload, writer) in enumerate(rows)])
    layout = Layout.load(conn, audit)
    hasher = compile_scheme(audit.scheme, layout.positions)
    id_at = layout.positions["id"]
    last: dict[bytes, bytes | None] = {}
    updates = []
    for fields in copy_rows(conn, layout.select(sql.SQL("TRUE"))):
        fields[PREV] = last.get(fields[TENANT])
        digest = hasher(fields)
        last[fields[TENANT]] = digest
        updates.append((None if fields[PREV] is None else fields[PREV].decode(), digest.decode(),
                        int(fields[id_at])))
    with conn.cursor() as cur:
        cur.executemany(f'UPDATE "{TABLE}" SET "prevHash" = %s, hash = %s WHERE id = %s', updates)
    return layout


def walk(conn, layout: Layout, audit: AuditSettings):
    walker = ChainWalker(compile_scheme(audit.scheme, layout.positions), WalkOptions(limit=20, window=64,
                                                                                    fork_window=2.0, writer=None))
    return {r.tenant: r for r in walker.walk(copy_rows(conn, layout.select(sql.SQL("TRUE"))))}


rows_strategy = st.lists(st.tuples(st.sampled_from(["t-a", "t-b", "t 'c'", "t\td"]), text_values,
                                   st.dictionaries(texts, text_values, max_size=3), text_values),
                         min_size=1, max_size=25)


@pytest.mark.parametrize("name", SCHEMES)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_strategy, zoned=st.booleans())
def test_the_screen_hashes_exactly_as_the_walk_does(conn, name, rows, zoned):
    created_type = "timestamptz" if zoned else "timestamp(6)"
    audit = _audit(SCHEMES[name], created_type)
    layout = write_chains(conn, audit, rows, created_type)
    walked = walk(conn, layout, audit)
    verdicts = Screen.of(conn, layout, audit).run(None)
    assert [v.tenant for v in verdicts] == list(walked)
    for verdict in verdicts:
        report = walked[verdict.tenant]
        assert report.valid, report.findings
        assert verdict.clean, f"{name}: the database hashed a valid chain of {verdict.tenant!r} differently"
        assert (verdict.rows, verdict.head_id, verdict.head_created, verdict.head_hash) == (
            report.rows, report.head_id, report.head_created, report.head_hash)


@pytest.mark.parametrize("name", ["v1", "separator, NULL as text", "md5 base64"])
def test_an_edited_row_and_a_broken_link_make_only_their_tenant_suspect(conn, name):
    audit = _audit(SCHEMES[name], "timestamp(3)")
    rows = [(tenant, "alice", {"n": str(n)}, "node-a") for n in range(6) for tenant in ("t-a", "t-b", "t-c")]
    layout = write_chains(conn, audit, rows, "timestamp(3)")
    conn.execute(f'UPDATE "{TABLE}" SET payload = \'{{"n": "edited"}}\' WHERE id = 4')  # t-a, row 2
    conn.execute(f'DELETE FROM "{TABLE}" WHERE id = 8')  # t-b, row 3: the next row's link breaks
    verdicts = {v.tenant: v for v in Screen.of(conn, layout, audit).run(None)}
    assert {t: v.suspect for t, v in verdicts.items()} == {"t-a": 1, "t-b": 1, "t-c": 0}
    assert verdicts["t-b"].rows == 5 and verdicts["t-c"].rows == 6
    only = Screen.of(conn, layout, audit).run("t-c")
    assert [(v.tenant, v.clean) for v in only] == [("t-c", True)]


def test_schemes_postgresql_cannot_compute_are_walked(conn):
    audit = _audit(HashScheme(algorithm="sha3_256"), "timestamp(3)")
    layout = write_chains(conn, audit, [("t-a", "alice", {}, "node-a")], "timestamp(3)")
    assert Screen.of(conn, layout, audit) is None
    assert Screen.of(conn, layout, audit.model_copy(update={"hash_in_database": False})) is None
    custom = _audit(HashScheme(function="tests.test_audit:v1_as_function"), "timestamp(3)")
    assert Screen.of(conn, layout, custom) is None
    assert HASH == 4  # the screen compares the same stored column the walk does

"""The screen's passes on several connections at once (``fork``): one exported snapshot, the same verdicts.

With ``fork`` the link pass and the two halves of the content pass each run on their own connection,
joined to the snapshot the verifying transaction exported. They must agree with the one-connection
screen row for row, must not see a change committed after the snapshot (even by a connection opened
after it), and must not be used behind a transaction-mode pooler (a real PgBouncer here).
"""

from __future__ import annotations

from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

from bot.config.pgurl import pg_params
from bot.core.invocation import Actor, Where
from bot.store.postgres import connect
from commands.audit.scheme import Layout
from commands.audit.screen import Screen
from tests.conftest import ALICE, write_config
from tests.support.pgbouncer import PgBouncer
from tests.test_audit_screen import SCHEMES, TABLE, _audit, write_chains

TENANTS = ("t-a", "t-b", "t-c")


@pytest.fixture
def conn(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn
        conn.execute(f'DROP TABLE IF EXISTS "{TABLE}"')


def joining(url: str, opened: list[str]):
    """A fork as the command makes one (Targets.database(snapshot=...)): a repeatable-read transaction that
    joins the snapshot before its first query."""
    @contextmanager
    def fork(snapshot: str):
        with connect(pg_params(url)) as other:
            other.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with other.transaction():
                other.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
                opened.append(snapshot)
                yield other
    return fork


def chains(conn, name: str, per_tenant: int = 120):
    audit = _audit(SCHEMES[name], "timestamp(3)")
    rows = [(tenant, "alice", {"n": str(n), "pad": "x" * 200}, "node-a") for n in range(per_tenant)
            for tenant in TENANTS]
    return audit, write_chains(conn, audit, rows, "timestamp(3)")


def verdicts(url: str, audit, fork=None) -> dict:
    with psycopg.connect(url) as reader:
        reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with reader.transaction():
            screen = Screen.of(reader, Layout.load(reader, audit), audit)
            return {v.tenant: v for v in screen.run(None, fork=fork)}


@pytest.mark.parametrize("name", ["v1", "separator, NULL as text", "sha384, epoch ms, writer"])
def test_the_forked_passes_agree_with_one_connection_on_both_halves_of_the_table(conn, database_url, name):
    audit, layout = chains(conn, name)
    screen = Screen.of(conn, layout, audit)
    assert len(screen._halves()) == 2, "the table spans several pages: its contents are screened in two halves"
    opened: list[str] = []
    clean = verdicts(database_url, audit, joining(database_url, opened))
    assert len(opened) == 2 and len(set(opened)) == 1  # the link pass and the second half, on one snapshot
    assert clean == verdicts(database_url, audit)
    assert all(v.clean and v.rows == 120 for v in clean.values())
    first, last = conn.execute(f'SELECT min(id), max(id) FROM "{TABLE}"').fetchone()
    conn.execute(f'UPDATE "{TABLE}" SET payload = \'{{"n": "edited"}}\' WHERE id = %s', (first + 3,))  # t-a, early
    conn.execute(f'UPDATE "{TABLE}" SET actor = \'mallory\' WHERE id = %s', (last - 1,))  # t-b, last page
    conn.execute(f'DELETE FROM "{TABLE}" WHERE id = %s', (last - 30,))  # a link of t-c breaks
    forked = verdicts(database_url, audit, joining(database_url, []))
    assert {t: v.suspect for t, v in forked.items()} == {"t-a": 1, "t-b": 1, "t-c": 1}
    assert forked == verdicts(database_url, audit)


def test_a_change_committed_after_the_snapshot_is_seen_by_no_pass(conn, database_url):
    audit, _ = chains(conn, "v1")
    first, last = conn.execute(f'SELECT min(id), max(id) FROM "{TABLE}"').fetchone()
    deleted = [first + 4, first + 5, last - 10, last - 11]  # two rows in each half, each a link broken
    plain = joining(database_url, opened := [])

    @contextmanager
    def tampered_first(snapshot: str):
        """Before each fork joins, another session commits: rows deleted and rows edited in both halves."""
        conn.execute(f'DELETE FROM "{TABLE}" WHERE id IN (%s, %s)', (deleted.pop(), deleted.pop()))
        conn.execute(f'UPDATE "{TABLE}" SET action = \'forged\' WHERE id IN (%s, %s)', (first + 20, last - 2))
        with plain(snapshot) as other:
            yield other

    during = verdicts(database_url, audit, tampered_first)
    assert len(opened) == 2 and not deleted
    assert all(v.clean and v.rows == 120 for v in during.values()), during
    after = verdicts(database_url, audit, joining(database_url, []))
    assert not all(v.clean for v in after.values()) and sum(v.rows for v in after.values()) == 360 - 4


def test_behind_a_transaction_pooler_the_screen_keeps_to_one_connection(conn, database_url, make_runtime, tmp_path):
    chains(conn, "v1", per_tenant=40)
    extra = f"""
        audit: {{table: {TABLE}, columns: {{writer: writer}}}}
        limits: {{per_user: "0", per_command: "0"}}
    """
    with PgBouncer(database_url, pool_mode="transaction", pool_size=2) as bouncer:
        config = write_config(tmp_path / "app.yaml", database_url, extra=extra)
        target = f'main: {{url: "{database_url}"}}'
        assert target in config.read_text()
        pooled_config = tmp_path / "pooled.yaml"
        pooled_config.write_text(config.read_text().replace(target, f'main: {{url: "{bouncer.url}?pgbouncer=true"}}'))
        direct, pooled = make_runtime(config), make_runtime(pooled_config)
        assert direct.targets.shares_snapshots("main") and not pooled.targets.shares_snapshots("main")
        for runtime in (pooled, direct):
            result = runtime.engine.handle("audit verify --all", Actor(ALICE), Where("C-ops", channel_name="ops")).result
            assert result.ok and result.data["rows"] == 120 and result.data["valid"], result.summary

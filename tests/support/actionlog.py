"""Helpers for the action-log tests: SQL as someone who can write the bot's tables, and the bot as a user.

Usage::

    filled(runtime, 10)                       # ten entries appended
    sql(database_url, f"DELETE FROM {TABLE} WHERE id = 5")
    rehash(database_url, 4)                   # re-hash every row from 4 on, as a forger would
    slow_commit(database_url, 13)             # a 'slowcommit' row's COMMIT takes 13 s (a storage stall at the flush)
    kinds(log_verify(runtime), "fail")        # [("row_missing", 5)]
"""

from __future__ import annotations

import psycopg

from bot.store.chain import v1_hash
from bot.core.invocation import Actor, Where
from tests.conftest import ALICE

__all__ = ["TABLE", "ME", "HERE", "APPENDER", "sql", "rehash", "slow_commit", "filled", "log_verify", "kinds"]

TABLE = "opsbot.action_log"
ME = Actor(ALICE, team="T1")
HERE = Where("C-ops")


def sql(database_url, text, params=()):
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(text, params).fetchall() if text.lstrip().upper().startswith("SELECT") else \
            conn.execute(text, params)


def rehash(database_url, start_id):
    """What someone who can write the table but not sign does: recompute every hash from ``start_id`` on."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(f"SELECT id, tenant, created_at, actor, action, payload::text, hash FROM {TABLE}"
                            " ORDER BY id").fetchall()
        prev = None
        for row_id, tenant, created, actor, action, payload, digest in rows:
            if row_id >= start_id:
                digest = v1_hash(prev, str(row_id), tenant, created, actor, action, payload)
                conn.execute(f"UPDATE {TABLE} SET prev_hash = %s, hash = %s WHERE id = %s", (prev, digest, row_id))
            prev = digest


def slow_commit(database_url: str, seconds: int, then_fail: bool = False, action: str = "slowcommit") -> None:
    """A deferred trigger: rows of ``action`` make their transaction's COMMIT take ``seconds`` (and then fail, with
    ``then_fail``: the transaction is rolled back). ``DROP TRIGGER slow_commit ON opsbot.action_log`` ends it."""
    fail = "RAISE EXCEPTION 'commit refused' USING ERRCODE = 'check_violation';" if then_fail else ""
    sql(database_url, f"""
        CREATE OR REPLACE FUNCTION opsbot.slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.action = '{action}' THEN PERFORM pg_sleep({seconds}); {fail} END IF;
            RETURN NULL;
        END $$""")
    sql(database_url, f"CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON {TABLE} DEFERRABLE INITIALLY DEFERRED"
                      " FOR EACH ROW EXECUTE FUNCTION opsbot.slow_commit()")


def filled(runtime, count=10):
    for n in range(count):
        runtime.state.action_log.append("request", actor="U1", payload={"n": n})
    return runtime.state.action_log


def log_verify(runtime, *args):
    outcome = runtime.engine.handle(" ".join(("log verify",) + args), ME, HERE)
    return outcome.result


def kinds(result, level=None):
    return [(f["kind"], f["row"]) for f in result.data["findings"] if level is None or f["level"] == level]


APPENDER = """
import sys
from bot.config.settings import load_settings
from bot.store.state import State
state = State(load_settings(sys.argv[1]))
for n in range(int(sys.argv[3])):
    if sys.argv[2] == "drain":
        state.action_log.drain()
    else:
        state.action_log.append_or_keep("request", actor=sys.argv[2], payload={"n": n})
state.close()
"""

"""Helpers for the action-log tests: SQL as someone who can write the bot's tables, and the bot as a user.

Usage::

    filled(runtime, 10)                       # ten entries appended
    sql(database_url, f"DELETE FROM {TABLE} WHERE id = 5")
    rehash(database_url, 4)                   # re-hash every row from 4 on, as a forger would
    kinds(log_verify(runtime), "fail")        # [("row_missing", 5)]
"""

from __future__ import annotations

import psycopg

from bot.store.chain import v1_hash
from bot.core.invocation import Actor, Where
from tests.conftest import ALICE

__all__ = ["TABLE", "ME", "HERE", "APPENDER", "sql", "rehash", "filled", "log_verify", "kinds"]

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

"""Threads appending to the action log at once, and PostgreSQL made to hold, refuse or slow their entries.

Usage::

    held = HeldChain(url)                       # another session holds the chain's lock: appends queue behind it
    threads = start(log, [("request", 1, True), ("request", 2, False)], outcomes)   # strict, keeping
    held.release(); joined(threads)             # every thread returned, or the test fails
    refuse(url, "NEW.action = 'poison'")        # a trigger raising data_exception for those rows
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg

from bot.config.settings import load_settings
from bot.store.actionlog import APPEND_LOCK
from bot.store.state import State
from tests.conftest import write_config
from tests.support.actionlog import TABLE, sql
from tests.support.servers import PostgresCluster, RedisServer

__all__ = ["HeldChain", "until", "start", "joined", "stored", "check_own", "slow_trigger", "refuse", "own_servers", "states"]


@contextmanager
def own_servers(folder: Path):
    """(PostgreSQL cluster, redis-server, a function building a State as a fresh process would): a test's own,
    which it may stop; every State built is closed after."""
    with PostgresCluster() as pg, RedisServer() as rds, states(
            write_config(folder / "app.yaml", pg.url, redis_url=rds.url)) as state:
        state().migrate()
        yield pg, rds, state


@contextmanager
def states(path: Path):
    """A function building a State on the config at ``path`` as a fresh process would; every one is closed after."""
    built: list[State] = []

    def state() -> State:
        built.append(State(load_settings(path, env=os.environ)))
        return built[-1]

    try:
        yield state
    finally:
        for each in built:
            each.close(timeout=1)


class HeldChain:
    """Another session holding the action log's advisory lock, as a replica in the middle of an append would."""

    def __init__(self, url: str):
        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("SELECT pg_advisory_lock(%s)", (APPEND_LOCK,))

    def waiters(self) -> int:
        return sql(self.url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")[0][0]

    def waiting_pids(self) -> list[int]:
        return [row[0] for row in sql(self.url, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")]

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.execute("SELECT pg_advisory_unlock(%s)", (APPEND_LOCK,))
            self.conn.close()


def until(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def start(log, whats, outcomes: dict) -> list[threading.Thread]:
    """One thread per (action, n, strict); each puts in outcomes[n] what it got: an Entry, None (kept) or what it
    raised (any BaseException: a thread that dies of one is a finding)."""

    def run(action: str, n: int, strict: bool) -> None:
        try:
            call = log.append if strict else log.append_or_keep
            outcomes[n] = call(action, actor=f"U{n}", payload={"n": n})
        except BaseException as exc:  # noqa: BLE001 - every outcome is looked at
            outcomes[n] = exc

    threads = [threading.Thread(target=run, args=what, daemon=True) for what in whats]
    for thread in threads:
        thread.start()
    return threads


def joined(threads, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "an append never returned"


def stored(log) -> list:
    return [e.payload.get("n") for e in log.entries(limit=10_000)]


def check_own(outcomes: dict) -> None:
    """Each Entry returned is the caller's own."""
    for n, got in outcomes.items():
        if got is not None and not isinstance(got, BaseException):
            assert got.payload["n"] == n and got.actor == f"U{n}", (n, got)


def slow_trigger(url: str, action: str = "slow", seconds: int = 30) -> None:
    sql(url, f"""
        CREATE OR REPLACE FUNCTION opsbot.slow_entry() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.action = '{action}' THEN PERFORM pg_sleep({seconds}); END IF;
            RETURN NEW;
        END $$""")
    sql(url, f"CREATE TRIGGER slow_entry BEFORE INSERT ON {TABLE} FOR EACH ROW EXECUTE FUNCTION opsbot.slow_entry()")


def refuse(url: str, condition: str, errcode: str = "data_exception") -> None:
    """A trigger refusing the rows for which ``condition`` (plpgsql, on NEW) holds."""
    sql(url, f"""
        CREATE OR REPLACE FUNCTION opsbot.refuse_entry() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF {condition} THEN RAISE EXCEPTION 'refused entry %%', NEW.action USING ERRCODE = '{errcode}'; END IF;
            RETURN NEW;
        END $$""")
    sql(url, f"CREATE TRIGGER refuse_entry BEFORE INSERT ON {TABLE} FOR EACH ROW EXECUTE FUNCTION opsbot.refuse_entry()")

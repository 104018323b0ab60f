"""``opsbot check`` answers on time whatever its checks do: hang past every timeout, or exit.

The on-call engineer runs ``opsbot check`` to learn what is down; a check stuck where no timeout of ours
reaches (a pooler queueing the query, a server gone quiet after its handshake) must cost its own line,
not the other lines and not the whole run.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from bot.config.settings import installed_groups, load_settings
from bot.core.group import Check, Group
from bot.runtime.checks import run_checks
from bot.runtime.factory import Runtime


@pytest.fixture
def released():
    """Set at the end of the test: what the hung checks wait for, so their threads end with the test."""
    event = threading.Event()
    yield event
    event.set()


def checked(config_path, fake_slack, checks, deadline):
    group = Group("stuck", commands=(), checks=lambda runtime: checks)
    runtime = Runtime.build(load_settings(config_path, env=os.environ), groups=(*installed_groups(), group))
    runtime.state.migrate()
    try:
        started = time.monotonic()
        result = run_checks(runtime, deadline=deadline)
        return result, {c["target"]: c for c in result.data["checks"]}, time.monotonic() - started
    finally:
        runtime.close()


def test_twenty_hung_checks_do_not_keep_the_last_one_from_answering(config_path, fake_slack, slack_env, released):
    """More hung targets than workers: each hands its slot on once it is past every timeout of ours (5 s),
    so the check queued behind them still runs and answers ok within the deadline."""
    hung = [Check(f"hung {n}", lambda: released.wait(60) and "released") for n in range(20)]
    result, found, took = checked(config_path, fake_slack, [*hung, Check("last", lambda: "fine")], deadline=9)
    assert found["last"] == {"target": "last", "level": "ok", "ok": True, "detail": found["last"]["detail"]}
    assert found["last"]["detail"].startswith("fine (")
    assert found["state redis"]["level"] == "ok"
    for n in range(20):
        assert found[f"hung {n}"]["detail"].startswith("no answer within 9 s"), found[f"hung {n}"]
    assert result.status == "fail" and "20 of" in result.summary
    assert took < 12, f"check took {took:.1f} s with a 9 s deadline"


def test_checks_no_worker_was_free_for_say_so(config_path, fake_slack, slack_env, released):
    """Within a deadline shorter than our own timeouts no slot is handed on: the checks that never started
    are told apart from those that started and hung."""
    hung = [Check(f"hung {n}", lambda: released.wait(60) and "released") for n in range(40)]
    _, found, took = checked(config_path, fake_slack, hung, deadline=1.5)
    details = [found[f"hung {n}"]["detail"] for n in range(40)]
    never = [d for d in details if d == "not checked: the 1.5 s deadline came before a worker was free"]
    late = [d for d in details if d.startswith("no answer within 1.5 s")]
    assert len(never) + len(late) == 40 and never and late, details
    assert took < 4


def test_a_check_that_exits_is_its_own_failure(config_path, fake_slack, slack_env):
    """SystemExit raised inside a check (a library calling sys.exit) fails that line at once; it neither ends
    `opsbot check` nor leaves its line waiting for the deadline."""

    def exits():
        raise SystemExit(3)

    result, found, took = checked(config_path, fake_slack, [Check("exits", exits), Check("fine", lambda: "ok")],
                                  deadline=20)
    assert found["exits"]["level"] == "fail" and found["exits"]["detail"] == "SystemExit 3"
    assert found["fine"]["level"] == "ok"
    assert result.status == "fail" and "exits" in result.summary
    assert took < 10, f"waited {took:.1f} s for a check that had already exited"


def test_no_check_starts_after_the_run_has_answered(config_path, fake_slack, slack_env, released):
    """Checks no worker was free for are reported "not checked" and must stay so: once `run_checks` has answered
    (and the runtime is being closed), a worker freed by a hung check coming back must not go on to start the
    checks left in the queue, against a closed runtime, for a report already printed."""
    started_after: list[str] = []
    answered = threading.Event()

    def hangs(n: int):
        def run() -> str:
            if answered.is_set():
                started_after.append(f"hung {n}")
            released.wait(60)
            return "released"
        return run

    _, found, _ = checked(config_path, fake_slack, [Check(f"hung {n}", hangs(n)) for n in range(40)], deadline=1.5)
    answered.set()
    never = [n for n in range(40) if found[f"hung {n}"]["detail"].startswith("not checked")]
    assert never, "every check had a worker: the test proves nothing"
    released.set()  # the hung checks return, and their workers are free again
    for thread in [t for t in threading.enumerate() if t.name == "opsbot-check"]:
        thread.join(10)
        assert not thread.is_alive(), "a check worker is still running though every check was released"
    assert started_after == [], f"{len(started_after)} checks started after the run had answered"

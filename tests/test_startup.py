"""``opsbot run`` starts with only what the command needs: help from the declarations, no driver, no connection.

Nothing here is timed (bench/startup.py times it): each command runs in a fresh interpreter and
the test reads which libraries it loaded, and whether it reached for the servers at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.config import urls
from bot.core.invocation import Actor, Where
from bot.runtime.terminal import render
from commands import build_registry
from tests.conftest import ALICE, BOT_TOKEN, write_config

DRIVERS = ("psycopg", "psycopg_pool", "redis", "redis.asyncio", "slack_sdk", "slack_bolt", "prometheus_client",
           "httpx", "jinja2")
# The command in a fresh interpreter; afterwards, its exit code, what it printed and the libraries it loaded.
PROBE = f"""
import contextlib, io, json, sys
from bot.runtime.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(sys.argv[1:])
print(json.dumps({{"code": code, "stdout": out.getvalue(), "loaded": [m for m in {DRIVERS!r} if m in sys.modules]}}))
"""
NOWHERE = "postgresql://127.0.0.1:1/nothing", "redis://127.0.0.1:1/0"  # nothing listens on port 1


def probe(config, *args, env=None) -> dict:
    full_env = {**os.environ, "TEST_SLACK_BOT_TOKEN": BOT_TOKEN, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", PROBE, "--config", str(config), *args], capture_output=True,
                          text=True, timeout=120, env=full_env)
    assert proc.returncode == 0, proc.stderr
    return {**json.loads(proc.stdout.splitlines()[-1]), "stderr": proc.stderr}


@pytest.fixture
def registry():
    """The installed commands alone (the CLI's), without the test commands the shared fixture adds."""
    return build_registry()


@pytest.fixture
def unreachable(tmp_path):
    """An app.yaml whose Redis and PostgreSQL are down: a command that connected would fail."""
    database_url, redis_url = NOWHERE
    return write_config(tmp_path / "app.yaml", database_url, redis_url=redis_url)


@pytest.mark.parametrize("args", [["help"], ["help dlq requeue"], ["help", "incident"], ["--json", "help runbook"]])
def test_help_loads_no_driver_and_connects_nothing(unreachable, args):
    answer = probe(unreachable, "run", *args)

    assert answer["code"] == 0, answer["stderr"]
    assert answer["loaded"] == []  # not even with a Slack token set
    assert answer["stderr"] == ""


# What the groups' commands use when they run, not what they declare: `help` does not load it.
NOT_FOR_HELP = ("bot.store.logverify", "bot.core.probes", "bot.core.runbooks", "commands.drift.alembic",
                "commands.drift.prisma", "commands.rollback.plan", "commands.rollback.providers",
                "commands.rollback.verify", "commands.email.smtp_probe", "commands.alerts.payload")


def test_help_loads_the_declarations_not_what_the_commands_run_with(unreachable):
    probe_text = PROBE.replace(repr(DRIVERS), repr(NOT_FOR_HELP))
    proc = subprocess.run([sys.executable, "-c", probe_text, "--config", str(unreachable), "run", "help"],
                          capture_output=True, text=True, timeout=120)
    answer = json.loads(proc.stdout.splitlines()[-1])

    assert answer["code"] == 0, proc.stderr
    assert answer["loaded"] == []


def test_a_usage_error_is_answered_before_connecting(unreachable):
    answer = probe(unreachable, "run", "dlq requeu jobs")

    assert answer["code"] == 2
    assert "'requeu' is not one of them" in answer["stderr"] and answer["loaded"] == []


@pytest.mark.parametrize("text", ["help", "help dlq requeue", "help nothing-like-it", "help incident"])
@pytest.mark.parametrize("as_json", [False, True])
def test_help_without_the_runtime_answers_what_the_engine_answers(make_runtime, config_path, text, as_json):
    runtime = make_runtime(config_path)
    engine = runtime.engine.handle(text, Actor.local(), Where("cli"))

    answer = probe(config_path, "run", *(["--json"] if as_json else []), text)

    assert set(answer["loaded"]) <= {"psycopg"}  # the tests' database_url is a key=value string: libpq judges it
    assert answer["code"] == engine.exit_code
    if as_json:
        assert json.loads(answer["stdout"]) == json.loads(render(engine.result, runtime.redactor, as_json=True))
    else:
        assert answer["stdout"] == render(engine.result, runtime.redactor) + "\n"


def test_help_as_a_slack_user_goes_through_the_engine(config_path):
    """Roles, rate limits and the action log are the engine's: ``--as`` is answered there, connected."""
    answer = probe(config_path, "run", "--as", ALICE, "help")

    assert answer["code"] == 0 and "/ops:" in answer["stdout"]
    assert {"redis", "psycopg"} <= set(answer["loaded"])


def test_a_redis_command_without_a_slack_token_loads_no_slack_client(config_path):
    answer = probe(config_path, "run", "--json", "dlq status", env={"TEST_SLACK_BOT_TOKEN": ""})

    assert answer["code"] == 0, answer["stderr"]
    assert json.loads(answer["stdout"])["command"] == "dlq status"
    assert not {"slack_sdk", "slack_bolt", "httpx", "jinja2"} & set(answer["loaded"])


@settings(max_examples=300, deadline=None)
@given(st.from_regex(urls._PLAIN_POSTGRES_URL, fullmatch=True))
def test_a_postgres_url_answered_without_libpq_is_one_libpq_accepts(url):
    from psycopg.conninfo import conninfo_to_dict

    if urls.postgres_url_problem(url) is None:
        params = conninfo_to_dict(url)  # raises if libpq refuses it
        assert all(port.isdigit() and 0 < int(port) < 65536 for port in str(params.get("port") or "1").split(","))


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://user:p%40ss@host:1/15", "redis://h",
                                 "unix:///tmp/redis.sock", "redis://:pw@h:6379"])
def test_a_redis_url_answered_without_redis_py_is_one_redis_py_parses(url):
    from redis.connection import parse_url

    assert urls.redis_url_problem(url) is None
    parse_url(url)  # raises if redis-py refuses it


# main() in a fresh interpreter: the collector's passes until main() first turns it on again, and its state after.
GC_PROBE = """
import contextlib, gc, io, json, sys
import bot.runtime.cli as cli
passes = lambda: sum(generation["collections"] for generation in gc.get_stats())
first = []


class Collector:  # the gc module as cli sees it, noting when start-up turns collection back on
    def __getattr__(self, name):
        return getattr(gc, name)

    def enable(self):
        first.append((passes(), sys._getframe(1).f_code.co_name)) if not first else None
        gc.enable()


cli.gc = Collector()
before = passes()
with contextlib.redirect_stdout(io.StringIO()):
    code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "passes": first[0][0] - before, "on_in": first[0][1], "enabled": gc.isenabled(),
                  "frozen": gc.get_freeze_count()}))
"""


def gc_probe(config, *args) -> dict:
    proc = subprocess.run([sys.executable, "-c", GC_PROBE, "--config", str(config), *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "TEST_SLACK_BOT_TOKEN": BOT_TOKEN})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("args", [["help"], ["--json", "help dlq requeue"], ["dlq requeu jobs"]])
def test_what_the_declarations_answer_runs_without_collecting_garbage(unreachable, args):
    """Start-up only makes objects that live on: help and usage errors never collect, and main() gives the
    collector back as it found it (on, nothing left frozen) to a caller in the same process."""
    answer = gc_probe(unreachable, "run", *args)

    assert answer["passes"] == 0 and answer["on_in"] == "main"  # on again only as main() returns
    assert answer["enabled"] and answer["frozen"] == 0


def test_a_command_that_runs_collects_garbage_again(config_path):
    """The collector is back on once start-up is over: a long command (or a server) does not grow unbounded."""
    answer = gc_probe(config_path, "run", "--json", "dlq status")

    assert answer["code"] == 0 and answer["on_in"] == "_started"  # before the command ran
    assert answer["enabled"] and answer["frozen"] == 0


def test_the_process_entry_exits_with_mains_code(unreachable):
    """``python -m bot`` (and the console script) go through entry(): main's exit code, its output intact."""
    ok = subprocess.run([sys.executable, "-m", "bot", "--config", str(unreachable), "run", "help"],
                        capture_output=True, text=True, timeout=120)
    usage = subprocess.run([sys.executable, "-m", "bot", "--config", str(unreachable), "run", "dlq requeu jobs"],
                           capture_output=True, text=True, timeout=120)

    assert ok.returncode == 0 and "/ops:" in ok.stdout and ok.stderr == ""
    assert usage.returncode == 2 and "'requeu' is not one of them" in usage.stderr

"""The dead-letter backend protocol: both backends conform, the commands never branch on a backend,
and the group's `status` lines and `opsbot check`s say what the framework's said, on real Redis."""

from __future__ import annotations

import ast
import inspect
import re
import typing
from pathlib import Path

import pytest

from bot.core.group import Check, Color, StatusLine
from bot.core.invocation import Actor, CommandError, Where
from bot.runtime.checks import run_checks
from commands.dlq import backend as protocol
from commands.dlq.backend import OPERATIONS, REPLAY, TRIM, Capabilities, DeadLetterBackend
from commands.dlq.entries import Filters
from commands.dlq.factory import BACKENDS, open_backend
from commands.dlq.http_api import HttpDeadLetters
from commands.dlq.overview import checks, status_lines
from commands.dlq.redis_list import RedisListQueue
from commands.dlq.settings import QueueSettings, find_queue
from tests.conftest import ALICE, write_config
from tests.support.dlq import dead_letter, kill
from tests.support.servers import free_port
from tests.test_dlq_http import TOKEN, ExportService

OPS = Where("C-ops", channel_name="ops")
DLQ = Path(__file__).resolve().parent.parent / "commands" / "dlq"
COMMAND_MODULES = ("__init__.py", "views.py", "requeue.py", "trim.py", "common.py", "overview.py")
BACKEND_CLASSES = {"RedisListQueue", "HttpDeadLetters"}
TWO_DAYS = 2 * 86400 + 1800  # an age format_duration shows the same a few seconds later ("2d30m")


# -- no backend branches in the commands --------------------------------------------------

def _branches(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            named = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            named |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
            if named & BACKEND_CLASSES:
                found.append(f"{where}: isinstance on a backend class")
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Attribute) and s.attr == "backend" for s in sides):
                found.append(f"{where}: compares .backend")
        if isinstance(node, ast.Constant) and node.value in BACKENDS:
            found.append(f"{where}: names the backend {node.value!r}")
        if isinstance(node, ast.ImportFrom) and node.module in ("commands.dlq.redis_list", "commands.dlq.http_api"):
            if {alias.name for alias in node.names} & BACKEND_CLASSES:
                found.append(f"{where}: imports a backend class")
    return found


def test_the_commands_do_not_branch_on_the_backend():
    found = [hit for name in COMMAND_MODULES for hit in _branches(DLQ / name)]
    assert found == []


def test_the_rule_sees_a_branch_when_there_is_one(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from commands.dlq.redis_list import RedisListQueue\n"
                   "def f(queue, backend):\n"
                   "    if isinstance(backend, RedisListQueue) or queue.backend != 'redis-list':\n"
                   "        return queue.backend == 'http'\n")
    assert len(_branches(bad)) == 6


def test_only_the_factory_and_the_backends_name_a_backend():
    allowed = {"factory.py", "settings.py", "redis_list.py", "http_api.py"}
    allowed |= {"sidekiq.py"}  # each backend module names itself
    allowed |= {"rq_jobs.py", "bullmq_jobs.py"}
    names = "|".join(re.escape(repr(n)[1:-1]) for n in BACKENDS)
    quoted = re.compile(rf"""["']({names})["']""")
    found = [f"{p.name}: {m.group(0)}" for p in sorted(DLQ.glob("*.py")) if p.name not in allowed
             for m in quoted.finditer(p.read_text(encoding="utf-8"))]
    assert found == []


# -- conformance -------------------------------------------------------------------------

def _protocol_members() -> dict[str, object]:
    """Its methods (name → the protocol's function) and its attributes (name → None)."""
    names = {name for name, value in vars(DeadLetterBackend).items() if not name.startswith("_") and callable(value)}
    names |= set(DeadLetterBackend.__annotations__)
    return {name: vars(DeadLetterBackend).get(name) for name in names}


def _backends(redis_client):
    redis_queue = QueueSettings(name="jobs")
    http_queue = QueueSettings(name="exports", backend="http", url="http://127.0.0.1:9")
    return [RedisListQueue(redis_queue, redis_client), HttpDeadLetters(http_queue)]


def test_both_backends_satisfy_the_protocol(redis_client):
    members = _protocol_members()
    assert {"scan", "entries", "depth", "start_requeue", "run_requeue", "replay", "run_trim", "cancel",
            "capabilities", "destination", "probe"} <= set(members)
    for backend in _backends(redis_client):
        assert isinstance(backend, DeadLetterBackend)
        assert isinstance(backend.capabilities, Capabilities)
        for name, wanted in members.items():
            assert hasattr(backend, name), f"{type(backend).__name__} lacks {name}"
            if not callable(wanted):
                continue
            have = inspect.signature(getattr(type(backend), name))
            takes_any = any(p.kind is p.VAR_KEYWORD for p in have.parameters.values())
            for param in inspect.signature(wanted).parameters.values():
                if param.kind is param.VAR_KEYWORD:
                    continue
                assert param.name in have.parameters or (takes_any and param.kind is param.KEYWORD_ONLY), \
                    f"{type(backend).__name__}.{name} does not take {param.name}"
        backend.close()


def test_the_factory_table_covers_every_configurable_backend(redis_client, tmp_path, database_url, make_runtime):
    configurable = set(typing.get_args(QueueSettings.model_fields["backend"].annotation))
    assert set(BACKENDS) == configurable
    runtime = make_runtime(_config(tmp_path, database_url, "http://127.0.0.1:9", free_port()))
    for queue in runtime.settings.queues:
        backend = open_backend(queue, runtime.targets, runtime.settings)
        assert backend.backend == queue.backend and backend.name == queue.name
        backend.close()


def test_capabilities_say_why_not_with_the_existing_messages(redis_client):
    redis_list, http = _backends(redis_client)
    for backend in (redis_list, http):
        for operation in OPERATIONS:
            if not backend.capabilities.supports(operation):
                assert backend.capabilities.refusal(operation, "q").startswith("queue 'q' ")
    with pytest.raises(CommandError, match=r"^queue 'exports' uses the http backend; trim works on redis-list queues$"):
        http.capabilities.require(TRIM, "exports")
    with pytest.raises(CommandError, match=r"^queue 'exports' has no requeue task to cancel \(http backend\)$"):
        http.cancel()
    with pytest.raises(CommandError, match="does not replay them one by one"):
        redis_list.replay("job-1", key="k")
    assert http.task() is None and http.lease_holder() is None and http.trim_task() is None
    assert redis_list.capabilities.supports(TRIM) and not redis_list.capabilities.supports(REPLAY)
    with pytest.raises(ValueError, match="say why"):
        Capabilities(frozenset({protocol.REQUEUE}))


def test_redis_entries_are_the_dead_list_oldest_first_and_filtered(redis_client):
    kill(redis_client, [dead_letter(i) for i in range(2500)])
    queue = RedisListQueue(QueueSettings(name="jobs"), redis_client)
    every = list(queue.entries(chunk=1000))
    assert [e.id for e in every] == [f"job-{i}" for i in range(2500)]
    emails = list(queue.entries(Filters(type="send_email")))
    assert [e.id for e in emails] == [f"job-{i}" for i in range(0, 2500, 3)]
    assert [e.id for e in queue.scan(Filters(type="send_email"), samples=4).samples] == [e.id for e in emails[:4]]
    assert [e.id for e in queue.oldest(2)] == ["job-0", "job-1"] and queue.dead_count() == 2500


# -- status lines and checks --------------------------------------------------------------

def _config(tmp_path: Path, database_url: str, url: str, down: int) -> Path:
    path = write_config(tmp_path / "app.yaml", database_url)
    path.write_text(path.read_text().replace(
        '  - {name: jobs, redis: main, ready: jobs, dead: "jobs:dead"}',
        '  - {name: jobs, redis: main, ready: jobs, dead: "jobs:dead"}\n'
        '  - {name: broken, redis: main, ready: broken, dead: "broken:dead"}\n'
        '  - {name: busy, redis: main, ready: busy, dead: "busy:dead"}\n'
        f'  - {{name: exports, backend: http, url: "{url}", token: "${{TEST_EXPORT_TOKEN:-}}", page_size: 10, '
        'retries: 0, timeout: 2s}\n'
        f'  - {{name: down, backend: http, url: "http://127.0.0.1:{down}", retries: 0, timeout: 1s}}'))
    return path


@pytest.fixture
def service():
    svc = ExportService(7)
    yield svc
    svc.server.shutdown()


@pytest.fixture
def runtime_mixed(tmp_path, database_url, make_runtime, redis_client, service, monkeypatch):
    monkeypatch.setenv("TEST_EXPORT_TOKEN", TOKEN)
    kill(redis_client, [dead_letter(i, failed_ago=TWO_DAYS) for i in range(3)])
    redis_client.lpush("jobs", b"a", b"b")
    redis_client.set("broken:dead", "not a list")
    redis_client.lpush("busy", *[b"x"] * 1001)
    return make_runtime(_config(tmp_path, database_url, service.url, free_port()))


class _Inv:
    """What status_lines reads of an invocation (its settings and connections), from a real runtime."""

    def __init__(self, runtime):
        self.settings, self.targets, self.args = runtime.settings, runtime.targets, {}


def test_status_lines_are_the_lines_status_shows_today(runtime_mixed):
    today = [line for line in runtime_mixed.engine.handle("status", Actor(ALICE), OPS).result.data["lines"]
             if line["what"].startswith(("queue ", "dead letters "))]
    mine = status_lines(_Inv(runtime_mixed))

    assert all(isinstance(line, StatusLine) for line in mine)
    assert [{"color": line.color.value, "what": line.what, "detail": line.detail, **line.data}
            for line in mine] == today
    by_what = {line.what: line for line in mine}
    assert by_what["queue jobs"].color is Color.GREEN and by_what["queue jobs"].data == {"ready": 2}
    assert by_what["dead letters jobs"].color is Color.RED and by_what["dead letters jobs"].detail == \
        "3 dead, oldest 2d30m (red above 0)"
    assert by_what["queue busy"].color is Color.AMBER
    assert by_what["queue broken"].color is Color.RED
    assert by_what["queue broken"].detail.startswith("cannot read: dead key 'broken:dead' of queue 'broken'")
    assert by_what["dead letters exports"].detail == "7 dead (red above 0)"
    assert "queue exports" not in by_what  # the API has no ready count
    assert by_what["queue down"].color is Color.RED and by_what["queue down"].detail.startswith("cannot read: ")


def test_checks_say_what_opsbot_check_says_today(runtime_mixed, service):
    found = {c["target"]: c for c in run_checks(runtime_mixed).data["checks"]}
    mine = checks(runtime_mixed)
    assert all(isinstance(check, Check) for check in mine)
    assert [check.target for check in mine] == [f"queue {q.name}" for q in runtime_mixed.settings.queues]
    outcomes = {}
    for check in mine:
        try:
            outcomes[check.target] = (True, check.run())
        except Exception as exc:  # how the framework reads a failing check
            outcomes[check.target] = (False, str(exc))
    for name in ("jobs", "broken", "busy"):  # the redis-list queues: the same texts as today's check
        ok, detail = outcomes[f"queue {name}"]
        assert ok is found[f"queue {name}"]["ok"]
        assert detail == re.sub(r" \(\d+ ms\)$", "", found[f"queue {name}"]["detail"])
    assert outcomes["queue jobs"] == (True, "ok, ready 'jobs': 2, dead 'jobs:dead': 3")
    assert outcomes["queue broken"] == (False, "dead key 'broken:dead' is a Redis string, expected a list")
    queue = find_queue(runtime_mixed.settings, "exports")
    assert outcomes["queue exports"] == (True, f"ok, 7 dead letters at {queue.url}")
    assert outcomes["queue down"][0] is False and outcomes["queue down"][1]

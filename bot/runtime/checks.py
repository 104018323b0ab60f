"""``opsbot check``: reach every configured target and say which answer.

Usage::

    result = run_checks(runtime)      # Result: ok when every target answered, fail naming those that did not

Checks run concurrently with short timeouts, so one hanging target costs its
own timeout, not the sum of all of them. Some waits no timeout of ours covers: a
connection pooler that accepts the login and then queues the query until its own
``query_wait_timeout`` (PgBouncer: 120 s), a server that answers the handshake and
then goes quiet. So the whole run has a deadline (``deadline``, 30 s): a check
that has not answered by then is reported as hanging, and left behind on a daemon
thread, so ``opsbot check`` exits on time. Services are checked by the same
probes as ``/ops health`` (auth header, timeout and body expectation from app.yaml).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from redis.cluster import RedisCluster

from bot.core.probes import check_services
from bot.core.result import Result, Section
from bot.core.group import Check, CheckWarning, Group
from bot.runtime.factory import Runtime
from bot.runtime.redisconn import server_version, where
from bot.runtime.targets import describe_postgres, first_line
from bot.store.postgres import connect, database_params, pooler_in_use, state_params

__all__ = ["run_checks"]

TIMEOUT = 5.0
DEADLINE = 30.0  # the whole run: what has not answered by then is reported as hanging
WORKERS = 16
_LEVEL = {True: "ok", None: "warn", False: "fail"}


class CheckFailed(Exception):
    pass


def run_checks(runtime: Runtime, deadline: float = DEADLINE) -> Result:
    settings = runtime.settings
    checks: list[Check] = [
        Check("state redis", lambda: _redis_ping(runtime.state.redis)),
        Check("state postgres", lambda: _state_postgres(runtime)),
        Check("slack", lambda: _slack(runtime)),
        Check("permissions", lambda: _permissions(runtime)),
    ]
    for name in settings.redis:
        checks.append(Check(f"redis {name}", lambda name=name: _redis_ping(runtime.targets.redis(name))))
    for name in settings.databases:
        checks.append(Check(f"database {name}", lambda name=name: _database(runtime, name)))
    for group in runtime.groups:  # what each group checks (its queues, its templates, ...)
        checks += _group_checks(group, runtime)
    answers = _all_within([lambda: check_services(settings.services), *[check.run for check in checks]], deadline)
    late = {None: f"no answer within {deadline:g} s (a pooler queueing the query, or a server that went quiet); "
                  "gave up",
            NOT_STARTED: f"not checked: the {deadline:g} s deadline came before a worker was free"}
    services, answers = answers[0], answers[1:]
    outcomes = [(check.target, *(_outcome(answer) if isinstance(answer, tuple) else (False, late[answer])))
                for check, answer in zip(checks, answers)]
    if not isinstance(services, tuple):  # the probes answer all at once, or not at all: each service is late
        outcomes += [(f"service {name}", False, late[services]) for name in settings.services]
    elif not services[0]:
        outcomes.append(("services", False, first_line(services[1])))
    else:
        outcomes += [
            (f"service {c.service} {c.kind}", c.ok,
             f"ok, HTTP {c.status} ({c.ms:.0f} ms)" if c.ok else f"{c.detail} from {c.url}")
            for c in services[1]
        ]
    failed = [name for name, ok, _ in outcomes if ok is False]
    warned = [name for name, ok, _ in outcomes if ok is None]
    fields = tuple((name, (":white_check_mark: " if ok else (":x: " if ok is False else ":warning: ")) + detail)
                   for name, ok, detail in outcomes)
    data = {"checks": [{"target": name, "level": _LEVEL[ok], "ok": ok is True, "detail": detail}
                       for name, ok, detail in outcomes]}
    if failed:
        return Result.fail(f"{len(failed)} of {len(outcomes)} targets failing: {', '.join(failed)}",
                           data=data, sections=[Section(fields=fields)], command="check")
    summary = f"all {len(outcomes)} targets answered" + (f" ({len(warned)} warnings)" if warned else "")
    return (Result.warn if warned else Result.ok)(summary, data=data, sections=[Section(fields=fields)],
                                                 command="check")


def _group_checks(group: Group, runtime: Runtime) -> list[Check]:
    """A group's checks; a group that cannot even say what to check is one failing line, never the end of `check`."""
    if group.checks is None:
        return []
    try:
        return list(group.checks(runtime))
    except Exception as exc:  # noqa: BLE001 - reported as that group's failure
        def failing(exc: Exception = exc) -> str:
            raise exc
        return [Check(f"{group.name} checks", failing)]


Answer = tuple[bool, Any, float]  # (True, what the job returned, or False, what it raised; seconds it took)
NOT_STARTED = "not started"  # the answer of a job no worker was free for before the deadline


def _all_within(jobs: Sequence[Callable[[], Any]], deadline: float) -> list[Answer | str | None]:
    """Run ``jobs`` at once (up to WORKERS at a time) on daemon threads: per job, its answer; None when it had
    not answered within ``deadline`` seconds of the start; NOT_STARTED when no worker was free for it by then.

    A job still running after TIMEOUT (one of ours already ran out, so it is stuck where no timeout reaches)
    hands its slot to a new worker, so twenty hung databases do not keep the rest waiting. Not a
    ThreadPoolExecutor: the interpreter joins its threads at exit, so a check stuck in a pooler's queue
    would hold ``opsbot check`` for as long as the pooler keeps it."""
    answers: list[Answer | str | None] = [NOT_STARTED] * len(jobs)
    waiting = deque(range(len(jobs)))  # taken under ``changed``, so none is taken once the run has answered
    running: dict[int, float] = {}  # job -> when it started, while it runs and holds its slot
    left = [len(jobs)]
    answered = [False]  # the run has answered: a job not started by then is reported so, and never starts
    changed = threading.Condition()

    def work() -> None:
        while True:
            with changed:
                if answered[0] or not waiting:
                    return
                index = waiting.popleft()
                answers[index], running[index] = None, time.monotonic()
            started = time.perf_counter()
            try:
                answer: Answer = (True, jobs[index](), time.perf_counter() - started)
            except BaseException as exc:  # noqa: BLE001 - even SystemExit: the check's failure, on its line
                answer = (False, exc, time.perf_counter() - started)
            with changed:
                answers[index] = answer
                left[0] -= 1
                changed.notify_all()
                if running.pop(index, None) is None:  # its slot was handed on while it hung: this worker is spare
                    return

    def start_worker() -> None:
        threading.Thread(target=work, name="opsbot-check", daemon=True).start()

    for _ in range(min(WORKERS, len(jobs))):
        start_worker()
    ends = time.monotonic() + deadline
    with changed:
        while left[0] and (now := time.monotonic()) < ends:
            for index in [index for index, began in running.items() if now - began > TIMEOUT]:
                del running[index]
                start_worker()
            wake = min([began + TIMEOUT for began in running.values()] + [ends])
            changed.wait(max(wake - now, 0) + 0.01)
        answered[0] = True
        return list(answers)


def _outcome(answer: Answer) -> tuple[bool | None, str]:
    ok, value, took = answer
    if ok:
        return True, f"{value} ({took * 1000:.0f} ms)"
    if isinstance(value, CheckWarning):
        return None, str(value)
    if not isinstance(value, Exception):  # SystemExit, KeyboardInterrupt raised by a check: named as such
        return False, f"{type(value).__name__} {value}".strip()
    return False, str(value).strip() or type(value).__name__


def _redis_ping(client) -> str:
    try:
        client.ping()
    except Exception as exc:
        raise CheckFailed(f"Redis at {where(client)}: {first_line(exc)}") from None
    cluster = isinstance(client, RedisCluster)
    if not cluster and client.info("cluster").get("cluster_enabled"):
        raise CheckFailed(f"Redis at {where(client)} is a Redis Cluster node: a redis target on it needs "
                          "`cluster: true` (opsbot's own state.redis_url needs a single server)")
    return f"ok, Redis {server_version(client)}" + (" cluster" if cluster else "")


def _state_postgres(runtime: Runtime) -> str:
    schema = runtime.settings.state.db_schema
    url = runtime.settings.state.database_url
    try:
        conn = connect(state_params(runtime.settings.state))
    except psycopg.OperationalError as exc:
        raise CheckFailed(f"{describe_postgres(url)}: {first_line(exc)}") from None
    with conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        pending = runtime.state.pending_migrations(conn)
    if pending:
        raise CheckFailed(f"schema {schema!r} needs migrations {', '.join(pending)}: run `opsbot migrate`")
    mode = _pooler(state_params(runtime.settings.state), "state.database_pooler")
    return _with_notes(f"ok, PostgreSQL {version}, schema {schema!r} up to date; {mode}",
                       state_params(runtime.settings.state).notes)


def _database(runtime: Runtime, name: str) -> str:
    with runtime.targets.database(name) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    params = database_params(runtime.settings.databases[name], runtime.settings.base_dir)
    mode = _pooler(params, f"databases.{name}.pooler")
    return _with_notes(f"ok, PostgreSQL {version} at {describe_postgres(runtime.settings.databases[name].url)};"
                       f" {mode}", params.notes)


def _pooler(params, setting: str) -> str:
    """Which pooling mode is in use, and whether the connection behaves as configured."""
    detected, evidence = pooler_in_use(params)
    if detected and params.pooler != "transaction":
        raise CheckFailed(f"a transaction-mode pooler answers ({evidence}) but opsbot is not told: set {setting}:"
                          " transaction (or ?pgbouncer=true in the URL), or prepared statements will break")
    if params.pooler == "transaction":
        seen = "detected" if detected else f"not detected: {evidence}"
        return f"pooler: transaction mode (no prepared statements; {seen})"
    return f"pooler: {params.pooler} ({evidence})"


def _with_notes(detail: str, notes: tuple[str, ...]) -> str:
    """The URL's parameters opsbot took or left out; one left out (unknown to libpq and Prisma) is a warning."""
    if not notes:
        return detail
    text = f"{detail}; URL: {'; '.join(notes)}"
    if any("neither libpq nor Prisma" in note for note in notes):
        raise CheckWarning(text.removeprefix("ok, "))
    return text


def _slack(runtime: Runtime) -> str:
    if runtime.slack is None:
        raise CheckWarning("SLACK_BOT_TOKEN is not set, so Slack is off (the CLI works)")
    identity = runtime.slack.auth_test()
    if not runtime.settings.slack.signing_secret:
        raise CheckFailed("SLACK_SIGNING_SECRET is not set: `opsbot serve` cannot verify requests")
    return f"ok, bot {identity.get('user', '?')} in team {identity.get('team', '?')}"


def _permissions(runtime: Runtime) -> str:
    """Guarded commands app.yaml opens to anyone are worth a second look."""
    from bot.core.parser import Parsed

    policy = runtime.engine.policy
    open_guarded = [c.name for c in runtime.registry if c.guarded
                    and policy.role_for(Parsed(c, {}, c.name))[0] is None]
    if open_guarded:
        raise CheckWarning(f"guarded commands anyone may run: {', '.join(open_guarded)} (permissions in app.yaml)")
    rules = len([r for r in policy.roles + policy.channels if r.source == "app.yaml"])
    return f"ok, {rules} rules from app.yaml over the defaults"

"""Scheduled checks: config refusals, each slot run once, posting on change, `schedule list`, gauges.

The clock is injected (a value the test moves); nothing waits on wall time. Real Redis and
PostgreSQL; Slack is the strict fake.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import UTC, datetime, timedelta

import pytest
from slack_sdk import WebClient

from bot.config.settings import ConfigError, load_settings
from bot.core.invocation import Actor, Where
from bot.runtime.factory import Runtime
from commands.schedule.runner import ScheduleRunner, should_post
from tests.conftest import BOT_TOKEN, write_config

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = T0):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def _config(tmp_path, database_url, schedules: str, name: str = "app.yaml"):
    return write_config(tmp_path / name, database_url, extra=f"schedules:\n{schedules}")


def _problems(tmp_path, database_url, schedules: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(_config(tmp_path, database_url, schedules), env=os.environ)
    return str(caught.value)


# -- refused at load ---------------------------------------------------------------------------

def test_a_guarded_command_is_refused_at_load_with_file_line_and_key(tmp_path, database_url):
    text = _problems(tmp_path, database_url, "  - {every: 5m, run: dlq status}\n"
                                             "  - {every: 1h, run: dlq requeue jobs}\n")
    lines = text.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{tmp_path / 'app.yaml'}:")
    line_no = int(lines[0].split(":")[1])
    assert (tmp_path / "app.yaml").read_text().splitlines()[line_no - 1].strip().startswith("- {every: 1h, run: dlq re")
    assert "schedules[1].run: `dlq requeue` is guarded (it changes production)" in lines[0]


@pytest.mark.parametrize("entry, message", [
    ("{cron: '61 * * * *', run: dlq status}", "schedules[0].cron: minute: 61 is out of range 0-59"),
    ("{cron: '0 0 30 2 *', run: dlq status}", "never fires"),
    ("{cron: '* * *', run: dlq status}", "expected 5 fields"),
    ("{every: soon, run: dlq status}", "schedules[0].every:"),
    ("{every: 1s, run: dlq status}", "every: at least 10s"),
    ("{every: 5m, cron: '0 * * * *', run: dlq status}", "give exactly one of `every`"),
    ("{run: dlq status}", "give exactly one of `every`"),
    ("{every: 5m, run: dlq frobnicate}", "schedules[0].run: "),
    ("{every: 5m, run: nonsense here}", "schedules[0].run: "),
    ("{every: 5m, run: dlq status nosuchqueue --limit}", "schedules[0].run: "),
    ("{every: 5m, run: audit export acme}", "needs the 'oncall' role"),
    ("{every: 5m, run: dlq status, post: sometimes}", "schedules[0].post:"),
    ("{every: 5m, run: dlq status, extra: 1}", "schedules[0].extra: unknown setting"),
    ("{every: 5m, run: \"dlq status\\u0007\"}", "schedules[0].run: must be printable"),
])
def test_bad_schedules_are_refused_at_load(tmp_path, database_url, entry, message):
    text = _problems(tmp_path, database_url, f"  - {entry}\n")
    assert message in text, text
    assert ":" in text.split(" ")[0]  # file:line: first


def test_two_schedules_of_one_name_are_refused(tmp_path, database_url):
    text = _problems(tmp_path, database_url, "  - {every: 5m, run: dlq status}\n  - {every: 1h, run: dlq status}\n")
    assert "schedules[1].name: two schedules are named 'dlq status'" in text


def test_a_role_the_permissions_give_a_read_only_command_is_refused_too(tmp_path, database_url):
    path = write_config(tmp_path / "app.yaml", database_url,
                        extra="permissions:\n  \"dlq *\": admin\nschedules:\n  - {every: 5m, run: dlq status}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=os.environ)
    assert "`dlq status` needs the 'admin' role" in str(caught.value)


# -- runs ---------------------------------------------------------------------------------------

@pytest.fixture
def scheduled(tmp_path, database_url, redis_client, make_runtime, fake_slack):
    """A runtime with schedules and a runner on a clock the test moves."""

    def build(schedules: str, slack: bool = True):
        path = _config(tmp_path, database_url, schedules, name=f"app{len(os.listdir(tmp_path))}.yaml")
        runtime = make_runtime(path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url) if slack else None)
        clock = Clock()
        runner = runtime.services.get(ScheduleRunner)
        runner.clock = clock
        return runtime, runner, clock

    return build


def _posts(fake_slack):
    return [c.body for c in fake_slack.calls("chat.postMessage") if c.ok]


def test_each_due_slot_runs_once_and_posts_only_on_transitions(scheduled, redis_client, fake_slack):
    runtime, runner, clock = scheduled("  - {name: dead letters, every: 5m, run: dlq status}\n")
    assert runner.sweep(wait=True) == 0  # first sight: due at the next 5-minute mark, not now
    clock.advance(minutes=5)
    assert runner.sweep(wait=True) == 1
    assert runner.sweep(wait=True) == 0  # the same slot again: nothing
    assert _posts(fake_slack) == []  # first run ok: nothing to say
    redis_client.lpush("jobs:dead", json.dumps({"id": "j1", "type": "email", "error": "SMTP 421 <!here>"}))
    clock.advance(minutes=5)
    assert runner.sweep(wait=True) == 1
    posts = _posts(fake_slack)
    assert len(posts) == 1 and "ok → warn" in json.dumps(posts[0], ensure_ascii=False)
    assert posts[0]["channel"] == "#incidents"
    clock.advance(minutes=5)
    runner.sweep(wait=True)  # still warn: no post
    assert len(_posts(fake_slack)) == 1
    redis_client.delete("jobs:dead")
    clock.advance(minutes=5)
    runner.sweep(wait=True)  # back to ok: posted
    posts = _posts(fake_slack)
    assert len(posts) == 2 and "warn → ok" in json.dumps(posts[1], ensure_ascii=False)
    runs = runner.store.runs("dead letters")
    assert [r["status"] for r in runs] == ["ok", "warn", "warn", "ok"]
    assert [r["due_at"] for r in runs] == [T0 + timedelta(minutes=5 * n) for n in range(1, 5)]
    assert [r["posted"] for r in runs] == [False, True, False, True]


def test_missed_slots_coalesce_into_one_run_after_downtime(scheduled):
    runtime, runner, clock = scheduled("  - {every: 1h, run: dlq status}\n")
    runner.sweep(wait=True)
    clock.advance(hours=5, minutes=30)  # the bot was down for five slots
    assert runner.sweep(wait=True) == 1
    assert runner.sweep(wait=True) == 0
    clock.advance(minutes=30)
    assert runner.sweep(wait=True) == 1
    due = [r["due_at"] for r in runner.store.runs()]
    assert due == [T0 + timedelta(hours=1), T0 + timedelta(hours=6)]


def test_post_always_and_never(scheduled, fake_slack):
    runtime, runner, clock = scheduled("  - {name: a, every: 1m, run: dlq status, post: always}\n"
                                       "  - {name: n, every: 1m, run: dlq status, post: never}\n")
    runner.sweep(wait=True)
    for _ in range(3):
        clock.advance(minutes=1)
        runner.sweep(wait=True)
    posts = _posts(fake_slack)
    assert len(posts) == 3 and all("Scheduled check a" in json.dumps(p, ensure_ascii=False) for p in posts)
    assert len(runner.store.runs("n")) == 3


def test_should_post_rules():
    assert should_post("on_change", None, "fail") and not should_post("on_change", None, "ok")
    assert should_post("on_change", "ok", "fail") and should_post("on_change", "fail", "ok")
    assert not should_post("on_change", "fail", "fail")
    assert should_post("always", "ok", "ok") and not should_post("never", "ok", "fail")


def test_a_cron_schedule_runs_at_its_minutes(scheduled):
    runtime, runner, clock = scheduled("  - {name: nightly, cron: '30 3 * * *', run: dlq status}\n")
    runner.sweep(wait=True)
    clock.now = datetime(2026, 3, 2, 3, 29, 59, tzinfo=UTC)
    assert runner.sweep(wait=True) == 0
    clock.now = datetime(2026, 3, 2, 3, 30, 0, tzinfo=UTC)
    assert runner.sweep(wait=True) == 1
    clock.now = datetime(2026, 3, 3, 3, 29, 0, tzinfo=UTC)
    assert runner.sweep(wait=True) == 0
    clock.now = datetime(2026, 3, 3, 3, 31, 0, tzinfo=UTC)
    assert runner.sweep(wait=True) == 1
    assert [r["due_at"].day for r in runner.store.runs()] == [2, 3]


def test_runs_go_through_the_engine_as_the_system_actor_and_land_in_the_action_log(scheduled, database_url):
    import psycopg

    runtime, runner, clock = scheduled("  - {every: 1m, run: dlq status jobs}\n")
    runner.sweep(wait=True)
    clock.advance(minutes=1)
    runner.sweep(wait=True)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT actor, action, payload->>'command' FROM opsbot.action_log ORDER BY id").fetchall()
    assert ("opsbot:schedule", "request", "dlq status") in rows


def test_a_changed_schedule_is_due_afresh_and_an_unconfigured_one_is_ignored(scheduled, tmp_path, database_url):
    runtime, runner, clock = scheduled("  - {name: x, every: 1h, run: dlq status}\n")
    runner.sweep(wait=True)
    # the same name, now every 10 minutes: due at the next 10-minute mark, not in an hour
    runtime2, runner2, _ = scheduled("  - {name: x, every: 10m, run: dlq status}\n")
    runner2.clock = clock
    runner2.sweep(wait=True)
    clock.advance(minutes=10)
    assert runner2.sweep(wait=True) == 1
    assert runner.store.runs("x")[0]["due_at"] == T0 + timedelta(minutes=10)


def test_schedule_list_shows_last_run_result_and_next_run(scheduled, redis_client):
    runtime, runner, clock = scheduled("  - {name: dead letters, every: 5m, run: dlq status}\n"
                                       "  - {name: nightly audit, cron: '0 3 * * *', run: 'audit verify --all'}\n")
    runner.sweep(wait=True)
    redis_client.lpush("jobs:dead", b"\xff not json")
    clock.advance(minutes=5)
    runner.sweep(wait=True)
    outcome = runtime.engine.handle("schedule list", Actor.local("t"), Where())
    result = outcome.result
    assert result.status == "warn" and result.summary == "2 schedules, 1 not ok at the last run"
    items = {item["name"]: item for item in result.data["schedules"]}
    assert items["dead letters"]["last_status"] == "warn"
    assert items["dead letters"]["last_summary"] == "1 dead letters in 1 queue"
    assert items["dead letters"]["next_run"] == (T0 + timedelta(minutes=10)).isoformat()
    assert items["nightly audit"]["last_status"] is None
    assert items["nightly audit"]["next_run"] == datetime(2026, 3, 2, 3, 0, tzinfo=UTC).isoformat()
    assert items["nightly audit"]["timing"] == "cron 0 3 * * * (UTC)"


def test_schedule_list_in_the_terminal(scheduled, tmp_path):
    import subprocess
    import sys

    runtime, runner, clock = scheduled("  - {name: dead letters, every: 5m, run: dlq status}\n")
    clock.now = datetime.now(UTC) - timedelta(minutes=6)
    runner.sweep(wait=True)
    clock.now = datetime.now(UTC)
    runner.sweep(wait=True)  # one real run, recorded
    path = sorted(tmp_path.glob("app*.yaml"))[-1]
    done = subprocess.run([sys.executable, "-m", "bot", "--config", str(path), "run", "--json", "schedule list"],
                          capture_output=True, text=True, timeout=120, env=os.environ)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["command"] == "schedule list" and answer["status"] == "ok"
    [item] = answer["data"]["schedules"]
    assert item["name"] == "dead letters" and item["last_status"] == "ok" and item["timing"] == "every 5m"
    text = subprocess.run([sys.executable, "-m", "bot", "--config", str(path), "run", "schedule list"],
                          capture_output=True, text=True, timeout=120, env=os.environ).stdout
    assert "dead letters" in text and "every 5m" in text and "next" in text


def test_without_schedules_list_says_how_to_add_them(runtime):
    result = runtime.engine.handle("schedule list", Actor.local("t"), Where()).result
    assert result.status == "ok" and "add `schedules:`" in result.summary


def test_gauges_from_a_scheduled_dlq_status(scheduled, redis_client):
    runtime, runner, clock = scheduled("  - {name: dlq, every: 1m, run: dlq status}\n", slack=False)
    for n in range(3):
        redis_client.lpush("jobs:dead", f"entry {n}")
    runner.sweep(wait=True)
    clock.advance(minutes=1)
    runner.sweep(wait=True)
    samples = {(name, tuple(sorted(labels.items()))): value for name, labels, value, _ in runtime.gauges.samples()}
    assert samples[("opsbot_dead_letters", (("queue", "jobs"),))] == 3
    assert samples[("opsbot_schedule_last_run_timestamp_seconds", (("schedule", "dlq"),))] == clock.now.timestamp()
    assert ("opsbot_schedule_last_success_timestamp_seconds", (("schedule", "dlq"),)) not in samples  # warn
    assert samples[("opsbot_schedule_ok", (("schedule", "dlq"),))] == 0


def test_interactive_runs_refresh_the_same_gauges(runtime, redis_client):
    redis_client.lpush("jobs:dead", "x")
    runtime.engine.handle("dlq status", Actor.local("t"), Where())
    body, _ = runtime.metrics.exposition(extra=[runtime.gauges.collector()])
    text = body.decode()
    assert 'opsbot_dead_letters{queue="jobs"} 1.0' in text
    assert "process_cpu_seconds_total" in text and "python_info" in text


def test_a_runtime_without_slack_still_records(scheduled):
    runtime, runner, clock = scheduled("  - {every: 1m, run: dlq status, post: always}\n", slack=False)
    runner.sweep(wait=True)
    clock.advance(minutes=1)
    assert runner.sweep(wait=True) == 1
    assert runner.store.runs()[0]["status"] == "ok"


def test_runtime_builds_a_runner_per_runtime(make_runtime):
    runtime = make_runtime()
    assert isinstance(runtime.services.get(ScheduleRunner), ScheduleRunner)
    assert isinstance(runtime, Runtime)


def test_runs_of_one_schedule_never_overlap_the_due_slot_waits(scheduled):
    runtime, runner, clock = scheduled("  - {name: slow, every: 1m, run: dlq status}\n")
    runner.sweep(wait=True)
    clock.advance(minutes=1)
    [claim] = runner.store.claim_due(clock(), "elsewhere", 3600, runner._next, {"slow": "dlq status"})  # running
    clock.advance(minutes=3)  # three more slots passed while it ran
    assert runner.sweep(wait=True) == 0
    [item] = runtime.engine.handle("schedule list", Actor.local("t"), Where()).result.data["schedules"]
    assert item["running"] and item["latest_run"]["attempt"] == 1
    assert item["next_run"] == (T0 + timedelta(minutes=2)).isoformat()  # due, waiting for the running one
    runner.store.finish(claim, "ok", "done elsewhere", clock())
    assert runner.sweep(wait=True) == 1  # the waiting slots, once
    assert runner.sweep(wait=True) == 0
    assert [r["owner"] for r in runner.store.runs("slow")] == ["elsewhere", runner.owner]


def test_a_channel_rule_that_excludes_the_incident_channel_is_refused_at_load(tmp_path, database_url):
    path = write_config(tmp_path / "app.yaml", database_url, extra="channels:\n  \"dlq *\": [\"#ops\"]\n"
                                                                  "schedules:\n  - {every: 5m, run: dlq status}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=os.environ)
    assert "schedules[0].run: `dlq status` may only run in #ops" in str(caught.value)


def test_markup_in_a_schedule_name_and_in_results_is_never_live(scheduled, redis_client, fake_slack):
    runtime, runner, clock = scheduled("  - {name: \"<!channel> *bold* <https://evil|x>\", every: 1m,"
                                       " run: dlq status, post: always}\n")
    runner.sweep(wait=True)
    clock.advance(minutes=1)
    runner.sweep(wait=True)
    [post] = _posts(fake_slack)
    text = json.dumps(post, ensure_ascii=False)
    assert "<!channel>" not in text and "<https://evil" not in text
    listed = runtime.engine.handle("schedule list", Actor.local("t"), Where()).result
    from bot.render.blocks import to_message

    rendered = json.dumps(to_message(listed, runtime.redactor), ensure_ascii=False)
    assert "<!channel>" not in rendered and "&lt;!channel&gt;" in rendered


def test_postgres_stopped_mid_run_the_slot_is_run_again_once_it_is_back(tmp_path, redis_client, caplog):
    """Claimed, then PostgreSQL crashed: the result cannot be recorded (logged, nothing raised); once PostgreSQL is
    back and the lease has run out, a sweep takes the slot over and records it once."""
    from tests.support.servers import PostgresCluster

    with PostgresCluster() as pg:
        path = write_config(tmp_path / "app.yaml", pg.url, extra="schedules:\n  - {name: d, every: 1m, run: dlq status}\n")
        runtime = Runtime.build(load_settings(path, env=os.environ))
        try:
            runtime.state.migrate()
            runner = runtime.services.get(ScheduleRunner)
            runner.clock = clock = Clock()
            runner.sweep(wait=True)
            clock.advance(minutes=1)
            [claim] = runner.store.claim_due(clock(), runner.owner, 15, runner._next, {"d": "dlq status"})
            pg.stop(signal.SIGQUIT)  # a crash, between the claim and the record
            runner.run(claim)  # never raises
            assert "could not record its run" in caplog.text
            with pytest.raises(Exception):
                runner.sweep(wait=True)  # the worker's sweep logs this and tries again at its next beat
            pg.start()
            assert runner.sweep(wait=True) == 0  # the lease still holds
            clock.advance(seconds=16)
            assert runner.sweep(wait=True) == 1
            [run] = runner.store.runs("d")
            assert (run["status"], run["attempt"], run["due_at"]) == ("ok", 2, T0 + timedelta(minutes=1))
        finally:
            runtime.close()


def test_status_names_the_checks_that_are_not_ok(scheduled, redis_client):
    runtime, runner, clock = scheduled("  - {name: dead letters, every: 1m, run: dlq status}\n")
    redis_client.lpush("jobs:dead", "x")
    runner.sweep(wait=True)
    clock.advance(minutes=1)
    runner.sweep(wait=True)
    result = runtime.engine.handle("status", Actor.local("t"), Where()).result
    text = json.dumps(result.data, ensure_ascii=False)
    assert "scheduled checks" in text and "dead letters (warn)" in text


def test_a_dead_run_of_a_schedule_no_longer_configured_is_given_up_not_run(scheduled):
    runtime, runner, clock = scheduled("  - {name: old, every: 1m, run: dlq status}\n")
    runner.sweep(wait=True)
    clock.advance(minutes=1)
    runner.store.claim_due(clock(), "killed", 15, runner._next, {"old": "dlq status"})  # its process then died
    runtime2, runner2, _ = scheduled("  - {name: new, every: 1m, run: dlq status}\n")
    runner2.clock = clock
    clock.advance(seconds=30)
    runner2.sweep(wait=True)
    [old] = runner2.store.runs("old")
    assert old["status"] == "interrupted" and old["attempt"] == 1


def test_schedules_are_not_rate_limited_like_a_person(tmp_path, database_url, redis_client, make_runtime):
    path = write_config(tmp_path / "app.yaml", database_url, extra="""
limits: {per_user: 1/1h, per_command: 1/1h}
schedules:
  - {name: a, every: 1m, run: dlq status}
  - {name: b, every: 1m, run: dlq status}
  - {name: c, every: 1m, run: dlq status jobs}
""")
    runtime = make_runtime(path)
    runner = runtime.services.get(ScheduleRunner)
    runner.clock = clock = Clock()
    runner.sweep(wait=True)
    clock.advance(minutes=1)
    assert runner.sweep(wait=True) == 3
    assert {r["status"] for r in runner.store.runs()} == {"ok"}
    # a person still is: the per-command limit is used up by nobody but them
    assert runtime.engine.handle("dlq status", Actor("UALICE"), Where("C1")).result.status == "ok"
    assert "Slow down" in runtime.engine.handle("dlq status", Actor("UALICE"), Where("C1")).result.summary


def _probe_group():
    from bot.core.group import Gauge, Group
    from bot.core.registry import Command, Guard
    from bot.core.result import Plan, Result

    pings: list[str] = []

    def ping(inv):
        pings.append(inv.actor.user_id)
        return Result.ok("pong", data={"latency": 0.25})

    def plan(inv):
        return Plan(summary="would fix", fingerprint="f")

    return pings, Group("probe", commands=(
        Command("probe ping", "Ping (read-only)", run=ping),
        Command("probe fix", "Fix (guarded)", guard=Guard(plan=plan, execute=lambda inv, p: Result.ok("fixed")),
                role="oncall")),
        gauges={"probe ping": lambda result: [Gauge("probe_latency_seconds", "Latency", {}, result.data["latency"])]})


def test_a_plugged_in_group_is_scheduled_and_its_guarded_command_refused(tmp_path, database_url, redis_client):
    from bot.config.settings import installed_groups

    pings, probe = _probe_group()
    groups = [*installed_groups(), probe]
    bad = write_config(tmp_path / "bad.yaml", database_url, extra="schedules:\n  - {every: 1m, run: probe fix}\n")
    with pytest.raises(ConfigError, match=r"schedules\[0\].run: `probe fix` is guarded"):
        load_settings(bad, env=os.environ, groups=groups)
    good = write_config(tmp_path / "good.yaml", database_url, extra="schedules:\n  - {every: 1m, run: probe ping}\n")
    runtime = Runtime.build(load_settings(good, env=os.environ, groups=groups), groups=groups)
    try:
        runtime.state.migrate()
        runner = runtime.services.get(ScheduleRunner)
        runner.clock = clock = Clock()
        runner.sweep(wait=True)
        clock.advance(minutes=1)
        assert runner.sweep(wait=True) == 1
        assert pings == ["opsbot:schedule"]
        assert ("probe_latency_seconds", {}, 0.25, "Latency") in runtime.gauges.samples()
    finally:
        runtime.close()


def test_opsbot_check_names_the_next_run_and_warns_about_checks_not_ok(scheduled, redis_client):
    from bot.runtime.checks import run_checks

    runtime, runner, clock = scheduled("  - {name: dead letters, every: 5m, run: dlq status}\n"
                                       "  - {name: nightly, cron: '0 3 * * *', run: drift}\n")
    runner.sweep(wait=True)
    line = next(c for c in run_checks(runtime).data["checks"] if c["target"] == "scheduled checks")
    assert line["ok"] and "next: dead letters at 2026-03-01 12:05:00 UTC" in line["detail"], line
    redis_client.lpush("jobs:dead", "x")
    clock.advance(minutes=5)
    runner.sweep(wait=True)
    line = next(c for c in run_checks(runtime).data["checks"] if c["target"] == "scheduled checks")
    assert "1 of 2 not ok at their last run: dead letters" in line["detail"], line


def test_hostile_label_values_and_values_survive_the_exposition(runtime):
    from bot.core.group import Gauge
    from prometheus_client.parser import text_string_to_metric_families

    nasty = 'tenant "x"\n} opsbot_fake 1\\'
    runtime.gauges.put([Gauge("opsbot_audit_chain_valid", "valid", {"tenant": nasty}, 0),
                        Gauge("opsbot_audit_chain_valid", "valid", {"tenant": "ok"}, float("nan")),  # dropped
                        Gauge("opsbot_dead_letters", "dead", {"queue": "jobs"}, 10 ** 12)])
    body, _ = runtime.metrics.exposition(extra=[runtime.gauges.collector()])
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode()) for s in family.samples}
    assert samples[("opsbot_audit_chain_valid", (("tenant", nasty),))] == 0
    assert ("opsbot_audit_chain_valid", (("tenant", "ok"),)) not in samples
    assert samples[("opsbot_dead_letters", (("queue", "jobs"),))] == 10 ** 12
    assert not any(name == "opsbot_fake" for name, _ in samples)

"""``rollback`` against a fake deploy provider (generic HTTP and Render) and a fake service, on loopback."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from bot.core.invocation import Actor, Where
from tests.conftest import ALICE, BOB, MALLORY, SIGNING_SECRET, write_config
from tests.support.deployer import Deployer, FakeService
from tests.support.harness import SlackBot

OPS = Where("C-ops", channel_name="ops")
V1, V2, V3, V4 = ("1111111aaaa", "2222222bbbb", "3333333cccc", "4444444dddd")


@pytest.fixture
def service():
    with FakeService() as fake:
        yield fake


@pytest.fixture(params=["http", "render"])
def deployer(request):
    with Deployer(style=request.param) as fake:
        fake.add("dep-1", V1, "succeeded", minutes_ago=600)
        fake.add("dep-2", V2, "failed", minutes_ago=500)
        fake.add("dep-3", V3, "succeeded", minutes_ago=400)
        fake.add("dep-4", V4, "live", minutes_ago=60, message="add bulk export")
        yield fake


def config(tmp_path, database_url, deployer, service, monkeypatch, *, extra_rollback: str = "", extra: str = ""):
    monkeypatch.setenv("DEPLOY_TOKEN", deployer.token)
    if deployer.style == "http":
        deploy = f"{{provider: http, url: '{deployer.base}', token: '${{DEPLOY_TOKEN}}', retries: 2}}"
    else:
        deploy = (f"{{provider: render, url: '{deployer.base}', service_id: {deployer.service_id},"
                  f" token: '${{DEPLOY_TOKEN}}', retries: 2}}")
    return write_config(tmp_path / "app.yaml", database_url, extra=f"""
        services:
          api:
            readiness: {service.base}/ready
            metrics: {service.base}/metrics
            deploy: {deploy}
            rollback: {{verify_window: 1s, verify_interval: 0.2s, deploy_timeout: 10s{extra_rollback}}}
    """ + extra)


@pytest.fixture
def bot(tmp_path, database_url, deployer, service, make_runtime, monkeypatch):
    return make_runtime(config(tmp_path, database_url, deployer, service, monkeypatch))


def preview(runtime, text="rollback api", user=ALICE):
    return runtime.engine.handle(text, Actor(user), OPS)


def confirm(runtime, outcome, user=ALICE, progress=None):
    return runtime.engine.confirm(outcome.pending.id, Actor(user), OPS, progress)


# -- the plan -------------------------------------------------------------------------------------

def test_plan_targets_the_previous_successful_deploy_and_changes_nothing(bot, deployer, service):
    service.errors, service.requests = 300, 1000  # 300 of 1,100 after the scrape: the error-rate trigger is met

    outcome = preview(bot)

    assert outcome.kind == "preview"
    data = outcome.result.data["plan"]
    assert (data["current"]["id"], data["target"]["id"]) == ("dep-4", "dep-3")
    assert [d["id"] for d in data["between"]] == ["dep-4"]
    assert "add bulk export" in outcome.result.sections[1].text
    error_rate = next(t for t in data["triggers"] if t["name"] == "error rate")
    assert error_rate["met"] is True and error_rate["detail"].startswith("27.3%")
    assert "1 rollback trigger met" in outcome.result.summary
    assert "schema was not checked" in outcome.result.sections[2].text
    assert deployer.rollbacks == []


def test_to_names_an_earlier_deploy_by_version_prefix(bot, deployer):
    outcome = preview(bot, "rollback api --to 1111111")
    assert outcome.result.data["plan"]["target"]["id"] == "dep-1"
    assert [d["id"] for d in outcome.result.data["plan"]["between"]] == ["dep-4", "dep-3", "dep-2"]


@pytest.mark.parametrize("text, message", [
    ("rollback api --to dep-2", "never went live"),
    ("rollback api --to dep-4", "is the live deploy already"),
    ("rollback api --to 9999999", "no deploy '9999999'"),
    ("rollback nope", "unknown service 'nope'"),
])
def test_bad_targets_are_refused_with_the_reason(bot, deployer, text, message):
    outcome = preview(bot, text)
    assert outcome.result.status == "error" and message in outcome.result.summary
    assert deployer.rollbacks == []


# -- execution and verification -------------------------------------------------------------------

def test_confirmed_rollback_runs_once_and_is_verified(bot, deployer, service):
    outcome = preview(bot)
    progress = []

    done = confirm(bot, outcome, progress=progress.append)
    again = confirm(bot, outcome)  # a double click

    assert done.result.status == "ok", done.result.summary
    assert again.kind != "result" or again.result.status != "ok"
    assert [call[0] for call in deployer.rollbacks] == ["dep-3"]
    if deployer.style == "http":
        assert deployer.rollbacks[0][1].startswith("opsbot-rollback-")  # the Idempotency-Key
    assert done.result.data["deploy"]["state"] == "live" and done.result.data["verified"]
    evidence = "\n".join(done.result.data["evidence"])
    assert "readiness" in evidence and "error rate over the window: 0.0%" in evidence and "draining" in evidence
    assert any("rollback started" in p.summary for p in progress)
    assert any("verifying api" in p.summary for p in progress)


def test_an_unhealthy_service_after_rollback_fails_with_evidence_and_next_step(bot, deployer, service):
    outcome = preview(bot)
    service.ready = False
    service.error_share = 0.4  # 40% of requests during the window fail
    service.queue_step = 200  # and the queue grows

    done = confirm(bot, outcome)

    assert done.result.status == "fail" and "verification FAILED" in done.result.summary
    evidence = "\n".join(done.result.data["evidence"])
    assert "✗ readiness" in evidence and "✗ error rate over the window: 40.0%" in evidence and "✗ queue depth" in evidence
    assert "safe-rollback" in done.result.sections[-1].text


def test_a_rollback_deploy_that_fails_is_reported(bot, deployer):
    deployer.fail_next = True
    done = confirm(bot, preview(bot))
    assert done.result.status == "fail" and "did not go live" in done.result.summary


def test_provider_errors_are_retried_and_the_token_never_shown(tmp_path, database_url, deployer, service,
                                                              make_runtime, monkeypatch):
    deployer.errors_before_answer = 2  # two 503s, then the list
    runtime = make_runtime(config(tmp_path, database_url, deployer, service, monkeypatch))
    assert preview(runtime).kind == "preview"

    deployer.token = "rotated"  # the bot's token no longer works
    refused = preview(runtime)
    assert refused.result.status == "error" and "HTTP 401" in refused.result.summary
    assert "deploy-token" not in refused.result.summary


def test_roles_guard_the_rollback(bot, deployer):
    assert preview(bot, user=MALLORY).kind == "denied"
    outcome = preview(bot, user=BOB)
    assert outcome.kind == "preview"
    assert confirm(bot, outcome, user=MALLORY).kind != "result"
    assert deployer.rollbacks == []


# -- the schema decides which code may run ----------------------------------------------------------

PRISMA = """
CREATE TABLE app._prisma_migrations (
    id VARCHAR(36) PRIMARY KEY NOT NULL, checksum VARCHAR(64) NOT NULL, finished_at TIMESTAMPTZ,
    migration_name VARCHAR(255) NOT NULL, logs TEXT, rolled_back_at TIMESTAMPTZ,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(), applied_steps_count INTEGER NOT NULL DEFAULT 0)
"""


@pytest.fixture
def migrated(tmp_path, database_url):
    """A Prisma history where `20260301_bulk_export` was applied 30 minutes ago (during dep-4's release)."""
    folder = tmp_path / "prisma" / "migrations"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS app CASCADE")
        conn.execute("CREATE SCHEMA app")
        conn.execute(PRISMA)
        for name, minutes_ago in (("20260101_init", 900), ("20260301_bulk_export", 59)):
            (folder / name).mkdir(parents=True)
            (folder / name / "migration.sql").write_text(f"-- {name}\n")
            when = datetime.now(UTC) - timedelta(minutes=minutes_ago)
            conn.execute("INSERT INTO app._prisma_migrations (id, checksum, finished_at, migration_name, started_at,"
                         " applied_steps_count) VALUES (%s, %s, %s, %s, %s, 1)",
                         (str(uuid.uuid4()), hashlib.sha256(f"-- {name}\n".encode()).hexdigest(), when, name, when))
    return database_url


def schema_bot(tmp_path, database_url, deployer, service, make_runtime, monkeypatch):
    path = config(tmp_path, database_url, deployer, service, monkeypatch, extra_rollback=", database: main")
    path.write_text(path.read_text().replace(
        f'  main: {{url: "{database_url}"}}',
        f'  main: {{url: "{database_url}", migrations: {{tool: prisma, source: prisma/migrations, schema: app}}}}'))
    return make_runtime(path)


def test_code_older_than_the_schema_is_refused(tmp_path, migrated, deployer, service, make_runtime, monkeypatch):
    runtime = schema_bot(tmp_path, migrated, deployer, service, make_runtime, monkeypatch)

    outcome = preview(runtime)

    assert outcome.result.status == "error"
    assert "20260301_bulk_export" in outcome.result.summary and "newer schema" in outcome.result.summary
    assert deployer.rollbacks == []


def test_the_rollback_goes_to_the_last_code_that_ran_on_the_schema(tmp_path, migrated, deployer, service,
                                                                     make_runtime, monkeypatch):
    deployer.add("dep-5", "5555555eeee", "live", minutes_ago=20, message="hotfix")  # after the migration
    for deploy in deployer.deploys:
        if deploy["id"] == "dep-4":
            deploy["state"] = "succeeded"
    runtime = schema_bot(tmp_path, migrated, deployer, service, make_runtime, monkeypatch)

    outcome = preview(runtime)
    assert outcome.result.data["plan"]["target"]["id"] == "dep-4"  # ran against the migrated schema
    assert "no migration was applied since dep-4" in outcome.result.sections[2].text

    explicit = preview(runtime, "rollback api --to dep-3")  # older than the migration
    assert explicit.result.status == "error" and "--to dep-4" in explicit.result.summary


# -- end to end through Slack -----------------------------------------------------------------------

def test_rollback_from_slack_previews_confirms_and_reports(tmp_path, database_url, service, make_runtime,
                                                           monkeypatch, fake_slack, slack_env):
    from slack_sdk import WebClient

    with Deployer(style="render") as deployer:
        deployer.add("dep-3", V3, "succeeded", minutes_ago=400)
        deployer.add("dep-4", V4, "live", minutes_ago=60)
        runtime = make_runtime(config(tmp_path, database_url, deployer, service, monkeypatch),
                               slack=WebClient(token="xoxb-test-token-0000", base_url=fake_slack.api_url))
        slack = SlackBot(runtime, fake_slack, SIGNING_SECRET)
        try:
            shown = slack.command("rollback api")
            assert "roll back api from dep-4" in shown.body["text"]
            assert deployer.rollbacks == []
            done = slack.click(shown, "Confirm")
        finally:
            slack.close()
        assert done.body["replace_original"] is True
        assert "rolled back api to dep-3" in done.body["text"] and deployer.rollbacks == [("dep-3", None)]

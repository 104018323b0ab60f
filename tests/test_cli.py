"""``opsbot run`` and friends as a terminal user runs them: options, output, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ALICE, BOT_TOKEN, MALLORY, write_config
from tests.support import commands as test_commands

PLUGIN = "tests.support.cli_with_test_commands"


def opsbot(*args, config=None, env=None, module="bot"):
    command = [sys.executable, "-m", module] + (["--config", str(config)] if config else []) + list(args)
    full_env = {**os.environ, "RUN_MIGRATIONS": "true", "TEST_SLACK_BOT_TOKEN": BOT_TOKEN, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=full_env)


@pytest.fixture
def config(tmp_path, database_url, redis_client, fake_slack):
    return write_config(tmp_path / "app.yaml", database_url, api_url=fake_slack.api_url)


def test_run_help_exits_0(config):
    proc = opsbot("run", "help", config=config)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("[OK] /ops: ")


def test_run_json(config):
    proc = opsbot("run", "--json", "help runbook", config=config)
    body = json.loads(proc.stdout)
    assert body["command"] == "help" and body["status"] == "ok" and body["data"]["name"] == "runbook"


def test_usage_error_exits_2(config):
    proc = opsbot("run", "dlq-nope", config=config)
    assert proc.returncode == 2
    assert "Unknown command `dlq-nope`" in proc.stderr


def test_failed_command_exits_1(config):
    proc = opsbot("run", "audit verify tenant-a", config=config)  # the database has no AuditLog table
    assert proc.returncode == 1
    assert "audit table 'AuditLog' does not exist" in proc.stdout


@pytest.mark.parametrize("text, message", [
    ("runbook no-such-book", "No runbook named `no-such-book`"),
    ("dlq status no-such-queue", "unknown queue 'no-such-queue'"),
    ("incident declare sev9 Exports failing", "unknown severity 'sev9'"),
    ("health no-such-service", "unknown service 'no-such-service'"),
])
def test_an_argument_naming_nothing_configured_is_a_usage_error(config, text, message):
    proc = opsbot("run", text, config=config)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr


def test_config_env_variable_is_used(config):
    proc = opsbot("run", "help", env={"OPSBOT_CONFIG": str(config)})
    assert proc.returncode == 0, proc.stderr


def test_guarded_without_yes_previews_and_changes_nothing(config, redis_client):
    proc = opsbot("run", "test bump --by 2", config=config, module=PLUGIN)
    assert proc.returncode == 3
    assert "Preview: add 2 to the counter (0 → 2)" in proc.stdout
    assert "Re-run with --yes" in proc.stderr
    assert redis_client.get(test_commands.EXECUTIONS) is None


def test_guarded_with_yes_executes_as_local_admin(config, redis_client, fake_slack):
    proc = opsbot("run", "--yes", "--json", "test bump2 --by 2", config=config, module=PLUGIN)
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["data"]["counter"] == 2
    assert body["data"]["confirmed_by"].startswith("cli:")
    assert int(redis_client.get(test_commands.EXECUTIONS)) == 1
    # Request and outcome reach the incident channel from the terminal too.
    posts = fake_slack.calls("chat.postMessage")
    assert [p.body["channel"] for p in posts] == ["#incidents", "#incidents"]
    assert "counter is now 2" in posts[1].body["text"]


def test_role_check_fails_closed_when_slack_cannot_be_asked(tmp_path, database_url, redis_client):
    config = write_config(tmp_path / "noslack.yaml", database_url)
    proc = opsbot("run", "--as", "UCAROL", "--yes", "test bump", config=config, module=PLUGIN,
                  env={"TEST_SLACK_BOT_TOKEN": ""})
    assert proc.returncode == 3
    assert "Cannot check your `oncall` role right now" in proc.stdout
    assert redis_client.get(test_commands.EXECUTIONS) is None


def test_as_user_acts_with_that_users_roles(config, redis_client):
    denied = opsbot("run", "--as", MALLORY, "--yes", "test bump", config=config, module=PLUGIN)
    assert denied.returncode == 3 and "needs the `oncall` role" in denied.stdout

    allowed = opsbot("run", "--as", ALICE, "--yes", "test bump", config=config, module=PLUGIN)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "counter is now 1" in allowed.stdout

    in_group = opsbot("run", "--as", "UCAROL", "--yes", "test bump", config=config, module=PLUGIN)
    assert in_group.returncode == 0 and "counter is now 2" in in_group.stdout

    two_person = opsbot("run", "--as", ALICE, "--yes", "test bump2", config=config, module=PLUGIN)
    assert two_person.returncode == 3 and "two-person" in two_person.stdout


def test_manifest_is_generated_from_the_registry(config):
    proc = opsbot("manifest", config=config)
    manifest = yaml.safe_load(proc.stdout)
    slash = manifest["features"]["slash_commands"][0]
    assert slash["command"] == "/ops"
    assert slash["url"].endswith("/slack/events")
    assert "help" in slash["usage_hint"] and "runbook" in slash["usage_hint"]
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert {"commands", "chat:write", "usergroups:read"} <= set(manifest["oauth_config"]["scopes"]["bot"])
    assert "/ops runbook:" in manifest["display_information"]["long_description"]

    assert "WARNING: OPSBOT_PUBLIC_URL (slack.request_url) is not set" in proc.stderr

    socket = opsbot("manifest", "--socket", "--json", config=config)
    manifest = json.loads(socket.stdout)
    assert manifest["settings"]["socket_mode_enabled"] is True and "url" not in manifest["features"]["slash_commands"][0]
    assert "WARNING" not in socket.stderr


def test_migrate_is_idempotent(config):
    first = opsbot("migrate", config=config)
    second = opsbot("migrate", config=config)
    assert first.returncode == second.returncode == 0
    assert "up to date" in second.stdout


def test_serve_fails_fast_listing_every_missing_setting(config):
    proc = opsbot("serve", "--port", "0", config=config, env={"TEST_SLACK_BOT_TOKEN": ""})
    assert proc.returncode == 2
    assert "SLACK_BOT_TOKEN" in proc.stderr and "SLACK_SIGNING_SECRET" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["run", "--as", "", "help"], "--as takes a Slack user id"),
    (["run", "--as", "alice", "help"], "--as takes a Slack user id"),
    (["run", "audit verify tenant\x01"], "control character"),
    (["run", "email triage --since 99999999999d"], "at most 3650d"),
])
def test_hostile_cli_input_is_a_usage_error(config, args, message):
    proc = opsbot(*args, config=config)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_brand_new_database_needs_no_migrate_step(tmp_path, database_url, redis_client):
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS opsbot CASCADE")
    path = write_config(tmp_path / "app.yaml", database_url)
    env = {**os.environ, "RUN_MIGRATIONS": ""}  # the default
    status = subprocess.run([sys.executable, "-m", "bot", "--config", str(path), "run", "dlq status"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert status.returncode == 0, status.stderr
    assert status.stderr == ""  # no "relation does not exist", no warnings
    listed = subprocess.run([sys.executable, "-m", "bot", "--config", str(path), "run", "incident list"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert listed.returncode == 0 and "0 open incidents" in listed.stdout


def test_without_automatic_migrations_every_command_says_to_migrate_in_one_line(tmp_path, database_url,
                                                                               redis_client):
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS opsbot CASCADE")
    path = write_config(tmp_path / "app.yaml", database_url)
    env = {**os.environ, "RUN_MIGRATIONS": "false"}
    for text in ("incident list", "incident declare sev3 Slow search"):
        proc = subprocess.run([sys.executable, "-m", "bot", "--config", str(path), "run", text],
                              capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "run `opsbot migrate`" in proc.stdout, proc.stdout
        assert "Traceback" not in proc.stderr and "UndefinedTable" not in proc.stdout + proc.stderr

"""Who may do what, and where, is configuration (permissions:, channels:) with safe defaults."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from slack_sdk import WebClient

from bot.config.settings import load_settings
from bot.core.invocation import Actor, Where
from bot.runtime.factory import Runtime
from tests.conftest import ADMIN, ALICE, BOT_TOKEN, MALLORY, write_config

OPS = Where("C-ops", channel_name="ops")


def log_actions(runtime) -> list[tuple[str, str]]:
    return [(e.action, e.payload.get("reason", "")) for e in runtime.state.action_log.entries()]


@pytest.fixture
def configured(tmp_path, database_url, redis_client, make_runtime, fake_slack):
    """A runtime on app.yaml with ``extra`` appended."""

    def make(extra: str = "") -> Runtime:
        path = write_config(tmp_path / "app.yaml", database_url, extra=extra)
        return make_runtime(path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))

    return make


@pytest.mark.parametrize("text", ["audit export tenant-a", "audit snapshot tenant-a",
                                  "incident declare sev1 Checkout down", "dlq requeue", "dlq cancel"])
def test_by_default_what_moves_data_out_pages_or_changes_state_needs_a_role(configured, text):
    runtime = configured()

    denied = runtime.engine.handle(text, Actor(MALLORY), OPS)

    assert denied.kind == "denied" and denied.exit_code == 3
    assert "needs the `oncall` role" in denied.result.summary and f"<@{MALLORY}>" in denied.result.summary
    assert ("denied", denied.result.summary.replace(f"<@{MALLORY}>", f"@{MALLORY}")) in log_actions(runtime)


def test_reading_and_a_non_paging_incident_need_no_role(configured):
    runtime = configured()
    assert runtime.engine.handle("dlq status", Actor(MALLORY), OPS).kind == "result"
    declared = runtime.engine.handle("incident declare sev3 Slow exports", Actor(MALLORY), OPS)
    assert declared.kind == "result" and declared.result.status == "ok"
    raised = runtime.engine.handle("incident sev sev1 --incident INC-1", Actor(MALLORY), OPS)
    assert raised.kind == "denied" and "`/ops incident sev sev1` needs the `oncall` role" in raised.result.summary


def test_app_yaml_permissions_tighten_and_loosen(configured):
    runtime = configured("""
        permissions:
          "dlq *": admin
          "audit export": anyone
          "incident declare sev1": anyone
        """)

    assert "needs the `admin` role" in runtime.engine.handle("dlq requeue", Actor(ALICE), OPS).result.summary
    assert runtime.engine.handle("dlq requeue", Actor(ADMIN), OPS).kind in ("preview", "result")
    export = runtime.engine.handle("audit export tenant-a", Actor(MALLORY), OPS)
    assert export.kind == "result"  # allowed: it fails only because there is no AuditLog table here
    assert runtime.engine.handle("incident declare sev1 Checkout down", Actor(MALLORY), OPS).kind == "result"


def test_the_confirm_needs_the_configured_role_too(configured):
    runtime = configured('permissions: {"test bump": admin}\n')
    preview = runtime.engine.handle("test bump", Actor(ADMIN), OPS)
    other = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
    assert other.kind == "denied" and "needs the `admin` role" in other.result.summary


def test_channels_restrict_where_a_command_runs(configured):
    runtime = configured("""
        channels:
          "*": ["#ops", "G0SECRET"]
          "audit export": ["G0SECRET"]
        """)
    private = Where("G0SECRET", channel_name="sec-incidents")

    here = runtime.engine.handle("audit export tenant-a", Actor(ALICE), OPS)
    assert here.kind == "denied"
    assert "`/ops audit export` may only run in <#G0SECRET>" in here.result.summary
    assert runtime.engine.handle("audit export tenant-a", Actor(ALICE), private).kind == "result"
    assert runtime.engine.handle("dlq status", Actor(ALICE), OPS).kind == "result"            # #ops by name
    assert runtime.engine.handle("dlq status", Actor(ALICE), Where("C-random")).kind == "denied"
    assert runtime.engine.handle("audit export tenant-a", Actor.local(), Where("cli")).kind == "result"
    assert ("denied", "`/ops dlq status` may only run in #ops, #G0SECRET (channels in app.yaml); "
                      "nothing was run.") in log_actions(runtime)


def test_help_says_who_may_run_a_command_and_where(configured):
    runtime = configured("""
        permissions: {"incident declare sev2": admin}
        channels: {"audit export": ["G0SECRET"]}
        """)
    declare = runtime.engine.handle("help incident declare", Actor(MALLORY), OPS).result.data["permissions"]
    assert declare == ["anyone in the workspace (default)",
                       'with sev2: role `admin` (app.yaml permissions: "incident declare sev2")',
                       "with sev1: role `oncall` (default)"] or sorted(declare) == sorted(
        ["anyone in the workspace (default)", 'with sev2: role `admin` (app.yaml permissions: "incident declare sev2")',
         "with sev1: role `oncall` (default)"])
    export = runtime.engine.handle("help audit export", Actor(MALLORY), OPS).result.data["permissions"]
    assert export == ["role `oncall` (default)", 'only in G0SECRET (app.yaml channels: "audit export")']


@pytest.mark.parametrize("extra, message", [
    ('permissions: {"dlq requeu": oncall}\n', "'dlq requeu' names no command"),
    ('permissions: {"dlq requeue": wizard}\n', "unknown role 'wizard'"),
    ('channels: {"* dlq": ["#ops"]}\n', "`*` may only be the last word"),
])
def test_a_rule_naming_nothing_is_a_configuration_error(tmp_path, database_url, extra, message):
    path = write_config(tmp_path / "app.yaml", database_url, extra=extra)
    proc = subprocess.run([sys.executable, "-m", "bot", "--config", str(path), "run", "help"],
                          capture_output=True, text=True, timeout=60, env=os.environ)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_a_denial_in_slack_is_explained_to_the_user_alone(make_runtime, fake_slack, config_path, slack_env):
    from tests.conftest import SIGNING_SECRET
    from tests.support.harness import SlackBot

    runtime = make_runtime(config_path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
    bot = SlackBot(runtime, fake_slack, SIGNING_SECRET)
    try:
        reply = bot.command("incident declare sev1 Checkout down", user=MALLORY)
    finally:
        bot.close()
    assert reply.body["response_type"] == "ephemeral"
    assert f"`/ops incident declare sev1` needs the `oncall` role, which <@{MALLORY}> does not have." in reply.text
    assert not [c for c in fake_slack.calls("chat.postMessage") if "Paging" in c.body.get("text", "")]


def test_settings_hold_the_rules(tmp_path, database_url):
    path = write_config(tmp_path / "app.yaml", database_url, extra='permissions: {"dlq *": admin}\n')
    assert load_settings(path).permissions == {"dlq *": "admin"}

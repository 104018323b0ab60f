"""A command group is a plugin: one more group plugs into the framework without editing it, and a broken one
cannot take the others down.

The ``canary`` group below is what a team would write for its own runbook actions: it owns a
setting, adds a field to a shared section, answers a command, contributes a `status` line, a
check and a sweep. Its hostile twins raise from every hook.
"""

from __future__ import annotations

import logging
import os

import pytest
from pydantic import BaseModel
from slack_sdk import WebClient

from bot.config.settings import installed_groups, load_settings, settings_class
from bot.core.group import Check, CheckWarning, Color, Group, StatusLine, Sweep, registry_of
from bot.core.invocation import Actor, Where
from bot.core.registry import Arg, Command
from bot.core.result import Result
from bot.runtime.checks import run_checks
from bot.runtime.factory import Runtime
from bot.runtime.worker import Worker
from tests.conftest import BOT_TOKEN

ONCALL = Actor("U_ONCALL")
WHERE = Where("cli")


class CanarySettings(BaseModel):
    url: str = "http://canary.invalid"
    budget: int = 3


SWEPT: list[str] = []


def _chirp(inv) -> Result:
    budget = inv.settings.canary.budget
    return Result.ok(f"chirp {inv.args['word']} (budget {budget}, api limit {inv.settings.status.canary_limit})",
                     data={"word": inv.args["word"], "budget": budget})


def _sweep(runtime) -> int:
    SWEPT.append(runtime.settings.canary.url)
    return 1


CANARY = Group(
    "canary",
    commands=(Command("canary chirp", "Say a word.", args=(Arg("word", positional=True, required=True),), run=_chirp),),
    settings={"canary": (CanarySettings, CanarySettings())},
    extends={"status": {"canary_limit": (int, 7)}},
    status=lambda inv: [StatusLine(Color.AMBER, "canary", f"budget {inv.settings.canary.budget}")],
    checks=lambda runtime: [Check("canary api", lambda: (_ for _ in ()).throw(CheckWarning("slow to answer")))],
    sweep=Sweep("canary pings", every=lambda settings: 0.0, run=_sweep),
)


def _boom(*_):
    raise RuntimeError("the group's own bug")


BROKEN = Group("broken", commands=(), status=_boom, checks=_boom,
               sweep=Sweep("broken reminders", every=lambda settings: 0.0, run=_boom))


@pytest.fixture
def plugged(config_path, fake_slack, slack_env):
    """A runtime with the installed groups plus ``canary`` and ``broken``, its settings from the same app.yaml."""
    groups = [*installed_groups(), CANARY, BROKEN]
    config_path.write_text(config_path.read_text() + "canary: {url: 'http://canary.example', budget: 5}\n"
                           "status: {canary_limit: 9}\n")
    settings = load_settings(config_path, env=os.environ, groups=groups)
    runtime = Runtime.build(settings, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url), groups=groups)
    runtime.state.migrate()
    yield runtime
    runtime.close()


def test_a_new_group_plugs_in_without_editing_the_framework(plugged):
    outcome = plugged.engine.handle("canary chirp hello", ONCALL, WHERE)
    assert outcome.result.status == "ok", outcome.result.summary
    assert outcome.result.summary == "chirp hello (budget 5, api limit 9)"  # its own setting and its extension

    status = plugged.engine.handle("status", ONCALL, WHERE).result
    assert {"what": "canary", "color": "amber"}.items() <= next(
        line for line in status.data["lines"] if line["what"] == "canary").items()

    checks = {c["target"]: c for c in run_checks(plugged).data["checks"]}
    assert checks["canary api"]["level"] == "warn" and "slow to answer" in checks["canary api"]["detail"]

    assert "canary chirp" in str(plugged.engine.handle("help", ONCALL, WHERE).result.data)


def test_a_group_that_raises_from_every_hook_takes_nothing_else_down(plugged, caplog):
    status = plugged.engine.handle("status", ONCALL, WHERE).result
    broken = next(line for line in status.data["lines"] if "broken" in line["what"])
    assert broken["color"] == "unknown" and "the group's own bug" in broken["detail"]
    assert any(line["what"] == "canary" for line in status.data["lines"])  # the others are still there

    checks = {c["target"]: c for c in run_checks(plugged).data["checks"]}
    assert checks["broken checks"]["level"] == "fail" and "the group's own bug" in checks["broken checks"]["detail"]
    assert checks["state redis"]["ok"] and checks["canary api"]["level"] == "warn"

    SWEPT.clear()
    with caplog.at_level(logging.ERROR, logger="opsbot.worker"):
        worker = Worker(plugged, threads=1).start()
        worker.stop(deadline=5)
    assert SWEPT == ["http://canary.example"]  # the canary still swept after the broken group's sweep raised
    assert "broken reminders sweep failed: the group's own bug" in caplog.text


def test_groups_that_claim_the_same_thing_are_refused_when_assembled():
    twin = Group("twin", commands=(), extends={"status": {"canary_limit": (int, 1)}})
    with pytest.raises(TypeError, match="twin.*status.canary_limit.*another part owns"):
        settings_class([CANARY, twin])
    with pytest.raises(TypeError, match="status.error_rate.*another part owns"):
        settings_class([*installed_groups(), Group("rate", commands=(), extends={"status": {"error_rate": (int, 1)}})])
    with pytest.raises(TypeError, match="setting 'queues'.*another part owns"):
        settings_class([*installed_groups(), Group("queues", commands=(), settings={"queues": (int, 0)})])
    with pytest.raises(ValueError, match="registered twice"):
        registry_of([CANARY, Group("echo", commands=CANARY.commands)])
    with pytest.raises(ValueError, match="two groups offer a context"):
        registry_of([*installed_groups(), Group("ctx", commands=(), context_option=Arg("ticket"))])

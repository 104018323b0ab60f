"""deploy/prometheus-alerts.yml against the runbooks: Prometheus's own promtool takes it, and every alert of the
production group is answered by a runbook (and every alert a runbook names has a rule)."""

from __future__ import annotations

import subprocess

import yaml

from bot.core.runbooks import RunbookLibrary
from commands.alerts.matching import match_runbook
from tests.conftest import REPO
from tests.support.packages import debian_binary

RULES = REPO / "deploy" / "prometheus-alerts.yml"


def _production() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return next(g for g in groups if g["name"] == "production")["rules"]


def test_promtool_takes_the_rules():
    promtool = debian_binary("prometheus", "promtool")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_every_production_alert_has_a_runbook_and_every_runbook_alert_a_rule():
    library = RunbookLibrary(REPO / "runbooks", {"default_queue": "jobs"})
    rules = _production()
    for rule in rules:
        found = match_runbook(library, {"alertname": rule["alert"], **rule.get("labels", {})})
        assert found is not None, f"no runbook answers {rule['alert']}"
    named = {m["alertname"] for book in library.all() for m in book.alerts}
    assert named <= {rule["alert"] for rule in rules}
    assert {"DeadLetterBacklog", "WorkerDown", "QueueDepthHigh", "HighErrorRate", "MigrationDrift",
            "AuditChainInvalid", "CronJobFailed", "JobFailureSpike"} <= named  # the seeds' alerts


def test_a_queue_label_renders_the_dead_letter_runbook_for_that_queue():
    library = RunbookLibrary(REPO / "runbooks", {"default_queue": "jobs"})
    found = match_runbook(library, {"alertname": "DeadLetterBacklog", "queue": "step"})
    assert found.book.name == "dead-letter-backlog" and found.params == {"queue": "step"}
    assert [s.run for s in found.rendered.steps if s.run][:2] == ["dlq status", "dlq peek step"]

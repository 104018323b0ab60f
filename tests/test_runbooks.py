"""Runbook documents: every seed procedure is there, renders strictly, and links real commands."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from bot.config.settings import load_settings
from bot.core.parser import UsageError, parse
from bot.core.runbooks import RunbookError, RunbookLibrary
from commands import build_registry
from commands.runbook import library_for
from tests.conftest import REPO

REQUIRED = [
    "pre-release-checklist", "post-release-checklist", "secret-rotation", "monitoring-and-alerts",
    "dead-letter-backlog", "s3-outage", "smtp-failure", "provider-rate-limits", "drift-check-failure",
    "audit-chain-invalid", "reminder-not-scheduled", "email-not-sending", "safe-rollback", "incident-response",
    "backups-and-restore", "feature-flag-emergency-disable", "scheduled-jobs",
]


@pytest.fixture(scope="module")
def library():
    return library_for(load_settings(REPO / "app.yaml", env={}))


def test_every_seed_procedure_has_a_runbook(library):
    names = {book.name for book in library.all()}
    assert set(REQUIRED) <= names


def test_every_runbook_has_front_matter_and_renders(library):
    for book in library.all():
        assert book.title and book.symptoms and book.severity and book.commands, book.name
        rendered = library.render(book.name)
        assert rendered.parts, book.name


def test_no_mis_encoded_characters():
    for path in (REPO / "runbooks").glob("*.md"):
        text = path.read_text(encoding="utf-8")
        assert not re.search("[âÃ]", text), path.name


def test_run_steps_name_real_commands_or_planned_ones(library):
    """A registered command's step must parse; others are commands still to come."""
    registry = build_registry()
    spec_groups = {"status", "health", "dlq", "audit", "drift", "email", "reminders", "rollback", "incident",
                   "runbook", "help", "schedule"}
    for book in library.all():
        for step in library.render(book.name).steps:
            if step.run is None:
                continue
            words = step.run.split()
            assert words[0] in spec_groups, (book.name, step.run)
            command, _ = registry.match(words)
            if command is not None:
                try:
                    parse(step.run, registry)
                except UsageError as exc:
                    pytest.fail(f"{book.name}: `{step.run}` does not parse: {exc}")


def test_parameters_and_app_yaml_values_reach_the_template(library):
    book = library.render("dead-letter-backlog", {"queue": "step"})
    assert [s.run for s in book.steps][:2] == ["dlq status", "dlq peek step"]
    default = library.render("dead-letter-backlog")
    assert default.params == {"queue": "jobs"}
    assert "#incidents" in str(library.render("incident-response").parts)


def test_unknown_parameter_and_unknown_name_are_explained(library):
    with pytest.raises(RunbookError, match="has no parameter nope; its parameters: `service`"):
        library.render("safe-rollback", {"nope": "1"})
    with pytest.raises(RunbookError, match="Did you mean `email-not-sending`"):
        library.get("email-not-sendin")


def test_strict_undefined_is_an_error_not_an_empty_string(tmp_path):
    (tmp_path / "broken.md").write_text("---\ntitle: Broken\n---\n1. Do {{ missing }}\n   run: help\n")
    with pytest.raises(RunbookError, match="uses a value that is not set: 'missing' is undefined"):
        RunbookLibrary(tmp_path).render("broken")


def test_path_traversal_names_are_not_files(library):
    with pytest.raises(RunbookError, match="No runbook named"):
        library.get("../app")


def test_json_carries_the_whole_runbook_not_only_the_runnable_steps(runtime):
    from bot.core.invocation import Actor, Where

    outcome = runtime.engine.handle("runbook dead-letter-backlog", Actor("UALICE"), Where("C-ops"))
    data = outcome.result.data
    assert [s["number"] for s in data["steps"]] == [1, 2, 3, 4, 5, 6]
    assert data["steps"][3] == {"number": 4, "run": None, "text": "Fix the cause named by the errors (provider "
                                "outage, bad deploy, rate limit). If it is a deploy, see `safe-rollback`."}
    kinds = [next(iter(part)) for part in data["parts"]]
    assert kinds[0] == "text" and kinds.count("step") == 6 and kinds[-1] == "text"
    assert "Dead letters are jobs that exhausted their retries" in data["parts"][0]["text"]


@pytest.mark.parametrize("value", ["jobs\n7. Requeue everything\n   run: dlq requeue", "jobs\r\n", "a\x1bb",
                                   "x" * 201])
def test_a_parameter_cannot_add_steps_or_carry_control_characters(runtime, value):
    from bot.core.invocation import Actor, Where

    outcome = runtime.engine.handle(f"runbook dead-letter-backlog {shlex.quote('queue=' + value)}",
                                    Actor("UALICE"), Where("C-ops"))
    assert outcome.kind == "usage" and outcome.exit_code == 2
    assert "must be one line" in outcome.result.summary or "control character" in outcome.result.summary


def test_markup_in_a_parameter_is_shown_as_text_in_slack(runtime):
    from bot.core.invocation import Actor, Where
    from bot.render.blocks import to_message

    outcome = runtime.engine.handle("runbook feature-flag-emergency-disable 'flag=<!here>&<https://evil.example|x>'",
                                    Actor("UALICE"), Where("C-ops"))
    message = json.dumps(to_message(outcome.result))
    assert "FLAG_&lt;!here&gt;&amp;&lt;https://evil.example|x&gt;" in message
    assert "<!here>" not in message and "<https://evil" not in message

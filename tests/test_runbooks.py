"""Runbook documents: every seed procedure is there, renders strictly, and links real commands."""

from __future__ import annotations

import re

import pytest

from bot.config import load_settings
from bot.parser import UsageError, parse
from bot.runbooks import RunbookError, RunbookLibrary
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


def test_no_mis_encoded_characters_from_the_seeds():
    for path in (REPO / "runbooks").glob("*.md"):
        text = path.read_text(encoding="utf-8")
        assert not re.search("[âÃ]", text), path.name


def test_run_steps_name_real_commands_or_planned_ones(library):
    """A registered command's step must parse; others are SPEC §3 commands still to come."""
    registry = build_registry()
    spec_groups = {"status", "health", "dlq", "audit", "drift", "email", "reminders", "rollback", "incident",
                   "runbook", "help"}
    for book in library.all():
        for step in library.render(book.name).steps:
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

"""``runbook [name] [key=value ...]``: list the runbooks, or show one with a Run button per step."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from bot.config.settings import Settings
from bot.core.invocation import BadArgument, CommandError, Invocation
from bot.core.markup import Mrkdwn, code, escape, link, md
from bot.core.parser import UsageError, parse
from bot.core.registry import Arg, Command
from bot.core.result import Button, Result, Section
from bot.core.group import Check, Group

if TYPE_CHECKING:  # the library (and its YAML and templates) loads when a runbook is shown: not for `help`
    from bot.core.runbooks import RunbookLibrary

__all__ = ["COMMANDS", "GROUP", "library_for"]


def library_for(settings: Settings) -> RunbookLibrary:
    """The runbook library with app.yaml values available to its templates."""
    from bot.core.runbooks import RunbookLibrary

    context: dict[str, Any] = {
        "incident_channel": settings.slack.incident_channel,
        "command": settings.slack.command,
        "queues": [q.model_dump() for q in settings.queues],
        "default_queue": settings.queues[0].name if settings.queues else "jobs",
        "services": {name: s.model_dump() for name, s in settings.services.items()},
        "databases": list(settings.databases),
    }
    return RunbookLibrary(settings.runbooks_path, context)


def show_runbook(inv: Invocation) -> Result:
    from bot.core.runbooks import RunbookError, UnknownName

    library = library_for(inv.settings)
    name = inv.args["name"]
    try:
        if not name:
            return _listing(library)
        book = library.render(name, inv.args["params"])
    except UnknownName as exc:
        raise BadArgument(str(exc)) from None
    except RunbookError as exc:
        raise CommandError(str(exc)) from None
    prefix = inv.settings.slack.command
    sections = []
    if book.book.symptoms:
        sections.append(Section(text=md("*Symptoms:* {}", "; ".join(book.book.symptoms))))
    for part in book.parts:
        if part.heading:
            sections.append(Section(title=part.heading))
        elif part.step and part.step.run and _runnable(inv, part.step.run):
            sections.append(Section(text=_step_text(part.step), button=Button("Run", "run", part.step.run)))
        else:  # prose, or a step without a command to run here: shown as text, folded with its neighbours
            text = _step_text(part.step, prefix) if part.step else _mrkdwn(part.text)
            previous = sections[-1] if sections else None
            if previous and previous.text and not previous.button and not previous.fields:
                sections[-1] = replace(previous, text=previous.text + Mrkdwn("\n") + text)
            else:
                sections.append(Section(text=text))
    return Result.ok(
        book.title,
        data={
            "name": book.book.name,
            "title": book.title,
            "severity": book.book.severity,
            "symptoms": list(book.book.symptoms),
            "commands": list(book.book.commands),
            "params": book.params,
            "steps": [{"number": s.number, "text": s.text, "run": s.run} for s in book.steps],
            "parts": [_part_dict(part) for part in book.parts],
        },
        sections=_merge_headings(sections),
    )


def _step_text(step, prefix: str | None = None) -> Mrkdwn:
    """A step's text; with ``prefix``, its command is shown as code (no Run button: it does not exist here)."""
    text = md("{}. {}", step.number, _mrkdwn(step.text))
    return text + md("\n{}", code(f"{prefix} {step.run}")) if prefix and step.run else text


def _part_dict(part) -> dict[str, Any]:
    if part.heading:
        return {"heading": part.heading}
    if part.step:
        return {"step": {"number": part.step.number, "text": part.step.text, "run": part.step.run}}
    return {"text": part.text}


def _listing(library: RunbookLibrary) -> Result:
    books = library.all()
    lines = [f"`{b.name}` {b.title}" + (f" _({b.severity})_" if b.severity else "") for b in books]
    return Result.ok(
        f"{len(books)} runbooks",
        data={"runbooks": [{"name": b.name, "title": b.title, "severity": b.severity,
                            "symptoms": list(b.symptoms)} for b in books]},
        sections=[Section(text="\n".join(lines)), Section(text="`/ops runbook <name>` shows one.")],
    )


def _runnable(inv: Invocation, text: str) -> bool:
    try:
        parse(text, inv.registry)
    except UsageError:
        return False
    return True


def _merge_headings(sections: list[Section]) -> list[Section]:
    """Fold a heading into the prose that follows it, so a runbook uses few blocks."""
    merged: list[Section] = []
    for section in sections:
        previous = merged[-1] if merged else None
        if previous and previous.title and not previous.text and not previous.button and not section.title:
            merged[-1] = Section(title=previous.title, text=section.text, button=section.button)
        else:
            merged.append(section)
    return merged


_TABLE = re.compile(r"(?:^\|.*\|[ \t]*$\n?)+", re.M)


def _mrkdwn(text: str) -> Mrkdwn:
    """Markdown to Slack mrkdwn: bold, links, checkboxes; tables become preformatted blocks.

    The whole text is a value (it holds parameters users typed): escaped first, so only the
    links written in Markdown become links.
    """
    text = escape(text)
    text = _TABLE.sub(lambda m: "```\n" + m.group(0).rstrip("\n") + "\n```\n", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"*\1*", text)
    text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", lambda m: link(_unescape(m.group(2)), _unescape(m.group(1))), text)
    return Mrkdwn(text.replace("- [ ]", "☐").replace("- [x]", "☑"))


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


COMMANDS = [
    Command(
        "runbook",
        "List the runbooks, or show one with a Run button on each step",
        args=(
            Arg("name", "runbook name, e.g. `email-not-sending`", positional=True),
            Arg("params", "values for the runbook's parameters", params=True),
        ),
        run=show_runbook,
        examples=("runbook", "runbook dead-letter-backlog queue=step"),
    ),
]

def checks(runtime: Any) -> list[Check]:
    """`opsbot check`: every runbook renders with this app.yaml."""

    def render_all() -> str:
        library = library_for(runtime.settings)
        books = library.all()
        for book in books:
            library.render(book.name)
        return f"ok, {len(books)} runbooks render"

    return [Check("runbooks", render_all)]


GROUP = Group("runbook", commands=COMMANDS, checks=checks)

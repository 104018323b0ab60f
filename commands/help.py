"""``help [command]``: the command list, or one command's usage, from the registry itself."""

from __future__ import annotations

import difflib

from bot.core.invocation import Invocation
from bot.core.registry import Arg, Command
from bot.core.result import Result, Section
from bot.core.group import Group

__all__ = ["COMMANDS", "GROUP"]


def show_help(inv: Invocation) -> Result:
    topic = (inv.args["topic"] or "").strip()
    prefix = inv.settings.slack.command
    registry = inv.registry
    if not topic:
        return _overview(inv, prefix)
    command = registry.get(topic)
    if command is not None:
        return _one(command, prefix, inv.policy.describe(command) if inv.policy else [])
    groups = registry.groups()
    if topic in groups:
        lines = [f"`{c.usage(prefix)}`\n{_marks(c)}{c.summary}" for c in groups[topic]]
        return Result.ok(f"{prefix} {topic}: {len(lines)} commands", sections=[Section(text="\n".join(lines))],
                         data={"commands": [c.name for c in groups[topic]]})
    names = [c.name for c in registry] + list(groups)
    close = difflib.get_close_matches(topic, names, n=3)
    hint = f" Did you mean {', '.join(f'`{n}`' for n in close)}?" if close else ""
    return Result.error(f"No command `{topic}`.{hint}", data={"suggestions": close})


def _overview(inv: Invocation, prefix: str) -> Result:
    sections = []
    for group, commands in inv.registry.groups().items():
        lines = [f"`{c.usage(prefix)}`  {_marks(c)}{c.summary}" for c in commands]
        sections.append(Section(title=group, text="\n".join(lines)))
    sections.append(
        Section(text=":lock: changes something: shows a preview and waits for Confirm.  "
                     f":busts_in_silhouette: needs a second person.  `{prefix} help <command>` for details.\n"
                     "Any command takes `--incident INC-n`: its result goes to that incident's thread and"
                     " timeline (inside the thread, it is implied).")
    )
    return Result.ok(
        f"{prefix}: {len(inv.registry.commands)} commands",
        data={"commands": [{"name": c.name, "summary": c.summary, "guarded": c.guarded, "role": c.role}
                           for c in inv.registry]},
        sections=sections,
    )


def _one(command: Command, prefix: str, who: list[str]) -> Result:
    fields = []
    for arg in command.args:
        label = arg.usage().strip("[]")
        detail = arg.help or ""
        if arg.default not in (None, [], {}, False):
            detail += f" (default {arg.default})"
        fields.append((label, detail or " "))
    facts = []
    if command.guarded:
        facts.append(":lock: guarded: shows a preview, then waits for Confirm")
    if command.two_person:
        facts.append(":busts_in_silhouette: two-person: a second holder of the role must confirm")
    facts += [f"who may run it: {line}" for line in who] or [
        f"role: `{command.role}`" if command.role else "role: anyone in the workspace"]
    text = "\n".join(part for part in (command.description, "\n".join(facts)) if part)
    sections = [Section(text=f"`{command.usage(prefix)}`\n{text}")]
    if fields:
        sections.append(Section(title="Arguments", fields=tuple(fields)))
    if command.examples:
        sections.append(Section(title="Examples", text="\n".join(f"`{prefix} {e}`" for e in command.examples)))
    return Result.ok(
        f"{prefix} {command.name}: {command.summary}",
        data={
            "name": command.name,
            "usage": command.usage(prefix),
            "guarded": command.guarded,
            "two_person": command.two_person,
            "role": command.role,
            "permissions": who,
            "args": [{"name": a.name, "usage": a.usage(), "help": a.help, "default": a.default} for a in command.args],
        },
        sections=sections,
    )


def _marks(command: Command) -> str:
    return (":lock: " if command.guarded else "") + (":busts_in_silhouette: " if command.two_person else "")


COMMANDS = [
    Command(
        "help",
        "List every command, or show one command's usage",
        args=(Arg("topic", "a command or group, e.g. `dlq requeue`", positional=True, rest=True,
                  metavar="command"),),
        run=show_help,
        visibility="ephemeral",
        examples=("help", "help runbook"),
        standalone=True,  # the declarations alone: `opsbot run help` connects nothing
    ),
]

GROUP = Group("help", commands=COMMANDS)

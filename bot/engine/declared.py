"""What the declarations alone answer, with nothing connected: usage errors, and standalone commands (``help``).

Usage::

    outcome = answer(settings, registry, policy, "help dlq", Actor.local(), Where("cli"), groups=groups)
    if outcome is None:       # the command needs the runtime: Redis, PostgreSQL, Slack, the action log
        outcome = runtime.engine.handle("help dlq", Actor.local(), Where("cli"))

A terminal asks this first, so that ``opsbot run help`` and a mistyped command start in
milliseconds, loading no database driver and no Slack client. The answer is the engine's:
:meth:`bot.engine.dispatch.Engine.handle` parses with :func:`parse_or_usage` too. A
standalone command is answered here only for the terminal's own operator (who holds every
role and is not rate-limited) outside any conversation; otherwise it goes through the engine,
which authorizes it and writes it to the action log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.core.group import Group
from bot.core.invocation import Actor, Invocation, Where
from bot.core.parser import Parsed, UsageError, parse
from bot.core.registry import Registry
from bot.core.result import Result
from bot.engine.calls import call
from bot.engine.outcome import Outcome

__all__ = ["answer", "parse_or_usage", "shown"]


def shown(text: str) -> str:
    """Command text as a usage reply shows it: one line, printable, short."""
    return "".join(ch if ch.isprintable() else " " for ch in text.strip())[:200]


def parse_or_usage(text: str, registry: Registry, prefix: str) -> Parsed | Outcome:
    """The parsed command, or the usage reply to text that does not parse."""
    try:
        return parse(text, registry, prefix)
    except UsageError as exc:
        return Outcome("usage", Result.error(str(exc), command=shown(text)))


def answer(settings: Any, registry: Registry, policy: Any, text: str, actor: Actor, where: Where, *,
           groups: Sequence[Group] = ()) -> Outcome | None:
    """The outcome of ``text`` when the declarations suffice; None when it needs the runtime."""
    parsed = parse_or_usage(text, registry, settings.slack.command)
    if isinstance(parsed, Outcome):
        return parsed
    command = parsed.command
    if not command.standalone or not actor.local_admin or parsed.context or where.thread_ts or where.context:
        return None
    invocation = Invocation(command=command, args=parsed.args, actor=actor, where=where, settings=settings,
                            registry=registry, targets=None, text=parsed.canonical(), policy=policy,
                            groups=tuple(groups))
    result = call(command, lambda: command.run(invocation), settings)
    return Outcome("usage" if result.data.get("error") == "usage" else "result", result, command=command)

"""Commands declared as data.

One :class:`Command` per ``/ops`` subcommand drives parsing, ``help``, the
Slack manifest, authorization and the confirmation flow::

    Command(
        "dlq requeue",
        "Move dead jobs back to the ready queue",
        args=(Arg("queue", positional=True), Arg("limit", type=positive_int)),
        role="oncall",
        guard=Guard(plan=plan_requeue, execute=requeue),
    )

Handlers receive an :class:`~bot.core.invocation.Invocation` and return a
:class:`~bot.core.result.Result` (or a :class:`~bot.core.result.Plan` for guarded
commands). They never talk to Slack.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from bot.core.durations import parse_duration

__all__ = [
    "Arg",
    "Command",
    "Guard",
    "Registry",
    "duration",
    "int_between",
    "lazy",
    "positive_int",
    "choice",
]


def lazy(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported on its first call: a group declares its commands (every process loads them)
    without loading the code that runs them and the libraries that code needs, until one runs."""
    found: list[Callable[..., Any]] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if not found:
            found.append(getattr(importlib.import_module(module), name))
        return found[0](*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__module__ = module
    return call


def positive_int(text: str) -> int:
    return int_between(1, 10**9)(text)


positive_int.__name__ = "N"


def int_between(low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    convert.__name__ = "N"
    return convert


MAX_DURATION = 3650 * 86400.0  # ten years: longer windows overflow PostgreSQL intervals and mean nothing here


def duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds > MAX_DURATION:
        raise ValueError("at most 3650d (ten years)")
    return seconds


duration.__name__ = "DURATION"


def choice(*options: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        lowered = text.lower()
        if lowered not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return lowered

    convert.__name__ = "|".join(options)
    return convert


@dataclass(frozen=True)
class Arg:
    """One argument of a command.

    Args:
        name: Python name; ``--older-than`` and ``older_than=`` both map to ``older_than``.
        help: One line for ``help``.
        type: Converter from text; raises ValueError with a human message.
        default: Value when absent (``[]`` for repeatable options).
        positional: Taken by position instead of ``--name value``.
        required: Absence is a usage error.
        flag: ``--name`` alone means True.
        repeat: ``--name`` may be given several times; the value is a list.
        rest: Positional that takes every remaining word (a title, a note).
        params: Collects ``key=value`` pairs that name no other argument into a dict.
        metavar: Placeholder in usage lines.
    """

    name: str
    help: str = ""
    type: Callable[[str], Any] = str
    default: Any = None
    positional: bool = False
    required: bool = False
    flag: bool = False
    repeat: bool = False
    rest: bool = False
    params: bool = False
    metavar: str | None = None

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def placeholder(self) -> str:
        if self.metavar:
            return self.metavar
        if self.positional or self.params:
            return self.name.replace("_", "-")
        return getattr(self.type, "__name__", "VALUE").upper() if self.type is not str else "TEXT"

    def usage(self) -> str:
        if self.params:
            text = "[key=value ...]"
            return text
        if self.positional:
            text = f"<{self.placeholder}>" + ("..." if self.rest else "")
            return text if self.required else f"[{text}]"
        text = self.option if self.flag else f"{self.option} {self.placeholder}"
        return f"[{text} ...]" if self.repeat else f"[{text}]"


@dataclass(frozen=True)
class Guard:
    """How a guarded command plans and executes.

    Args:
        plan: ``plan(invocation) -> Plan``; read-only, computes what would change.
        execute: ``execute(invocation, plan) -> Result``; called once, after confirmation.
        still_valid: ``still_valid(old_plan, new_plan) -> bool``; by default the fingerprints must match.
        two_person: A second, different user must confirm.
        replan: ``replan(invocation, old_plan) -> Plan | Result``: the fresh plan at Confirm, where planning
            again from scratch costs too much (it may check only what could have changed the old plan, and
            fall back to ``plan``); by default ``plan(invocation)``.
    """

    plan: Callable[..., Any]
    execute: Callable[..., Any]
    still_valid: Callable[[Any, Any], bool] | None = None
    two_person: bool = False
    replan: Callable[[Any, Any], Any] | None = None


@dataclass(frozen=True)
class Command:
    """One ``/ops`` subcommand. ``standalone``: its handler reads only the declarations (settings, registry, policy),
    never state, targets or Slack, so a terminal may answer it without connecting anything (``help``)."""

    name: str
    summary: str
    args: tuple[Arg, ...] = ()
    run: Callable[..., Any] | None = None
    guard: Guard | None = None
    role: str | None = None
    visibility: Literal["channel", "ephemeral"] = "channel"
    description: str = ""
    examples: tuple[str, ...] = ()
    standalone: bool = False

    def __post_init__(self) -> None:
        if (self.run is None) == (self.guard is None):
            raise TypeError(f"command {self.name!r} needs exactly one of run= or guard=")
        if self.standalone and self.guard is not None:
            raise TypeError(f"command {self.name!r}: a guarded command needs the runtime, it cannot be standalone")
        names = [arg.name for arg in self.args]
        if len(names) != len(set(names)):
            raise TypeError(f"command {self.name!r} declares an argument twice")

    @property
    def guarded(self) -> bool:
        return self.guard is not None

    @property
    def two_person(self) -> bool:
        return bool(self.guard and self.guard.two_person)

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(self.name.split())

    @property
    def group(self) -> str:
        return self.words[0]

    def usage(self, prefix: str = "/ops") -> str:
        ordered = [a for a in self.args if a.positional] + [a for a in self.args if not a.positional]
        return " ".join([prefix, self.name, *(arg.usage() for arg in ordered)])

    def arg(self, name: str) -> Arg | None:
        return next((arg for arg in self.args if arg.name == name), None)


@dataclass
class Registry:
    """Every command the bot knows, looked up by its words."""

    commands: dict[tuple[str, ...], Command] = field(default_factory=dict)
    context_option: Arg | None = None  # a global option any command takes (``--name VALUE``), from a group
    forms: dict[str, Any] = field(default_factory=dict)  # name → bot.core.result.Form, from the groups

    def add(self, *commands: Command) -> "Registry":
        for command in commands:
            if command.words in self.commands:
                raise ValueError(f"command {command.name!r} registered twice")
            self.commands[command.words] = command
        return self

    def __iter__(self) -> Iterator[Command]:
        return iter(sorted(self.commands.values(), key=lambda c: c.name))

    def __contains__(self, name: str) -> bool:
        return tuple(name.split()) in self.commands

    def get(self, name: str) -> Command | None:
        return self.commands.get(tuple(name.split()))

    def groups(self) -> dict[str, list[Command]]:
        out: dict[str, list[Command]] = {}
        for command in self:
            out.setdefault(command.group, []).append(command)
        return out

    def match(self, words: Iterable[str]) -> tuple[Command | None, int]:
        """The longest command whose words start ``words``, and how many words it used."""
        words = list(words)
        for length in range(min(len(words), 3), 0, -1):
            command = self.commands.get(tuple(words[:length]))
            if command:
                return command, length
        return None, 0

"""Who runs a command, where, and what a handler receives.

Usage::

    actor = Actor("U123", team="T1")                  # a Slack user
    actor = Actor.local("alice")                      # the terminal operator (local admin)
    inv.args["limit"], inv.targets.redis("main"), inv.settings.queues
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.config.settings import Settings
from bot.core.group import Group, Services
from bot.core.registry import Command, Registry

__all__ = ["Actor", "Where", "Invocation", "CommandError", "BadArgument"]


class CommandError(Exception):
    """A failure the handler explains to the user (target unreachable, a refusal, ...): exit code 1."""


class BadArgument(CommandError):
    """An argument's value names nothing configured (unknown queue, severity, runbook ...): a usage error, exit 2."""


@dataclass(frozen=True)
class Actor:
    user_id: str
    team: str = ""
    local_admin: bool = False
    system: bool = False  # the bot itself (a scheduled check): holds no role, but is not rate-limited like a person

    @classmethod
    def local(cls, name: str | None = None) -> "Actor":
        return cls(f"cli:{name or getpass.getuser()}", team="cli", local_admin=True)

    @property
    def label(self) -> str:
        return f"{self.user_id} (local admin)" if self.local_admin else self.user_id


@dataclass(frozen=True)
class Where:
    """Where a command was run from and where its results go."""

    channel: str = "cli"
    thread_ts: str | None = None
    channel_name: str | None = None
    context: str | None = None  # the conversation it runs in (its id), from the group offering a context

    def is_channel(self, configured: str) -> bool:
        """Whether this is ``configured`` (a channel id like C123 or a name like #incidents)."""
        name = configured.lstrip("#")
        return name in (self.channel, self.channel_name)


@dataclass
class Invocation:
    command: Command
    args: dict[str, Any]
    actor: Actor
    where: Where
    settings: Settings
    registry: Registry
    targets: Any
    text: str = ""
    state: Any = None
    metrics: Any = None
    policy: Any = None  # bot.core.policy.Policy: who may run what, where (help shows it)
    progress: Callable[[Any], None] = lambda result: None
    stopping: Callable[[], bool] = lambda: False
    groups: Sequence[Group] = ()  # the installed groups (`status` asks each for its lines)
    services: Services = field(default_factory=Services)  # objects the groups made: inv.services.get(SomeDesk)
    confirmed_by: str | None = None  # a confirmed guarded action: who confirmed it ...
    pending_id: str | None = None  # ... and which pending action it was

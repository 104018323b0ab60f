"""What the engine answers a transport: the kind of answer, the result to show, and what it was about.

Usage::

    outcome = engine.handle("dlq status", actor, where)
    outcome.kind, outcome.result.status, outcome.exit_code, outcome.ephemeral
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from bot.core.invocation import Where
from bot.core.registry import Command
from bot.core.result import Result
from bot.engine.pending import PendingAction

__all__ = ["Notifier", "Outcome", "OutcomeKind"]

OutcomeKind = Literal["result", "preview", "usage", "denied", "expired", "taken", "refused", "waiting", "cancelled",
                      "unavailable", "interrupted"]


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    result: Result
    pending: PendingAction | None = None
    command: Command | None = None
    in_thread: str | None = None  # the conversation (Where.context) whose thread the result was posted to

    @property
    def exit_code(self) -> int:
        """0 ran, 1 failed (or could not run: the action log is down, the executor died), 2 usage error, 3 denied
        or not confirmed."""
        if self.kind == "result":
            return 1 if self.result.status == "error" else 0
        if self.kind in ("unavailable", "interrupted"):
            return 1
        return 2 if self.kind == "usage" else 3

    @property
    def ephemeral(self) -> bool:
        """Whether only the requester should see it (usage, denials, help, a confirm the log could not take)."""
        if self.kind in ("usage", "denied", "waiting", "unavailable"):
            return True
        return bool(self.command and self.command.visibility == "ephemeral")


class Notifier(Protocol):
    def announce(self, result: Result, where: Where) -> None: ...

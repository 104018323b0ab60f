"""The contract between the framework and a command group: everything a group adds to the bot, in one place.

Usage (a group's ``__init__.py``)::

    GROUP = Group(
        "dlq",
        commands=COMMANDS,
        settings={"queues": (list[QueueSettings], [])},          # app.yaml keys this group owns
        extends={"status": {"dead_letters": (int, 0)}},          # fields it adds to shared sections
        validate=check_queues,                                   # cross-setting checks: raise ValueError("key: why")
        status=queue_lines,                                      # lines for `status`
        checks=queue_checks,                                     # lines for `opsbot check`
        migrations=Path(__file__).with_name("migrations"),       # SQL files for the bot's schema
        gauges={"dlq status": dead_letter_gauges},               # a command's result → samples on /metrics
    )

The framework (``bot/``) loops over what the groups contribute and names none of
them: ``commands/__init__.py`` collects the groups, the runtime assembles settings,
registry, services, hooks, status and checks from them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from bot.core.registry import Arg, Command, Registry

if TYPE_CHECKING:
    from bot.core.invocation import Invocation, Where
    from bot.core.result import Form, Result

__all__ = ["Check", "CheckWarning", "Color", "Context", "Gauge", "Group", "Services", "StatusLine", "Sweep",
           "Webhook", "default_permissions", "registry_of"]

T = TypeVar("T")


class Color(enum.Enum):
    """How a `status` line looks; ``UNKNOWN`` when it could not be read."""

    GREEN = "green"
    AMBER = "amber"
    RED = "red"
    UNKNOWN = "unknown"

    @property
    def emoji(self) -> str:
        return {"green": ":large_green_circle:", "amber": ":large_orange_circle:", "red": ":red_circle:",
                "unknown": ":white_circle:"}[self.value]


@dataclass(frozen=True)
class StatusLine:
    """One line of `status`: what it is about, its colour, the figures and the threshold that made the colour."""

    color: Color
    what: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def unknown(cls, what: str, exc: BaseException) -> StatusLine:
        return cls(Color.UNKNOWN, what, f"unknown ({(str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]})")


@dataclass(frozen=True)
class Check:
    """One line of `opsbot check`: ``run()`` returns what is fine, raises CheckWarning or any error otherwise."""

    target: str
    run: Callable[[], str]


class CheckWarning(Exception):
    """Raised by a check that answered, but with something worth a look (a warning, not a failure)."""


class Context(Protocol):
    """A conversation commands can run in (an incident's thread), contributed by one group.

    ``option`` is the global option that names it (``--incident INC-42``); ``name`` keys it
    in the action log. The engine calls ``resolve`` before a command runs (its value lands
    in ``Where.context``), and ``post`` for what happened in it: a result, a guarded request
    or outcome. ``post`` returns what is left to reply, and whether it went to the conversation.
    """

    name: str
    option: Arg

    def resolve(self, wanted: str | None, where: Where) -> Where: ...

    def post(self, result: Result, where: Where) -> tuple[Result, bool]: ...


@dataclass(frozen=True)
class Sweep:
    """Periodic work every worker does: ``run(runtime)`` at most every ``every(settings)`` seconds; it returns how
    much it did (reminders sent), and must be safe when replicas all sweep (claim each piece of work once)."""

    what: str
    every: Callable[[Any], float]
    run: Callable[[Any], int]


@dataclass(frozen=True)
class Webhook:
    """An HTTP intake a group offers on ``opsbot serve``: ``POST path`` with a JSON object, from a monitoring system.

    The framework authenticates the request against ``credentials(settings)`` (a bearer token, and/or a
    ``(user, password)`` pair for basic auth; with neither, every request is refused), refuses bodies over
    ``max_bytes(settings)`` and anything that is not a JSON object (or that ``check`` finds malformed: it returns
    why), queues the body durably and answers at once. A worker later calls ``handle(runtime, body)``; a body
    handed back by a worker that died is handled again, so ``handle`` must be safe to repeat.
    """

    path: str
    credentials: Callable[[Any], tuple[str | None, tuple[str, str] | None]]
    handle: Callable[[Any, dict], None]
    max_bytes: Callable[[Any], int] = lambda settings: 1_000_000
    check: Callable[[dict], str | None] = lambda body: None


@dataclass(frozen=True)
class Gauge:
    """One gauge sample a command's result gives Prometheus: ``Gauge("opsbot_dead_letters", "...", {"queue": "jobs"}, 3)``.

    The framework keeps the latest value of each (name, labels) in the bot's Redis, so every replica's
    ``/metrics`` shows it, whichever process ran the command.
    """

    name: str
    help: str
    labels: dict[str, str]
    value: float


class Services:
    """Objects the groups made for their handlers, found by type: ``inv.services.get(IncidentDesk)``."""

    def __init__(self, objects: Sequence[object] = ()):
        self._by_type = {type(obj): obj for obj in objects}

    def get(self, kind: type[T]) -> T:
        found = self._by_type.get(kind)
        if found is None:
            raise LookupError(f"no {kind.__name__} here (its group is not loaded, or it needs a state database)")
        return found  # type: ignore[return-value]

    def find(self, kind: type[T]) -> T | None:
        return self._by_type.get(kind)  # type: ignore[return-value]


@dataclass(frozen=True)
class Group:
    """What one command group adds to the bot.

    Args:
        name: the group's word (``dlq``); its commands start with it.
        commands: the commands it declares.
        settings: app.yaml keys it owns: key → (type, default).
        extends: fields it adds to shared sections (``databases``, ``services``, ``status``): section → field →
            (type, default).
        validate: checks across settings once they are read; raises ValueError("key.path: why").
        services: builds the objects its handlers use, from the runtime (``inv.services.get(T)``).
        context: builds a conversation commands can run in, from the runtime (the incident thread).
        context_option: the global option naming that conversation (``--incident``); any command takes it.
        sweep: periodic work every worker does (reminders).
        status: lines for `status`, from an invocation.
        checks: lines for `opsbot check`, from the runtime.
        permissions: default rules that depend on the configuration (a paging severity needs a role).
        migrations: a folder of SQL files for the bot's own schema, applied in name order with every other's.
        forms: one-field forms its buttons open (a note on an incident); submitting one runs a command.
        webhooks: HTTP intakes on ``opsbot serve`` (``POST /alerts``), queued and handled by the workers.
        gauges: command name → a function of its result giving :class:`Gauge` samples for ``/metrics``; called
            after every run of that command that did not end in ``error`` (interactive or scheduled).
    """

    name: str
    commands: tuple[Command, ...]
    settings: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    extends: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)
    validate: Callable[[Any], None] | None = None
    services: Callable[[Any], list[object]] | None = None
    context: Callable[[Any], Context] | None = None
    context_option: Arg | None = None
    sweep: Sweep | None = None
    status: Callable[[Invocation], list[StatusLine]] | None = None
    checks: Callable[[Any], list[Check]] | None = None
    permissions: Callable[[Any], dict[str, str]] | None = None
    migrations: Path | None = None
    forms: tuple[Form, ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    gauges: dict[str, Callable[[Result], list[Gauge]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "commands", tuple(self.commands))


def registry_of(groups: Sequence[Group]) -> Registry:
    """Every command of ``groups``, and the global option of the conversation one of them offers."""
    registry = Registry()
    for group in groups:
        registry.add(*group.commands)
    options = [group.context_option for group in groups if group.context_option is not None]
    if len(options) > 1:
        raise ValueError(f"two groups offer a context: --{options[0].name} and --{options[1].name}")
    registry.context_option = options[0] if options else None
    registry.forms = {form.name: form for group in groups for form in group.forms}
    return registry


def default_permissions(settings: Any, groups: Sequence[Group]) -> dict[str, str]:
    """Rules that depend on the configuration (a paging severity needs a role), from the groups that know them."""
    rules: dict[str, str] = {}
    for group in groups:
        if group.permissions is not None:
            rules.update(group.permissions(settings))
    return rules

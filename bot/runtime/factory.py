"""Build everything the bot needs from settings: one factory, no module-level state.

Usage::

    runtime = Runtime.build(settings, slack=WebClient(token=..., base_url=...))
    runtime.engine.handle("help", Actor.local(), Where())
    runtime.close()
"""

from __future__ import annotations

from dataclasses import dataclass

from slack_sdk import WebClient

from bot.config.settings import ConfigError, Settings
from bot.core.policy import Policy, PolicyError
from bot.engine.dispatch import Engine
from bot.runtime.metrics import Metrics
from bot.store.outbox import Outbox
from bot.core.ratelimit import RateLimiter
from bot.core.redact import Redactor
from bot.core.registry import Registry
from bot.core.roles import Roles
from bot.slack.client import webhook
from bot.slack.notify import SlackNotifier
from bot.store.state import State
from bot.runtime.targets import Targets

__all__ = ["Runtime", "policy_for"]


@dataclass
class Runtime:
    settings: Settings
    registry: Registry
    state: State
    targets: Targets
    roles: Roles
    engine: Engine
    redactor: Redactor
    slack: WebClient | None
    metrics: Metrics
    outbox: Outbox

    @classmethod
    def build(cls, settings: Settings, *, slack: WebClient | None = None, registry: Registry | None = None,
              metrics: Metrics | None = None) -> "Runtime":
        from commands import build_registry

        registry = registry or build_registry()
        metrics = metrics or Metrics()
        state = State(settings, metrics=metrics)
        targets = Targets(settings)
        redactor = Redactor(settings.secret_values())
        members_of = None
        if slack is not None:
            members_of = lambda group: slack.usergroups_users_list(usergroup=group)["users"]  # noqa: E731
        roles = Roles(
            settings.roles,
            members_of=members_of,
            cache=state.redis,
            ttl=settings.guard.group_cache_ttl,
            prefix=settings.state.prefix,
        )
        outbox = Outbox(state, settings.state.prefix, redactor, slack,
                        lambda url, message: webhook(url, metrics).send_dict(message))
        notifier = None
        if slack is not None:
            notifier = SlackNotifier(slack, settings.slack.incident_channel, redactor, outbox, metrics)
        limiter = RateLimiter(state.redis, settings.state.prefix, settings.limits)
        engine = Engine(settings, registry, state, targets, roles, notifier, redactor, metrics=metrics,
                        limiter=limiter, policy=policy_for(settings, registry))
        _wire_incidents(engine, settings, state, slack, redactor, outbox, metrics)
        return cls(settings, registry, state, targets, roles, engine, redactor, slack, metrics, outbox)

    @classmethod
    def connect(cls, settings: Settings, *, timeout: int = 10, registry: Registry | None = None) -> "Runtime":
        """Build with a Slack client for ``settings`` (when a bot token is set), counted in the same metrics."""
        from bot.slack.client import web_client

        metrics = Metrics()
        return cls.build(settings, slack=web_client(settings, metrics, timeout), registry=registry, metrics=metrics)

    def close(self) -> None:
        self.targets.close()
        self.state.close()


def _wire_incidents(engine: Engine, settings: Settings, state: State, slack: WebClient | None, redactor: Redactor,
                    outbox: Outbox, metrics: Metrics) -> None:
    """Give the engine the incident desk: ``--incident`` and thread context, and the ``incident`` commands."""
    from bot.slack.board import SlackBoard
    from commands.incident.context import IncidentContext
    from commands.incident.desk import IncidentDesk
    from commands.incident.store import IncidentStore

    board = None
    if slack is not None:
        board = SlackBoard(slack, settings.incidents.channel or settings.slack.incident_channel, redactor, outbox,
                           metrics)
    desk = IncidentDesk(settings, IncidentStore(state, settings.state.db_schema, redactor), board,
                        command=settings.slack.command)
    engine.extras["incidents"] = desk
    engine.context = IncidentContext(desk)


def policy_for(settings: Settings, registry: Registry) -> Policy:
    """The permissions and channel rules of app.yaml over the commands' defaults; ConfigError if they name nothing."""
    from commands import default_permissions

    try:
        return Policy(registry, permissions=settings.permissions, channels=settings.channels,
                      defaults=default_permissions(settings), roles=settings.roles)
    except PolicyError as exc:
        raise ConfigError(f"app.yaml: permissions/channels: {exc}") from None

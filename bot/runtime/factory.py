"""Build everything the bot needs from settings and the installed groups: one factory, no module-level state.

Usage::

    runtime = Runtime.build(settings, slack=WebClient(token=..., base_url=...))
    runtime.engine.handle("help", Actor.local(), Where())
    runtime.services.get(SomeGroupService)         # what a group made for its handlers
    runtime.close()

The groups (:class:`bot.core.group.Group`) contribute commands, services, a
conversation commands run in, sweeps and checks; this wires them without naming any.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot.config.settings import ConfigError, Settings, installed_groups
from bot.core.group import Group, Services, default_permissions, registry_of
from bot.core.policy import Policy, PolicyError
from bot.core.redact import Redactor
from bot.core.registry import Registry

if TYPE_CHECKING:  # imported by build(): a process that only reads the declarations (help) loads none of them
    from slack_sdk import WebClient

    from bot.core.roles import Roles
    from bot.engine.dispatch import Engine
    from bot.runtime.gauges import GaugeBoard
    from bot.runtime.metrics import Metrics
    from bot.runtime.targets import Targets
    from bot.slack.board import SlackBoard
    from bot.store.outbox import Outbox
    from bot.store.state import State

__all__ = ["Runtime", "policy_for"]


@dataclass
class Runtime:
    settings: Settings
    registry: Registry
    state: State
    targets: Targets
    roles: Roles
    redactor: Redactor
    slack: WebClient | None
    metrics: Metrics
    outbox: Outbox
    groups: tuple[Group, ...] = ()
    services: Services = field(default_factory=Services)
    engine: Engine = None  # type: ignore[assignment]  # set by build, once the groups' services exist
    gauges: GaugeBoard = None  # type: ignore[assignment]  # the groups' gauges, kept in Redis for /metrics

    @classmethod
    def build(cls, settings: Settings, *, slack: WebClient | None = None, registry: Registry | None = None,
              metrics: Metrics | None = None, groups: Sequence[Group] | None = None) -> "Runtime":
        from bot.core.ratelimit import RateLimiter
        from bot.core.roles import Roles
        from bot.engine.dispatch import Engine
        from bot.runtime.gauges import GaugeBoard
        from bot.runtime.metrics import Metrics
        from bot.runtime.targets import Targets
        from bot.store.outbox import Outbox
        from bot.store.state import State

        groups = tuple(installed_groups() if groups is None else groups)
        registry = registry or registry_of(groups)
        metrics = metrics or Metrics()
        state = State(settings, metrics=metrics)
        redactor = Redactor(settings.secret_values())
        members_of = None
        if slack is not None:
            members_of = lambda group: slack.usergroups_users_list(usergroup=group)["users"]  # noqa: E731
        roles = Roles(settings.roles, members_of=members_of, cache=state.redis, ttl=settings.guard.group_cache_ttl,
                      prefix=settings.state.prefix)
        outbox = Outbox(state, settings.state.prefix, redactor, slack,
                        lambda url, message: _webhook(url, metrics).send_dict(message))
        runtime = cls(settings, registry, state, Targets(settings), roles, redactor, slack, metrics, outbox, groups)
        runtime.gauges = GaugeBoard(state.redis, settings.state.prefix, groups)
        runtime.services = Services([obj for group in groups if group.services for obj in group.services(runtime)])
        contexts = [group.context(runtime) for group in groups if group.context is not None]
        notifier = None
        if slack is not None:
            from bot.slack.notify import SlackNotifier

            notifier = SlackNotifier(slack, settings.slack.incident_channel, redactor, outbox, metrics)
        runtime.engine = Engine(settings, registry, state, runtime.targets, roles, notifier, redactor, metrics=metrics,
                                limiter=RateLimiter(state.redis, settings.state.prefix, settings.limits),
                                policy=policy_for(settings, registry, groups), groups=groups,
                                services=runtime.services, context=contexts[0] if contexts else None,
                                gauges=runtime.gauges)
        return runtime

    @classmethod
    def connect(cls, settings: Settings, *, timeout: int = 10, registry: Registry | None = None) -> "Runtime":
        """Build with a Slack client for ``settings`` (when a bot token is set), counted in the same metrics."""
        from bot.runtime.metrics import Metrics

        metrics = Metrics()
        slack = None
        if settings.slack.bot_token and settings.slack.bot_token.get_secret_value():  # else slack_sdk is not loaded
            from bot.slack.client import web_client

            slack = web_client(settings, metrics, timeout)
        return cls.build(settings, slack=slack, registry=registry, metrics=metrics)

    def board(self, channel: str, *, setting: str) -> SlackBoard | None:
        """Root messages and their threads in ``channel`` (named by app.yaml's ``setting``); None without Slack."""
        if self.slack is None:
            return None
        from bot.slack.board import SlackBoard

        return SlackBoard(self.slack, channel, self.redactor, self.outbox, self.metrics, setting=setting)

    def close(self, timeout: float = 5.0) -> None:
        self.targets.close()
        self.state.close(timeout)


def _webhook(url: str, metrics: Metrics):
    from bot.slack.client import webhook

    return webhook(url, metrics)


def policy_for(settings: Settings, registry: Registry, groups: Sequence[Group] | None = None) -> Policy:
    """The permissions and channel rules of app.yaml over the groups' defaults; ConfigError if they name nothing."""
    groups = installed_groups() if groups is None else groups
    try:
        return Policy(registry, permissions=settings.permissions, channels=settings.channels,
                      defaults=default_permissions(settings, groups), roles=settings.roles)
    except PolicyError as exc:
        raise ConfigError(f"app.yaml: permissions/channels: {exc}") from None

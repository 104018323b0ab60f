"""Build everything the bot needs from settings: one factory, no module-level state.

Usage::

    runtime = Runtime.build(settings, slack=WebClient(token=..., base_url=...))
    runtime.engine.handle("help", Actor.local(), Where())
    runtime.close()
"""

from __future__ import annotations

from dataclasses import dataclass

from slack_sdk import WebClient

from bot.config import Settings
from bot.engine import Engine
from bot.redact import Redactor
from bot.registry import Registry
from bot.roles import Roles
from bot.slack_notify import SlackNotifier
from bot.state import State
from bot.targets import Targets

__all__ = ["Runtime", "slack_client"]


def slack_client(settings: Settings, timeout: int = 10) -> WebClient | None:
    """A Web API client for ``slack.api_url`` (``$SLACK_API_URL``), or None without a bot token."""
    token = settings.slack.bot_token.get_secret_value() if settings.slack.bot_token else None
    if not token:
        return None
    base_url = settings.slack.api_url if settings.slack.api_url.endswith("/") else settings.slack.api_url + "/"
    return WebClient(token=token, base_url=base_url, timeout=timeout)


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

    @classmethod
    def build(cls, settings: Settings, *, slack: WebClient | None = None, registry: Registry | None = None) -> "Runtime":
        from commands import build_registry

        registry = registry or build_registry()
        state = State(settings)
        targets = Targets(settings)
        redactor = Redactor(
            secret.get_secret_value()
            for secret in (settings.slack.bot_token, settings.slack.signing_secret, settings.slack.app_token)
            if secret is not None
        )
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
        notifier = SlackNotifier(slack, settings.slack.incident_channel, redactor) if slack is not None else None
        engine = Engine(settings, registry, state, targets, roles, notifier, redactor)
        return cls(settings, registry, state, targets, roles, engine, redactor, slack)

    def close(self) -> None:
        self.targets.close()
        self.state.close()

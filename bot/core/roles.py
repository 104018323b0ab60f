"""Who holds which role: Slack user ids and user-group ids from app.yaml.

Usage::

    roles = Roles(settings.roles, members_of=slack_group_members, cache=redis_client, ttl=300)
    roles.holds(actor, "oncall")      # True / False
    roles.check(actor, "oncall")      # raises Denied with a reason

A role may include other roles (``admin`` includes ``oncall``). User-group
membership is read through the Web API (``usergroups.users.list``) and cached
in Redis, so every replica shares one cache.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from bot.config.settings import RoleSettings
from bot.core.invocation import Actor
from bot.core.markup import code, md, mention, plain

if TYPE_CHECKING:
    import redis

__all__ = ["Roles", "Denied", "GroupLookupError"]


class Denied(Exception):
    """The actor may not do this; ``text`` (markup: it may mention the actor) says why."""

    def __init__(self, text: str):
        super().__init__(plain(text))
        self.text = text


class GroupLookupError(Exception):
    pass


class Roles:
    def __init__(
        self,
        roles: Mapping[str, RoleSettings],
        *,
        members_of: Callable[[str], list[str]] | None = None,
        cache: redis.Redis | None = None,
        ttl: float = 300.0,
        prefix: str = "opsbot:",
    ):
        self.roles = dict(roles)
        self.members_of = members_of
        self.cache = cache
        self.ttl = max(int(ttl), 1)
        self.prefix = prefix

    def granting(self, role: str) -> set[str]:
        """Every role whose holders also hold ``role`` (itself, and those that include it)."""
        granting, changed = {role}, True
        while changed:
            changed = False
            for name, settings in self.roles.items():
                if name not in granting and granting & set(settings.includes):
                    granting.add(name)
                    changed = True
        return granting

    def holds(self, actor: Actor, role: str | None) -> bool:
        if role is None or actor.local_admin:
            return True
        for name in self.granting(role):
            settings = self.roles.get(name)
            if settings is None:
                continue
            if actor.user_id in settings.users:
                return True
            for group in settings.groups:
                if actor.user_id in self._group(group):
                    return True
        return False

    def check(self, actor: Actor, role: str | None, doing: str) -> None:
        try:
            allowed = self.holds(actor, role)
        except GroupLookupError as exc:
            raise Denied(md("Cannot check your {} role right now ({}); {} was not allowed.", code(role), str(exc),
                            doing)) from None
        if not allowed:
            raise Denied(md("{} needs the {} role, which {} does not have.", doing, code(role), mention(actor.user_id)))

    def _group(self, group: str) -> set[str]:
        key = f"{self.prefix}group:{group}"
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return set(json.loads(cached))
        if self.members_of is None:
            raise GroupLookupError(f"user group {group} cannot be read without a Slack connection")
        try:
            members = self.members_of(group)
        except Exception as exc:  # any Web API or network failure denies, it never grants
            raise GroupLookupError(f"reading user group {group} failed: {exc}") from exc
        if self.cache is not None:
            self.cache.set(key, json.dumps(sorted(members)), ex=self.ttl)
        return set(members)

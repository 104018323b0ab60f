"""Every ``/ops`` command group: one package or module each, each exporting a ``GROUP``.

Usage::

    from commands import GROUPS, build_registry
    registry = build_registry()            # every command of every group
    registry.get("help").summary

A group (:class:`bot.core.group.Group`) declares its commands, the settings it owns,
and what it adds to the bot: services, a conversation commands run in, periodic
sweeps, `status` lines, `opsbot check` lines, default permissions, migrations. The
framework loops over ``GROUPS``; adding a group is adding it here.
"""

from __future__ import annotations

from bot.core.group import Group
from bot.core.registry import Registry
from commands import audit, dlq, drift, email, health, incident, log, rollback, runbook
from commands import help as help_commands

__all__ = ["GROUPS", "build_registry", "default_permissions"]

GROUPS: list[Group] = [help_commands.GROUP, runbook.GROUP, dlq.GROUP, email.GROUP, health.GROUP, audit.GROUP,
                       log.GROUP, drift.GROUP, rollback.GROUP, incident.GROUP]


def build_registry(groups: list[Group] | None = None) -> Registry:
    registry = Registry()
    for group in GROUPS if groups is None else groups:
        registry.add(*group.commands)
    return registry


def default_permissions(settings, groups: list[Group] | None = None) -> dict[str, str]:
    """Rules that depend on the configuration (a paging severity needs a role), from the groups that know them."""
    rules: dict[str, str] = {}
    for group in GROUPS if groups is None else groups:
        if group.permissions is not None:
            rules.update(group.permissions(settings))
    return rules

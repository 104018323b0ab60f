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

from bot.core.group import Group, registry_of
from bot.core.registry import Registry
from commands import alerts, audit, dlq, drift, email, health, incident, log, rollback, runbook, schedule
from commands import help as help_commands

__all__ = ["GROUPS", "build_registry"]

GROUPS: list[Group] = [help_commands.GROUP, runbook.GROUP, dlq.GROUP, email.GROUP, health.GROUP, audit.GROUP,
                       log.GROUP, drift.GROUP, rollback.GROUP, incident.GROUP, alerts.GROUP, schedule.GROUP]


def build_registry(groups: list[Group] | None = None) -> Registry:
    return registry_of(GROUPS if groups is None else groups)

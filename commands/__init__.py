"""Every ``/ops`` command, one module per group.

Usage::

    registry = build_registry()
    registry.get("help").summary
"""

from __future__ import annotations

from bot.registry import Registry

__all__ = ["build_registry"]


def build_registry() -> Registry:
    from commands import audit, dlq, drift, email, health, incident, rollback, runbook
    from commands import help as help_commands

    registry = Registry()
    for module in (help_commands, runbook, dlq, email, health, audit, drift, rollback, incident):
        registry.add(*module.COMMANDS)
    return registry

"""Every ``/ops`` command, one module per group.

Usage::

    registry = build_registry()
    registry.get("help").summary
"""

from __future__ import annotations

from bot.registry import Registry

__all__ = ["build_registry"]


def build_registry() -> Registry:
    from commands import dlq, email, health
    from commands import help as help_commands
    from commands import runbook

    registry = Registry()
    for module in (help_commands, runbook, dlq, email, health):
        registry.add(*module.COMMANDS)
    return registry

"""``drift`` results as gauges on ``/metrics``: migrations per database and state.

Usage::

    GROUP = Group("drift", ..., gauges={"drift": migration_gauges})
"""

from __future__ import annotations

from bot.core.group import Gauge
from bot.core.result import Result

__all__ = ["migration_gauges"]

STATES = ("pending", "failed", "edited", "unknown", "applied")


def migration_gauges(result: Result) -> list[Gauge]:
    """``opsbot_migrations{database, state}`` for every state, zeros included (so an alert can clear)."""
    return [Gauge("opsbot_migrations", "Migrations per database by state (pending, failed, edited after applying,"
                  " unknown to the code, applied), as of the last `drift`",
                  {"database": report["database"], "state": state}, len(report.get(state) or []))
            for report in result.data.get("databases", []) for state in STATES]

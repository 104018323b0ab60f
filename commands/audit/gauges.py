"""``audit verify`` results as gauges on ``/metrics``: whether each tenant's chain verified.

Usage::

    GROUP = Group("audit", ..., gauges={"audit verify": chain_gauges})
"""

from __future__ import annotations

from bot.core.group import Gauge
from bot.core.result import Result

__all__ = ["chain_gauges"]


def chain_gauges(result: Result) -> list[Gauge]:
    """``opsbot_audit_chain_valid{tenant}`` 1 or 0, and the rows the chain had, per verified tenant."""
    samples = []
    for report in result.data.get("tenants", []):
        labels = {"tenant": str(report["tenant"])}
        samples.append(Gauge("opsbot_audit_chain_valid", "1 when the tenant's AuditLog hash chain verified at the last"
                             " `audit verify`, 0 when it did not", labels, 1.0 if report["valid"] else 0.0))
        samples.append(Gauge("opsbot_audit_chain_rows", "Rows in the tenant's AuditLog chain at the last"
                             " `audit verify`", labels, report["rows"]))
    return samples

"""``dlq status`` results as gauges on ``/metrics``: dead letters, ready jobs and the oldest dead letter's age per queue.

Usage::

    GROUP = Group("dlq", ..., gauges={"dlq status": dead_letter_gauges})
"""

from __future__ import annotations

from bot.core.group import Gauge
from bot.core.result import Result

__all__ = ["dead_letter_gauges"]


def dead_letter_gauges(result: Result) -> list[Gauge]:
    """One sample per readable queue; an unreachable queue gives none (its last value stands, Prometheus sees age)."""
    samples = []
    for item in result.data.get("queues", []):
        if "error" in item:
            continue
        labels = {"queue": item["queue"]}
        samples.append(Gauge("opsbot_dead_letters", "Dead letters in the queue (set aside by a requeue included),"
                             " as of the last `dlq status`", labels, item["dead"] + item.get("held_by_requeue", 0)))
        samples.append(Gauge("opsbot_ready_jobs", "Jobs waiting in the queue's ready list, as of the last"
                             " `dlq status`", labels, item["ready"]))
        age = item.get("oldest_age_seconds")
        samples.append(Gauge("opsbot_dead_letter_oldest_age_seconds", "Age of the oldest dead letter (0: none), as"
                             " of the last `dlq status`", labels, max(age, 0.0) if age is not None else 0.0))
    return samples

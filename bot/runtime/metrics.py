"""The bot's own Prometheus metrics.

Usage::

    metrics = Metrics()
    metrics.commands.labels(command="dlq status", outcome="ok").inc()
    body, content_type = metrics.exposition(extra=[QueueDepthCollector(...)])

Each :class:`Metrics` has its own registry (no process-wide state), so tests and
several runtimes in one process do not collide. ``opsbot serve`` runs worker
processes; it sets ``PROMETHEUS_MULTIPROC_DIR`` for itself and them before anything
is counted, and the exposition then merges every process (prometheus-client's
multiprocess mode).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, PlatformCollector,
                               ProcessCollector, generate_latest)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["Metrics", "GaugeCollector", "enable_multiprocess"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


def enable_multiprocess(directory: str) -> None:
    """Count in files under ``directory``, shared with child processes (call before any Metrics exists)."""
    from prometheus_client import values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.get_value_class()  # chosen at import time; choose again now that it is set


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.commands = Counter("opsbot_commands", "Commands run, by name and outcome", ["command", "outcome"],
                                registry=r)
        self.command_seconds = Histogram("opsbot_command_duration_seconds", "Time a command took to run",
                                         ["command"], buckets=DURATION_BUCKETS, registry=r)
        self.ack_seconds = Histogram("opsbot_ack_duration_seconds", "Time to acknowledge a Slack request",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.confirmations = Counter("opsbot_confirmations", "Responses to guarded previews", ["result"],
                                     registry=r)
        self.denials = Counter("opsbot_denials", "Refused attempts, by reason", ["reason"], registry=r)
        self.requeue_moved = Counter("opsbot_requeue_moved", "Dead letters moved back to ready", ["queue"],
                                     registry=r)
        self.slack_errors = Counter("opsbot_slack_api_errors", "Failed Slack API calls, by kind", ["kind"],
                                    registry=r)
        self.slack_rate_limit_waits = Counter("opsbot_slack_rate_limit_waits",
                                              "Waits on Slack's Retry-After", registry=r)
        self.backend_errors = Counter("opsbot_backend_errors", "Redis/PostgreSQL errors", ["backend"], registry=r)
        self.action_log_broken = Counter("opsbot_action_log_broken", "Breaks found in the action log's chain"
                                         " (the bot continues in a new signed segment), by kind", ["kind"], registry=r)
        self.action_log_kept = Counter("opsbot_action_log_kept", "Action-log entries PostgreSQL could not take:"
                                       " kept in Redis, or (Redis down too) written to the log stream",
                                       ["outcome"], registry=r)
        self.webhooks = Counter("opsbot_webhooks", "Webhook bodies (POST /alerts), by path and HTTP answer",
                                ["path", "status"], registry=r)

    def exposition(self, extra: Iterable[object] = ()) -> tuple[bytes, str]:
        """The text exposition of every metric (of every process in multiprocess mode), with the standard
        process and platform collectors of the process answering."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        else:
            registry = CollectorRegistry()
            registry.register(_Registered(self.registry))
        ProcessCollector(registry=registry)  # this process: CPU, memory, open files, start time
        PlatformCollector(registry=registry)  # the Python version
        for collector in extra:
            registry.register(collector)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class _Registered:
    """Expose another registry's metrics through a new registry (so extra collectors can be added)."""

    def __init__(self, source: CollectorRegistry):
        self.source = source

    def collect(self):
        return self.source.collect()


class GaugeCollector:
    """A gauge read at scrape time (work-queue depth, outbox size): correct across processes."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]):
        self.name, self.documentation, self.read = name, documentation, read

    def collect(self):
        gauge = GaugeMetricFamily(self.name, self.documentation)
        try:
            gauge.add_metric([], float(self.read()))
        except Exception:  # the source is down: say nothing rather than a wrong number
            return []
        return [gauge]

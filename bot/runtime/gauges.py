"""Gauges the command groups derive from their results, kept in the bot's Redis and exposed on ``/metrics``.

Usage::

    board = GaugeBoard(redis, "opsbot:", groups)
    board.observe("dlq status", result)      # the group's samples for that result, stored (never raises)
    board.put([Gauge("opsbot_schedule_last_success_timestamp_seconds", "...", {"schedule": "dlq"}, 1.7e9)])
    registry.register(board.collector())     # read at scrape time

A command may run in any process of any replica (a worker, a scheduled run, the CLI);
Prometheus may scrape any replica. So the latest value of each sample lives in one Redis
hash and every ``/metrics`` reads it at scrape time: all replicas show the same value,
and a restart forgets nothing. A sample is (name, labels) → value; a newer one replaces it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence

from prometheus_client.core import GaugeMetricFamily

from bot.core.group import Gauge, Group
from bot.core.result import Result

__all__ = ["GaugeBoard"]

log = logging.getLogger("opsbot.metrics")

MAX_SAMPLES = 10_000  # a runaway label set must not make every scrape huge


class GaugeBoard:
    def __init__(self, redis, prefix: str, groups: Sequence[Group] = (), clock=time.time):
        self.redis = redis
        self.key = f"{prefix}gauges"
        self.clock = clock
        self.sources = {name: source for group in groups for name, source in group.gauges.items()}

    def observe(self, command: str, result: Result) -> int:
        """Store the samples the command's group derives from ``result``; errors are logged, never raised."""
        source = self.sources.get(command)
        if source is None or result.status == "error":
            return 0
        try:
            samples = list(source(result))
        except Exception as exc:  # a gauge must never break the command that fed it
            log.error("gauges of %s failed: %s", command, exc)
            return 0
        return self.put(samples)

    def put(self, samples: Iterable[Gauge]) -> int:
        fields = {}
        for sample in samples:
            if not isinstance(sample.value, (int, float)) or not math.isfinite(sample.value):
                continue  # unknown (a backend that cannot say how many are ready) is no sample, not a zero
            field = json.dumps([sample.name, sorted((str(k), str(v)) for k, v in sample.labels.items())])
            fields[field] = json.dumps({"value": float(sample.value), "help": sample.help, "at": self.clock()})
        if not fields:
            return 0
        try:
            if self.redis.hlen(self.key) + len(fields) > MAX_SAMPLES:
                log.error("gauge store full (%d samples): %d new samples dropped", MAX_SAMPLES, len(fields))
                return 0
            self.redis.hset(self.key, mapping=fields)
        except Exception as exc:
            log.error("could not store gauges: %s", exc)
            return 0
        return len(fields)

    def samples(self) -> list[tuple[str, dict[str, str], float, str]]:
        """(name, labels, value, help) of every stored sample."""
        found = []
        for field, raw in self.redis.hgetall(self.key).items():
            try:
                name, labels = json.loads(field)
                value = json.loads(raw)
                found.append((name, dict(labels), float(value["value"]), str(value.get("help", ""))))
            except (ValueError, KeyError, TypeError):
                continue
        return sorted(found, key=lambda s: (s[0], sorted(s[1].items())))

    def collector(self) -> "_Collector":
        return _Collector(self)


class _Collector:
    """Prometheus collector over the board: one family per name, read at scrape time."""

    def __init__(self, board: GaugeBoard):
        self.board = board

    def collect(self):
        try:
            samples = self.board.samples()
        except Exception as exc:  # Redis down: say nothing rather than a wrong number
            log.warning("gauges unavailable: %s", exc)
            return []
        families: dict[str, GaugeMetricFamily] = {}
        keys: dict[str, list[str]] = {}
        for name, labels, value, help_text in samples:
            if name not in families:
                keys[name] = sorted(labels)
                families[name] = GaugeMetricFamily(name, help_text or name, labels=keys[name])
            if sorted(labels) != keys[name]:
                continue  # one family has one label set; a stray sample with others is skipped
            families[name].add_metric([labels[k] for k in keys[name]], value)
        return list(families.values())

"""After a rollback: follow the new deploy until it is live, then watch the service for a window.

Usage::

    deploy = follow_deploy(provider, started.id, timeout=600, interval=15, progress=show)
    verdict = watch(name, service, thresholds, window=300, interval=15, progress=show)
    verdict.ok, verdict.evidence

After a rollback: /ready passes and the worker queues drain normally. The
verdict passes when the last third of the readiness checks pass, the error rate
over the window (from counter deltas, so the old process's history does not
count; a counter reset is handled) is under the threshold, and the queue depth
did not grow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.config.settings import ServiceSettings, StatusThresholds
from bot.core.invocation import CommandError
from bot.core.probes import check_services, scrape_all
from commands.rollback.providers import Deploy, DeployProvider

__all__ = ["follow_deploy", "watch", "Sample", "Verdict"]


@dataclass(frozen=True)
class Sample:
    at: float
    ready: bool
    detail: str
    requests: float | None = None
    errors: float | None = None
    queue_depth: float | None = None


@dataclass
class Verdict:
    ok: bool
    evidence: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    stopped: bool = False


def follow_deploy(provider: DeployProvider, deploy_id: str, *, timeout: float, interval: float,
                  progress: Callable[[str], None], sleep: Callable[[float], None] = time.sleep,
                  stopping: Callable[[], bool] = lambda: False) -> Deploy:
    deadline = time.monotonic() + timeout
    while True:
        deploy = provider.deploy(deploy_id)
        if deploy.state in ("live", "failed") or stopping():
            return deploy
        if time.monotonic() >= deadline:
            raise CommandError(f"deploy {deploy_id} was still {deploy.state} after {timeout:g}s: check the provider")
        progress(f"deploy {deploy_id}: {deploy.state}")
        sleep(interval)


def _sample(name: str, service: ServiceSettings, started: float) -> Sample:
    checks = check_services({name: service}, name)
    metrics = scrape_all({name: service}, name).get(name)
    ready = all(c.ok for c in checks) if checks else True
    detail = "; ".join(f"{c.kind} {c.detail or 'ok'}" for c in checks) or "no checks configured"
    values = metrics.values if metrics is not None and metrics.ok else {}
    return Sample(time.monotonic() - started, ready, detail, values.get("requests"), values.get("errors"),
                  values.get("queue_depth"))


def _window_error_rate(samples: list[Sample]) -> float | None:
    with_counts = [s for s in samples if s.requests is not None and s.errors is not None]
    if len(with_counts) < 2:
        return None
    first, last = with_counts[0], with_counts[-1]
    requests, errors = last.requests - first.requests, last.errors - first.errors
    if requests < 0 or errors < 0:  # the counters restarted with the new process: count from zero
        requests, errors = last.requests, last.errors
    return errors / requests if requests else None


def watch(name: str, service: ServiceSettings, thresholds: StatusThresholds, *, window: float, interval: float,
          progress: Callable[[str], None], sleep: Callable[[float], None] = time.sleep,
          stopping: Callable[[], bool] = lambda: False) -> Verdict:
    started = time.monotonic()
    samples: list[Sample] = []
    while True:
        samples.append(_sample(name, service, started))
        last = samples[-1]
        rate = _window_error_rate(samples)
        progress(f"verifying {name}: {last.at:.0f}s of {window:g}s · ready {'yes' if last.ready else 'NO'}"
                 + (f" · error rate {rate:.1%}" if rate is not None else "")
                 + (f" · queue {last.queue_depth:g}" if last.queue_depth is not None else ""))
        if stopping():
            return Verdict(False, ["verification interrupted by a shutdown: check the service by hand"], samples,
                           stopped=True)
        if last.at >= window:
            break
        sleep(min(interval, max(0.0, window - last.at)))
    return _judge(samples, thresholds)


def _judge(samples: list[Sample], thresholds: StatusThresholds) -> Verdict:
    tail = samples[-max(1, len(samples) // 3):]
    ready_ok = all(s.ready for s in tail)
    passing = sum(s.ready for s in samples)
    evidence = [f"{'✓' if ready_ok else '✗'} readiness: {passing} of {len(samples)} checks passed"
                + ("" if ready_ok else f"; last: {samples[-1].detail}")]
    rate = _window_error_rate(samples)
    rate_ok = rate is None or rate <= thresholds.error_rate
    evidence.append("· error rate: no request counters" if rate is None else
                    f"{'✓' if rate_ok else '✗'} error rate over the window: {rate:.1%}"
                    f" (limit {thresholds.error_rate:.0%})")
    depths = [s.queue_depth for s in samples if s.queue_depth is not None]
    queue_ok = not depths or depths[-1] <= depths[0] or depths[-1] <= thresholds.queue_depth
    if depths:
        evidence.append(f"{'✓' if queue_ok else '✗'} queue depth {depths[0]:g} → {depths[-1]:g}"
                        + (" (draining)" if depths[-1] < depths[0] else ""))
    return Verdict(ready_ok and rate_ok and queue_ok, evidence, samples)

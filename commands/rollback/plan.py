"""Which deploy to roll back to, and whether the schema allows it (code rolls back before schema).

Usage::

    choice = choose_target(deploys, to=None, migrations=drift_report)
    choice.current, choice.target, choice.between, choice.schema_note
    triggers = rollback_triggers(settings, checks, metrics)      # met or not

Code rolls back before schema. If migrations were applied since the target was
live, the schema stays at its newest and the target becomes the newest earlier
deploy that was live after those migrations: code known to run against this schema.
If there is none, the rollback is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from bot.config.settings import ServiceSettings
from bot.core.invocation import CommandError
from bot.core.probes import Check, ServiceMetrics
from commands.drift.model import DriftReport, Item
from commands.rollback.providers import Deploy

__all__ = ["Choice", "Trigger", "choose_target", "rollback_triggers"]


@dataclass
class Choice:
    current: Deploy
    target: Deploy
    between: list[Deploy]  # deploys newer than the target, up to and including the current one
    migrations_since: list[Item] = field(default_factory=list)
    schema_note: str = ""


@dataclass(frozen=True)
class Trigger:
    name: str
    met: bool | None  # None: cannot be told (no metrics, no baseline)
    detail: str


def _live_since(deploy: Deploy) -> datetime | None:
    return deploy.finished_at or deploy.created_at


def _ran_on_schema_of(deploy: Deploy, migrated_at: datetime) -> bool:
    """Whether ``deploy`` went live after the migration finished: its code has run against that schema."""
    live = _live_since(deploy)
    return deploy.successful and live is not None and live >= migrated_at


def _find(deploys: list[Deploy], wanted: str) -> Deploy:
    exact = [d for d in deploys if d.id == wanted or d.version == wanted]
    prefix = [d for d in deploys if len(wanted) >= 7 and d.version.startswith(wanted)]
    found = exact or prefix
    if not found:
        raise CommandError(f"no deploy {wanted!r} among the last {len(deploys)} (give a deploy id or a version)")
    if len(found) > 1 and not exact:
        raise CommandError(f"{wanted!r} matches {len(found)} deploys; give more of the version or the deploy id")
    return found[0]


def choose_target(deploys: list[Deploy], to: str | None, migrations: DriftReport | None) -> Choice:
    current = next((d for d in deploys if d.state == "live"), None)
    if current is None:
        raise CommandError("no live deploy found: nothing to roll back from")
    older = deploys[deploys.index(current) + 1:]
    if to is not None:
        target = _find(deploys, to)
        if target is current:
            raise CommandError(f"{target.short} is the live deploy already")
        if target not in older:
            raise CommandError(f"{target.short} is newer than the live deploy {current.short}; that is not a rollback")
        if not target.successful:
            raise CommandError(f"{target.short} never went live ({target.state}); pick a deploy that succeeded")
    else:
        target = next((d for d in older if d.successful), None)
        if target is None:
            raise CommandError("no earlier successful deploy to roll back to")
    choice = Choice(current, target, _between(deploys, current, target))
    if migrations is not None:
        _respect_schema(choice, deploys, migrations, explicit=to is not None)
    return choice


def _between(deploys: list[Deploy], current: Deploy, target: Deploy) -> list[Deploy]:
    return deploys[deploys.index(current):deploys.index(target)]


def _respect_schema(choice: Choice, deploys: list[Deploy], report: DriftReport, *, explicit: bool) -> None:
    older = deploys[deploys.index(choice.current) + 1:]
    since = _live_since(choice.target)
    applied = [item for item in report.applied if item.when is not None]
    if not applied:
        if report.applied:
            choice.schema_note = (f"{report.tool} records no time for applied migrations: check with `drift"
                                  f" {report.database}` that {choice.target.short} knows revision {report.current}")
        return
    choice.migrations_since = [item for item in applied if since is None or item.when > since]
    if not choice.migrations_since:
        choice.schema_note = f"no migration was applied since {choice.target.short} was live: code only"
        return
    newest = choice.migrations_since[-1]
    compatible = [d for d in older if _ran_on_schema_of(d, newest.when)]
    names = ", ".join(item.name for item in choice.migrations_since)
    if not compatible:
        raise CommandError(
            f"migrations were applied since {choice.target.short} ({names}) and no earlier deploy has run against"
            f" that schema: rolling code back would run it against a newer schema. Keep the schema:"
            f" fix forward, or roll the schema back first following the safe-rollback runbook")
    best = compatible[0]
    if best is choice.target:
        choice.schema_note = f"{best.short} already ran against the newest schema ({newest.name})"
        return
    reason = (f"migrations were applied after {choice.target.short} was live ({names}); code rolls back before schema, so the"
              f" schema stays at its newest and the rollback goes to {best.short}, the last code that ran on it")
    if explicit:
        raise CommandError(reason.replace("the rollback goes to", "roll back to") + f" (`--to {best.id}`)")
    choice.target, choice.between = best, _between(deploys, choice.current, best)
    choice.schema_note = reason


def rollback_triggers(service: ServiceSettings, checks: list[Check], metrics: ServiceMetrics | None) -> list[Trigger]:
    """The triggers: error rate > 10%, critical functionality broken, performance degradation > 50%."""
    limits = service.rollback
    rate = metrics.error_rate if metrics and metrics.ok else None
    out = [Trigger("error rate", None if rate is None else rate > limits.error_rate,
                   "no metrics" if rate is None else f"{rate:.1%} (trigger above {limits.error_rate:.0%})")]
    failing = [c for c in checks if not c.ok]
    out.append(Trigger("critical functionality broken", bool(failing) if checks else None,
                       "; ".join(f"{c.kind} {c.detail}" for c in failing) or
                       ("liveness and readiness pass" if checks else "no health checks configured")))
    p95 = metrics.values.get("latency_p95_seconds") if metrics and metrics.ok else None
    base = limits.latency_baseline
    if p95 is None or not base:
        out.append(Trigger("performance degraded > 50%", None,
                           "no latency histogram" if p95 is None else
                           f"p95 {p95 * 1000:.0f} ms; set services.<name>.rollback.latency_baseline to judge"))
    else:
        out.append(Trigger("performance degraded > 50%", p95 > 1.5 * base,
                           f"p95 {p95 * 1000:.0f} ms vs baseline {base * 1000:.0f} ms"))
    return out

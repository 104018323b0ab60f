"""``rollback <service> [--to VERSION]`` (guarded): plan, roll back through the deploy provider, verify.

The plan names the live and the target deploy, what changed between them, whether
migrations were applied since the target was live (from ``drift`` on the service's
``rollback.database``) and which rollback triggers are met now. Code
rolls back before schema. On confirm the provider starts the rollback,
the bot follows the new deploy until it is live and then watches readiness, error
rate and queue depth for ``rollback.verify_window``, posting progress.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from bot.core.durations import format_duration
from bot.core.invocation import BadArgument, CommandError, Invocation
from bot.core.registry import Arg, Command, Guard
from bot.core.result import Plan, Result, Section, fingerprint_of
from commands.drift import check_database
from bot.core.group import Group
from commands.rollback.settings import DeploySettings, RollbackSettings

if TYPE_CHECKING:  # the planning, the providers and the watch load when a rollback runs: `help` reads the declarations
    from commands.rollback.plan import Choice, Trigger
    from commands.rollback.providers import Deploy

__all__ = ["COMMANDS", "GROUP"]

MARK = {True: ":red_circle: met", False: ":white_check_mark: not met", None: ":white_circle: unknown"}


def _service(inv: Invocation, name: str):
    services = inv.settings.services
    if name not in services:
        raise BadArgument(f"unknown service {name!r}; configured: {', '.join(services) or 'none'}")
    service = services[name]
    if service.deploy is None:
        raise CommandError(f"service {name!r} has no deploy provider (services.{name}.deploy in app.yaml)")
    return service


def _schema(inv: Invocation, name: str):
    database = inv.settings.services[name].rollback.database
    if database is None:
        return None
    if database not in inv.settings.databases or inv.settings.databases[database].migrations is None:
        raise CommandError(f"services.{name}.rollback.database {database!r} needs databases.{database}.migrations")
    return check_database(inv.settings, inv.targets, database)


def _deploy_line(deploy: Deploy) -> str:
    when = f"{deploy.created_at:%Y-%m-%d %H:%M}" if deploy.created_at else "?"
    return f"`{deploy.id}` {deploy.version[:12]} · {when} · {deploy.state}" + (
        f" · {deploy.message[:80]}" if deploy.message else "")


def plan_rollback(inv: Invocation) -> Plan:
    from bot.core.probes import check_services, scrape_all
    from commands.rollback.plan import choose_target, rollback_triggers
    from commands.rollback.providers import provider_for

    name = inv.args["service"]
    service = _service(inv, name)
    provider = provider_for(service.deploy)
    with ThreadPoolExecutor(max_workers=3) as pool:
        checks_f = pool.submit(check_services, inv.settings.services, name)
        metrics_f = pool.submit(scrape_all, inv.settings.services, name)
        try:
            deploys = provider.deploys(limit=20)
        finally:
            provider.close()
        report = _schema(inv, name)
        triggers = rollback_triggers(service, checks_f.result(), metrics_f.result().get(name))
    choice = choose_target(deploys, inv.args["to"], report)
    return _plan(inv, name, choice, triggers, report is not None)


def _plan(inv: Invocation, name: str, choice: Choice, triggers: list[Trigger], schema_checked: bool) -> Plan:
    service = inv.settings.services[name]
    deploy = service.deploy
    changed = [_deploy_line(d) for d in choice.between]
    if deploy.compare_url and choice.current.version and choice.target.version:
        changed.append(deploy.compare_url.format(**{"from": choice.target.version, "to": choice.current.version}))
    schema = choice.schema_note or ("the schema was not checked: set services."
                                    f"{name}.rollback.database to a database with migrations")
    if choice.migrations_since and not choice.schema_note.startswith("no migration"):
        schema += "\nApplied since: " + ", ".join(f"`{m.name}`" for m in choice.migrations_since)
    met = [t for t in triggers if t.met]
    sections = [
        Section(fields=(("live now", _deploy_line(choice.current)), ("roll back to", _deploy_line(choice.target)),
                        ("provider", deploy.provider))),
        Section("What changed (rolled back)", text="\n".join(changed)),
        Section("Schema (code rolls back before schema)", text=schema),
        Section("Rollback triggers now", text="\n".join(f"{MARK[t.met]} *{t.name}*: {t.detail}"
                                                                   for t in triggers)),
        Section(text=f"On confirm: the rollback starts at {deploy.provider}, the new deploy is followed until live,"
                     f" then readiness, error rate and queue depth are watched for"
                     f" {format_duration(service.rollback.verify_window)}."),
    ]
    data = {"service": name, "current": choice.current.as_dict(), "target": choice.target.as_dict(),
            "between": [d.as_dict() for d in choice.between],
            "migrations_since": [m.name for m in choice.migrations_since], "schema_checked": schema_checked,
            "triggers": [{"name": t.name, "met": t.met, "detail": t.detail} for t in triggers]}
    # The confirmation is bound to which deploys and migrations were shown, not to live metrics.
    stable = {"service": name, "current": choice.current.id, "target": choice.target.id,
              "migrations_since": data["migrations_since"]}
    summary = (f"roll back {name} from {choice.current.short} to {choice.target.short}"
               + (f" ({len(met)} rollback trigger{'s' if len(met) != 1 else ''} met)" if met else ""))
    return Plan(summary, data=data, sections=sections, fingerprint=fingerprint_of(stable))


def execute_rollback(inv: Invocation, plan: Plan) -> Result:
    from commands.rollback.providers import provider_for
    from commands.rollback.verify import follow_deploy, watch

    name = plan.data["service"]
    service = inv.settings.services[name]
    target = plan.data["target"]["id"]
    notes: list[str] = []

    def show(line: str) -> None:
        notes.append(line)
        inv.progress(Result.ok(f"rollback {name} → {target}: {line}"))

    provider = provider_for(service.deploy)
    try:
        started = provider.rollback(target, key=f"opsbot-rollback-{plan.fingerprint}")
        show(f"rollback started: deploy {started.id}")
        deploy = follow_deploy(provider, started.id, timeout=service.rollback.deploy_timeout,
                               interval=service.rollback.verify_interval, progress=show, stopping=inv.stopping)
    finally:
        provider.close()
    runbook = f"`/ops runbook {service.rollback.runbook}`"
    data = {"service": name, "target": target, "deploy": deploy.as_dict()}
    if deploy.state == "failed":
        return Result.fail(f"rollback of {name} to {target} FAILED: deploy {deploy.id} did not go live",
                           data={**data, "verified": False},
                           sections=[Section(text=f"The provider reports deploy {deploy.id} as failed. Next: check"
                                                  f" its logs at {service.deploy.provider}; {runbook}")])
    if deploy.state != "live":
        return Result.warn(f"rollback of {name} to {target} started (deploy {deploy.id} {deploy.state}); the bot"
                           " stopped following it on shutdown", data={**data, "verified": False})
    verdict = watch(name, service, inv.settings.status, window=service.rollback.verify_window,
                    interval=service.rollback.verify_interval, progress=show, stopping=inv.stopping)
    data.update(verified=verdict.ok, evidence=verdict.evidence,
                samples=[{"at": round(s.at, 1), "ready": s.ready, "queue_depth": s.queue_depth}
                         for s in verdict.samples])
    evidence = Section("Verification", text="\n".join(verdict.evidence))
    if verdict.ok:
        return Result.ok(f"rolled back {name} to {target}: deploy {deploy.id} live and verified for"
                         f" {format_duration(service.rollback.verify_window)}", data=data, sections=[evidence])
    return Result.fail(f"rolled back {name} to {target}, but verification FAILED", data=data,
                       sections=[evidence, Section("Next step", text=(
                           "The rollback is live but the service is not healthy: the cause may not be the code."
                           f" Follow {runbook} (check the database, the queues and recent config changes)."))])


COMMANDS = [
    Command("rollback", "Roll a service back to an earlier deploy, respecting the schema, then verify it",
            args=(Arg("service", "a service from app.yaml with a deploy provider", positional=True, required=True),
                  Arg("to", "deploy id or version (default: the previous successful deploy)", metavar="VERSION")),
            guard=Guard(plan=plan_rollback, execute=execute_rollback), role="oncall",
            examples=("rollback api", "rollback api --to dep-4f2a")),
]

GROUP = Group(
    "rollback",
    commands=COMMANDS,
    extends={"services": {"deploy": (DeploySettings | None, None), "rollback": (RollbackSettings, RollbackSettings())}},
)

"""The demo's scripted tour: every command group, each step checked against the broken world.

Usage::

    from bot.demo.tour import TOUR, run_tour

    ok = run_tour(runtime)          # prints each step, its preview and confirmation, and a verdict
    len(TOUR)                       # the number of steps; the last line says "Tour: N/N steps as expected"

Each :class:`Step` is a ``/ops`` command, a check of its outcome and what it shows. A
guarded step's preview is printed and then confirmed as the on-call who asked, which is
the script (the console confirms at a prompt through :class:`bot.runtime.terminal.TerminalSession`).
The tour passes when every step is as expected and the action log's hash chain is intact.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from bot.core.invocation import Actor
from bot.demo.alert import GID
from bot.demo.world import ONCALL, WHERE
from bot.engine.dispatch import Outcome
from bot.render.text import to_text
from bot.runtime.factory import Runtime

__all__ = ["Step", "TOUR", "run_tour"]


@dataclass(frozen=True)
class Step:
    text: str
    expect: Callable[[Outcome], bool]
    what: str


TOUR = [
    Step("help", lambda o: o.result.status == "ok" and "dlq requeue" in str(o.result.data), "every command"),
    Step("runbook", lambda o: len(o.result.data["runbooks"]) >= 17, "the runbooks"),
    Step("runbook dead-letter-backlog queue=jobs", lambda o: o.result.data["steps"][1]["run"] == "dlq peek jobs",
         "a runbook with Run buttons"),
    Step(f"alerts show {GID}", lambda o: o.result.data["status"] == "firing" and o.result.data["steps"][:2]
         == ["dlq status", "dlq peek jobs"] and any("Diagnosis, step 2" in line for line in o.result.data["thread"]),
         "an alert from Alertmanager: its thread, with the runbook, Run buttons and the diagnosis already run"),
    Step("dlq status", lambda o: o.result.status == "warn" and o.result.data["queues"][0]["dead"] == 161,
         "the dead-letter backlog"),
    Step('dlq peek --error "rate limit" --limit 2',
         lambda o: o.result.data["matching"] == 40 and len(o.result.data["entries"]) == 2, "what failed, grouped"),
    Step('dlq requeue --error "rate limit"', lambda o: o.result.status == "ok" and o.result.data["moved"] == 40,
         "a guarded requeue, previewed and confirmed"),
    Step("dlq status jobs", lambda o: o.result.data["queues"][0]["dead"] == 121
         and o.result.data["queues"][0]["ready"] == 43, "after the requeue"),
    Step("dlq peek mail --type bot.demo.jobs.send_invoice --error 503",
         lambda o: o.result.data["matching"] == 8 and o.result.data["dead"] == 12,
         "an RQ queue's failed jobs, read without unpickling"),
    Step("dlq requeue mail --type bot.demo.jobs.send_invoice --limit 5",
         lambda o: o.result.status == "ok" and o.result.data["moved"] == 5, "requeued by RQ's own requeue"),
    Step("dlq trim step --keep 10", lambda o: o.result.status == "ok" and o.result.data["dropped"] == 15,
         "a guarded trim, archived to PostgreSQL first"),
    Step("health", lambda o: [c["ok"] for c in o.result.data["checks"]] == [True, True, True, False],
         "every service at once; the worker is not ready"),
    Step("status", lambda o: o.result.status == "fail" and {"service worker", "error rate worker", "stuck email",
         "dead letters jobs"} <= {line["what"] for line in o.result.data["lines"] if line["color"] == "red"},
         "one glance, with thresholds"),
    Step("email triage", lambda o: "fails at connect" in o.result.data["verdict"]
         and sum(s["count"] for s in o.result.data["stuck"]) == 45, "why mail is not going out"),
    Step("reminders case-42", lambda o: "TENANT_DAILY_AUTO_REMINDERS_CAP (20/20" in o.result.summary,
         "why a reminder was not scheduled"),
    Step('email retry --error "timed out"', lambda o: o.result.data["changed"] == 100,
         "a guarded retry of failed mail"),
    Step("audit verify --all", lambda o: o.result.status == "fail" and _earliest(o) == ("content_mismatch", "650"),
         "the AuditLog hash chain: one row edited by hand"),
    Step("drift", lambda o: _drift(o) == (["20260215120000_audit_log"], ["20261120100000_export_jobs"]),
         "migrations: one edited after it ran, one pending"),
    Step("incident declare sev2 Exports failing for tenant-b", lambda o: o.result.data["incident"]["id"] == "INC-1",
         "an incident (in Slack: a thread in #incidents)"),
    Step("rollback api --incident INC-1", lambda o: o.result.status == "ok" and o.result.data["verified"],
         "a guarded rollback to the previous deploy, verified, on the incident's timeline"),
    Step("incident note export worker back to normal --incident INC-1", lambda o: o.result.status == "ok",
         "an update"),
    Step("incident resolve rolled back api to dep-103 --incident INC-1",
         lambda o: o.result.data["incident"]["status"] == "resolved", "resolved; the postmortem is due in 48 h"),
    Step("incident timeline --incident INC-1", lambda o: _timeline_has(o, "`rollback`", "export worker"),
         "who did what, when"),
    Step("incident postmortem --incident INC-1",
         lambda o: "## Actions taken through opsbot" in o.result.data["markdown"], "a postmortem draft"),
    Step("log verify", lambda o: o.result.status == "ok" and o.result.data["anchored"],
         "the bot's own action log: every entry of this tour, against its signed head"),
]


def _earliest(outcome: Outcome) -> tuple[str, str]:
    bad = [t for t in outcome.result.data["tenants"] if not t["valid"]]
    return bad[0]["findings"][0]["kind"], bad[0]["findings"][0]["id"]


def _drift(outcome: Outcome) -> tuple[list[str], list[str]]:
    report = outcome.result.data["databases"][0]
    return [m["name"] for m in report["edited"]], [m["name"] for m in report["pending"]]


def _timeline_has(outcome: Outcome, *texts: str) -> bool:
    whole = " ".join(f"{e['what']} {e['result']}" for e in outcome.result.data["entries"])
    return all(text in whole for text in texts)


def run_tour(runtime: Runtime, out=sys.stdout) -> bool:
    actor = Actor(ONCALL, team="TDEMO")
    passed = 0
    for number, step in enumerate(TOUR, 1):
        print(f"\n── {number}/{len(TOUR)} /ops {step.text}   ({step.what})", file=out)
        outcome = runtime.engine.handle(step.text, actor, WHERE)
        if outcome.kind == "preview":
            print(to_text(outcome.result, runtime.redactor), file=out)
            print("   → Confirm (as the on-call who asked)", file=out)
            outcome = runtime.engine.confirm(outcome.pending.id, actor, WHERE)
        print(to_text(outcome.result, runtime.redactor), file=out)
        try:
            ok = step.expect(outcome)
        except (KeyError, IndexError, TypeError):
            ok = False
        print(f"   {'✔ as expected' if ok else '✘ NOT as expected'}", file=out)
        passed += ok
    chain = runtime.state.action_log.verify()
    print(f"\nAction log: {chain.rows} entries, hash chain {'intact' if chain.ok else 'BROKEN'}", file=out)
    print(f"Tour: {passed}/{len(TOUR)} steps as expected", file=out)
    return passed == len(TOUR) and chain.ok

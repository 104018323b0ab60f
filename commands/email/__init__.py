"""``email triage``, ``email retry`` and ``reminders``: why mail and reminders do not go out.

Every query is parameterised, names come from app.yaml and are quoted, and diagnosis
runs in a read-only transaction with the database's statement timeout. ``email retry``
is the only writer: one transaction that only ever turns ``failed`` into ``pending``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, TYPE_CHECKING

from commands.email.settings import EmailSettings
from bot.core.durations import format_duration
from bot.core.invocation import Invocation
from bot.core.registry import Arg, Command, Guard, duration, positive_int
from bot.core.result import Plan, Result, Section
from pydantic import Field
from bot.core.group import Color, Group, StatusLine

if TYPE_CHECKING:
    from psycopg import sql

__all__ = ["COMMANDS", "GROUP", "normalized_error"]

RUNBOOK = "email-not-sending"
TRUE = {"1", "true", "yes", "on"}
# ids (uuids, long hex, cuid-like) first, then any number: "job 42 of 7f3e…" → "job <n> of <id>"
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_LONG_ID_SQL = r"\m[0-9a-z]{20,}\M"
SCHEDULED = ("DEADLINE_REMINDER_SCHEDULED", "SUBMISSION_REMINDER_SCHEDULED")
BLOCKED = "REMINDER_BLOCKED_CAP"
SKIPPED = "REMINDER_SKIPPED_MISSING_RECIPIENT"


def normalized_error(text: str | None) -> str:
    """The same normalisation as the SQL, for messages handled in Python."""
    import re

    value = text if text is not None else "(none)"
    value = re.sub(_UUID, "<id>", value, flags=re.I)
    value = re.sub(r"\b[0-9a-z]{20,}\b", "<id>", value, flags=re.I)
    return re.sub(r"[0-9]+", "<n>", value)


class _Names:
    """Quoted identifiers for the configured tables and columns."""

    def __init__(self, email: EmailSettings):
        from psycopg import sql

        self.comm = sql.Identifier(email.communications)
        self.events = sql.Identifier(email.case_events)
        self.c = {k: sql.Identifier(v) for k, v in email.communication_columns.model_dump().items()}
        self.e = {k: sql.Identifier(v) for k, v in email.case_event_columns.model_dump().items()}

    def normalized(self) -> sql.Composable:
        from psycopg import sql

        return sql.SQL(
            "regexp_replace(regexp_replace(regexp_replace(coalesce({col}, '(none)'), {uuid}, '<id>', 'gi'),"
            " {long}, '<id>', 'gi'), '[0-9]+', '<n>', 'g')"
        ).format(col=self.c["last_error"], uuid=sql.Literal(_UUID), long=sql.Literal(_LONG_ID_SQL))


def _rows(conn, query: sql.Composable, params: dict[str, Any]) -> list[tuple]:
    return conn.execute(query, params).fetchall()


# -- triage ---------------------------------------------------------------------------------

def _stuck(conn, n: _Names, stuck_after: float, tenant: str | None) -> list[tuple]:
    from psycopg import sql

    query = sql.SQL(
        "SELECT {tenant}, {status}, count(*), min({created}) FROM {comm}"
        " WHERE {status} IN ('pending', 'pending_auto') AND {created} < now() - make_interval(secs => %(age)s)"
        " AND (%(tenant)s::text IS NULL OR {tenant} = %(tenant)s) GROUP BY 1, 2 ORDER BY 3 DESC"
    ).format(comm=n.comm, **n.c)
    return _rows(conn, query, {"age": stuck_after, "tenant": tenant})


def _failures(conn, n: _Names, since: float, tenant: str | None) -> list[tuple]:
    from psycopg import sql

    query = sql.SQL(
        "SELECT {norm} AS kind, count(*), max({updated}),"
        " (array_agg({last_error} ORDER BY {updated} DESC))[1], count(DISTINCT {tenant})"
        " FROM {comm} WHERE {status} = 'failed' AND {updated} >= now() - make_interval(secs => %(since)s)"
        " AND (%(tenant)s::text IS NULL OR {tenant} = %(tenant)s) GROUP BY 1 ORDER BY 2 DESC LIMIT 20"
    ).format(norm=n.normalized(), comm=n.comm, **n.c)
    return _rows(conn, query, {"since": since, "tenant": tenant})


def _today_per_tenant(conn, n: _Names, tenant: str | None) -> list[tuple]:
    from psycopg import sql

    query = sql.SQL(
        "SELECT {tenant}, count(*) FROM {comm} WHERE {created} >= date_trunc('day', now() AT TIME ZONE 'UTC')"
        " AT TIME ZONE 'UTC' AND (%(tenant)s::text IS NULL OR {tenant} = %(tenant)s) GROUP BY 1 ORDER BY 2 DESC"
    ).format(comm=n.comm, **n.c)
    return _rows(conn, query, {"tenant": tenant})


def _dry_run(email: EmailSettings) -> tuple[bool | None, str]:
    import httpx

    source = email.dry_run
    if source.url:
        try:
            body = httpx.get(source.url, timeout=5).json()
        except (httpx.HTTPError, ValueError) as exc:
            return None, f"could not read {source.url}: {type(exc).__name__}"
        value = body
        for part in source.field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return (None if value is None else str(value).lower() in TRUE), f"{source.field} from {source.url}"
    if source.env:
        value = os.environ.get(source.env)
        return (None if value is None else value.lower() in TRUE), f"${source.env}"
    return None, "no source configured"


def triage(inv: Invocation) -> Result:
    email = inv.settings.email
    since, tenant = inv.args["since"], inv.args["tenant"]
    names = _Names(email)
    with inv.targets.database(email.database) as conn:
        stuck = _stuck(conn, names, email.stuck_after, tenant)
        failures = _failures(conn, names, since, tenant)
        today = _today_per_tenant(conn, names, tenant)
    now = time.time()
    dry_run, dry_source = _dry_run(email)
    smtp = None
    if email.smtp.host:
        from commands.email.smtp_probe import probe  # here: `help` reads only the declarations

        smtp = probe(email.smtp)

    stuck_total = sum(row[2] for row in stuck)
    failed_total = sum(row[1] for row in failures)
    capped = [(t, count) for t, count in today if email.daily_cap is not None and count >= email.daily_cap]
    sections = []
    if stuck:
        lines = [f"{count:>6}  {status:<13} tenant {t}  oldest {format_duration(now - oldest.timestamp())}"
                 for t, status, count, oldest in stuck]
        sections.append(Section(f"Stuck beyond {format_duration(email.stuck_after)}", code="\n".join(lines)))
    if failures:
        lines = [f"{count:>6}  {kind}\n        latest: {latest}" for kind, count, _, latest, _ in failures]
        sections.append(Section(f"Failed in the last {format_duration(since)}", code="\n".join(lines)))
    dry_text = {True: ":rotating_light: *ON*", False: "off", None: "unknown"}[dry_run]
    if dry_run and email.environment == "production":
        dry_text += " in *production*: nothing is really sent"
    facts = [("DRY_RUN_EMAILS", f"{dry_text} ({dry_source})")]
    if smtp is None:
        facts.append(("provider", "no SMTP host configured (email.smtp.host)"))
    else:
        steps = " → ".join(f"{s.name} {'ok' if s.ok else 'FAILED'} {s.ms:.0f} ms" for s in smtp.steps)
        failed = smtp.failed_step
        facts.append((f"SMTP {smtp.host}:{smtp.port}", steps + (f"\n{failed.name}: {failed.detail}" if failed else "")))
    if email.daily_cap is not None:
        top = ", ".join(f"{t} {count}/{email.daily_cap}" for t, count in today[:5]) or "no mail today"
        facts.append(("daily cap (TENANT_DAILY_COMMS_CAP)", top))
    sections.append(Section(fields=tuple(facts)))

    verdict, status = _verdict(email, stuck_total, failures, dry_run, smtp, capped)
    sections.append(Section(text=f"*Verdict:* {verdict}\nRunbook: `/ops runbook {RUNBOOK}`"))
    return Result(
        status, f"{stuck_total} stuck, {failed_total} failed in {format_duration(since)}: {verdict}",
        data={
            "stuck": [{"tenant": t, "status": s, "count": c, "oldest": o.isoformat()} for t, s, c, o in stuck],
            "failures": [{"error": k, "count": c, "last_at": last.isoformat(), "latest_example": ex, "tenants": nt}
                         for k, c, last, ex, nt in failures],
            "dry_run": dry_run, "dry_run_source": dry_source,
            "smtp": None if smtp is None else {"ok": smtp.ok, "steps": [s.__dict__ for s in smtp.steps]},
            "today": {t: c for t, c in today}, "capped_tenants": [t for t, _ in capped],
            "verdict": verdict, "runbook": RUNBOOK,
        },
        sections=tuple(sections),
    )


_ADVICE = {  # what to check, by the step of the SMTP conversation that failed
    "connect": "it cannot be reached: check connectivity (host, port, firewall, the provider's status page)",
    "ehlo": "it answers but refuses the conversation: check the provider's status and limits",
    "starttls": "TLS fails: check the certificate (email.smtp.ca_file) and the security setting",
    "ehlo after starttls": "TLS fails: check the certificate (email.smtp.ca_file) and the security setting",
    "auth": "it refuses the login: check SMTP_USER and SMTP_PASS (rotated, or locked?)",
}


def _verdict(email, stuck_total, failures, dry_run, smtp, capped) -> tuple[str, str]:
    if dry_run and email.environment == "production":
        return "DRY_RUN_EMAILS is on in production: the sender pretends to send. Turn it off.", "fail"
    if smtp is not None and not smtp.ok:
        step = smtp.failed_step
        return f"the SMTP provider fails at {step.name} ({step.detail}): {_ADVICE.get(step.name, _ADVICE['ehlo'])}", \
            "fail"
    if capped and stuck_total:
        tenants = ", ".join(t for t, _ in capped)
        return f"tenant(s) {tenants} reached TENANT_DAILY_COMMS_CAP today: blocked by the cap, not an outage", "warn"
    if failures and failures[0][1] >= max(1, sum(f[1] for f in failures) // 2):
        return f"most failures are `{failures[0][0]}`", "fail"
    if stuck_total:
        return "mail is queued but nothing fails and the provider answers: is the sending worker running?", "fail"
    if failures:
        return "some sends failed, with no dominant cause", "warn"
    return "email looks healthy", "ok"


# -- retry ----------------------------------------------------------------------------------

def _retry_filter(n: _Names) -> sql.Composable:
    from psycopg import sql

    return sql.SQL(
        "{status} = 'failed' AND {updated} >= now() - make_interval(secs => %(since)s)"
        " AND (%(tenant)s::text IS NULL OR {tenant} = %(tenant)s)"
        " AND (%(error)s::text IS NULL OR {last_error} ILIKE '%%' || %(error)s || '%%')"
    ).format(**n.c)


def _retry_params(inv: Invocation) -> dict[str, Any]:
    error = inv.args["error"]
    escaped = error.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") if error else None
    return {"since": inv.args["since"], "tenant": inv.args["tenant"], "error": escaped}


def plan_retry(inv: Invocation) -> Plan | Result:
    from psycopg import sql

    email = inv.settings.email
    n = _Names(email)
    params = _retry_params(inv)
    query = sql.SQL(
        "SELECT {norm}, {tenant}, count(*) FROM {comm} WHERE {where} GROUP BY 1, 2 ORDER BY 3 DESC"
    ).format(norm=n.normalized(), tenant=n.c["tenant"], comm=n.comm, where=_retry_filter(n))
    with inv.targets.database(email.database) as conn:
        groups = _rows(conn, query, params)
    matching = sum(row[2] for row in groups)
    if matching == 0:
        return Result.ok("Nothing to retry: no failed communications match.", data={"matching": 0})
    limit = inv.args["limit"]
    target = min(matching, limit) if limit else matching
    lines = [f"{count:>6}  tenant {t}  {kind}" for kind, t, count in groups[:30]]
    return Plan(
        f"put {target} failed communications back to pending (of {matching} matching)",
        data={"matching": matching, "limit": limit, "filters": {k: inv.args[k] for k in ("error", "tenant", "since")},
              "growth_bound": email.retry_growth},
        sections=[Section("By error and tenant", code="\n".join(lines)),
                  Section(text="Only `failed` rows change; `sent` rows are never touched.")],
    )


def retry_still_valid(old: Plan, new: Plan) -> bool:
    same = old.data["filters"] == new.data["filters"] and old.data["limit"] == new.data["limit"]
    return same and new.data["matching"] <= old.data["matching"] * (1 + new.data["growth_bound"])


def execute_retry(inv: Invocation, plan: Plan) -> Result:
    from psycopg import sql

    email = inv.settings.email
    n = _Names(email)
    params = {**_retry_params(inv), "limit": inv.args["limit"]}
    query = sql.SQL(
        "UPDATE {comm} SET {status} = 'pending', {updated} = now() WHERE {id} IN ("
        " SELECT {id} FROM {comm} WHERE {where} ORDER BY {updated} LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
        " AND {status} = 'failed' RETURNING {id}"
    ).format(comm=n.comm, where=_retry_filter(n), **n.c)
    with inv.targets.database(email.database, read_only=False) as conn:
        ids = [str(row[0]) for row in conn.execute(query, params).fetchall()]
    return Result.ok(
        f"Put {len(ids)} failed communications back to pending",
        data={"changed": len(ids), "changed_ids": ids, "table": email.communications},
    )


# -- reminders ------------------------------------------------------------------------------

def reminders(inv: Invocation) -> Result:
    from psycopg import sql

    email = inv.settings.email
    n = _Names(email)
    case = inv.args["case"]
    history = sql.SQL(
        "SELECT {type}, {created}, {tenant}, {data}::text FROM {events} WHERE {case} = %(case)s ORDER BY {created}"
    ).format(events=n.events, **n.e)
    today = sql.SQL(
        "SELECT count(*) FROM {events} WHERE {tenant} = %(tenant)s AND {type} = ANY(%(types)s)"
        " AND {created} >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    ).format(events=n.events, **n.e)
    with inv.targets.database(email.database) as conn:
        events = _rows(conn, history, {"case": case})
        if not events:
            return Result.error(f"No case events for case `{case}`: unknown case id, or it never had any events.",
                                data={"case": case, "events": []})
        tenant = events[-1][2]
        auto_today = conn.execute(today, {"tenant": tenant, "types": list(SCHEDULED)}).fetchone()[0]
    reminder_events = [e for e in events if e[0] in (*SCHEDULED, BLOCKED, SKIPPED)]
    lines = [f"{created:%Y-%m-%d %H:%M}  {kind}  {(data or '')[:120]}" for kind, created, _, data in reminder_events]
    cap = email.auto_reminders_cap
    facts = [("tenant", str(tenant)),
             ("auto-reminders today", f"{auto_today}/{cap}" if cap is not None else f"{auto_today} (no cap set)"),
             ("DEFAULT_REMINDER_RECIPIENT", email.reminder_recipient or "not set"),
             ("DEFAULT_REMINDER_REPLY_TO", email.reminder_reply_to or "not set")]
    verdict, status = _reminder_verdict(reminder_events, email, auto_today)
    return Result(
        status, f"Case {case}: {verdict}",
        data={"case": case, "tenant": tenant, "auto_reminders_today": auto_today, "cap": cap,
              "events": [{"type": k, "at": c.isoformat(), "data": json.loads(d) if d else None}
                         for k, c, _, d in reminder_events],
              "recipient": email.reminder_recipient, "reply_to": email.reminder_reply_to, "verdict": verdict},
        sections=(Section("Reminder history", code="\n".join(lines) or "(no reminder events)"),
                  Section(fields=tuple(facts)),
                  Section(text=f"*Verdict:* {verdict}\nRunbook: `/ops runbook reminder-not-scheduled`")),
    )


def _reminder_verdict(events, email: EmailSettings, auto_today: int) -> tuple[str, str]:
    if not events:
        return ("no reminder was ever scheduled or blocked: check the worker's deadline scan "
                "(DEADLINE_SCAN_INTERVAL_MS) and its logs"), "fail"
    last = events[-1][0]
    if last == BLOCKED:
        cap = email.auto_reminders_cap
        return (f"blocked by TENANT_DAILY_AUTO_REMINDERS_CAP ({auto_today}/{cap if cap is not None else '?'} "
                "today): working as designed; raise the cap only deliberately"), "warn"
    if last == SKIPPED:
        if not email.reminder_recipient:
            return "skipped: no recipient; set the tenant's recipient or DEFAULT_REMINDER_RECIPIENT", "fail"
        return "skipped for a missing recipient: the tenant's recipient configuration is incomplete", "fail"
    return f"a reminder was scheduled ({last} at {events[-1][1]:%Y-%m-%d %H:%M} UTC)", "ok"


def status_lines(inv: Invocation) -> list[StatusLine]:
    """`status`: communications pending beyond ``email.stuck_after``."""
    email = inv.settings.email
    if email.database not in inv.settings.databases:
        return [StatusLine(Color.UNKNOWN, "stuck email", "no email database configured")]
    try:
        with inv.targets.database(email.database) as conn:
            rows = _stuck(conn, _Names(email), email.stuck_after, None)
    except Exception as exc:
        return [StatusLine.unknown("stuck email", exc)]
    stuck = sum(row[2] for row in rows)
    return [StatusLine(Color.RED if stuck > inv.settings.status.stuck_email else Color.GREEN, "stuck email",
                       f"{stuck} pending beyond {format_duration(email.stuck_after)} "
                       f"(red above {inv.settings.status.stuck_email})", {"stuck": stuck})]


COMMANDS = [
    Command(
        "email triage", "Why are emails not going out? Stuck and failed mail, dry-run flag, provider probe, caps",
        args=(Arg("since", "failures in this window", type=duration, default=86400.0),
              Arg("tenant", "only this tenant")),
        run=triage, examples=("email triage", "email triage --since 2h --tenant acme"),
    ),
    Command(
        "email retry", "Put failed communications back to pending",
        args=(Arg("error", "only failures whose lastError contains this text (any case)"),
              Arg("tenant", "only this tenant"),
              Arg("since", "only failures in this window", type=duration, default=86400.0),
              Arg("limit", "at most this many", type=positive_int)),
        role="oncall",
        guard=Guard(plan=plan_retry, execute=execute_retry, still_valid=retry_still_valid),
        examples=("email retry --error timeout", "email retry --tenant acme --since 6h --limit 200"),
    ),
    Command(
        "reminders", "Why a case's reminder was not scheduled",
        args=(Arg("case", "the case id", positional=True, required=True),),
        run=reminders, examples=("reminders case-123",),
    ),
]

GROUP = Group(
    "email",
    commands=COMMANDS,
    settings={"email": (EmailSettings, EmailSettings())},
    extends={"status": {"stuck_email": (int, Field(0, ge=0))}},  # more stuck communications than this is red
    status=status_lines,
)

"""``log verify``: is the bot's own action log intact, up to its signed head?

Read-only for the chain; it records how far it got (a signed checkpoint), so the
next run only hashes what was appended since. ``--full`` hashes every row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.core.invocation import CommandError, Invocation
from bot.core.registry import Arg, Command
from bot.core.result import Result, Section
from bot.core.group import Check, CheckWarning, Color, Group, StatusLine

if TYPE_CHECKING:  # the verifier loads when a check or a command runs: `help` reads only the declarations
    from bot.store.logverify import VerifyReport

__all__ = ["COMMANDS", "GROUP", "verify_action_log", "summary_line"]

_NEXT_STEP = {
    "content_edited": "find who edited the row (manual SQL, a migration touching action_log) and restore it from a"
                      " backup",
    "link_broken": "rows were re-linked: compare with a backup of the action log",
    "row_missing": "rows were deleted: restore them from a backup; look for DELETEs on action_log",
    "truncated": "the newest rows are gone: look for deletes, or a restore from an older backup",
    "rewritten": "the chain was re-hashed: treat as tampering, compare with a backup",
    "foreign_rows": "something other than the bot wrote rows: find the writer and revoke its access",
    "forged_segment": "someone restarted the chain by hand: treat as tampering",
    "segment_invalid": "the bot's segment records were altered: treat as tampering",
    "head_invalid": "the signed head was altered: treat as tampering",
    "head_missing": "the head row was deleted: treat as tampering",
    "head_rolled_back": "the head was replayed from an older value (or PostgreSQL restored from a backup): compare"
                        " with the entries you expect",
    "checkpoint_invalid": "the checkpoint was altered: someone can write the bot's tables without the key",
    "unanchored": "set state.log_secret (${OPSBOT_LOG_SECRET}) and keep it across releases",
}


def verify_action_log(inv_state, *, full: bool = False, quick: bool = False) -> VerifyReport:
    """Run the verification; a PostgreSQL problem becomes a CommandError that names it."""
    import psycopg

    log = inv_state.action_log
    try:
        return log.verify(full=full, quick=quick)
    except psycopg.errors.UndefinedTable:
        raise CommandError("the action log's tables do not exist yet: run `opsbot migrate`"
                           " (or set RUN_MIGRATIONS=true)") from None
    except psycopg.OperationalError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CommandError(f"the bot's PostgreSQL ({log.where}) does not answer: {first}") from None


def summary_line(report: VerifyReport) -> str:
    """One line for `status` and `opsbot check`."""
    broken = [f for f in report.findings if f.level == "fail"]
    known = [f for f in report.findings if f.known]
    head = report.head
    where = f"head row {head.head_id}, segment {head.segment}" if head and head.head_id else "empty"
    if broken:
        more = f" (+{len(broken) - 1} more)" if len(broken) > 1 else ""
        return f"BROKEN: {broken[0].text}{more}"
    parts = [f"intact: {report.rows:,} rows, {where}"]
    if known:
        segments = sorted({f.segment for f in known if f.segment is not None})
        parts.append(f"earlier breaks in segment {', '.join(map(str, segments)) or '?'}: {known[0].kind}"
                     + (f" (+{len(known) - 1})" if len(known) > 1 else ""))
    if any(f.kind == "never_verified" for f in report.findings):
        parts.append("never verified: run `log verify`")
    if not report.anchored:
        parts.append("NOT anchored (state.log_secret)" if any(
            f.kind == "unanchored" for f in report.findings) else "head not anchored")
    if report.checkpoint and report.checkpoint.get("full_at"):
        parts.append(f"last full verification {report.checkpoint['full_at']}")
    return "; ".join(parts)


def log_verify(inv: Invocation) -> Result:
    report = verify_action_log(inv.state, full=inv.args["full"])
    broken = [f for f in report.findings if f.level == "fail"]
    known = [f for f in report.findings if f.known and f.level != "fail"]
    warnings = [f for f in report.findings if f.level == "warn" and not f.known]
    notes = [f for f in report.findings if f.level == "info"]
    sections = []
    if broken:
        sections.append(Section("Broken", text="\n".join(f"• {f.text}" for f in broken[:20])
                                + "\nThe bot does not extend a broken chain: it continues in a new signed segment,"
                                  " and the break stays on record."))
    if known:
        sections.append(Section("Earlier breaks (the log continued in a new segment)",
                                text="\n".join(f"• {f.text}" for f in known[:20])))
    if warnings:
        sections.append(Section("Warnings", text="\n".join(f"• {f.text}" for f in warnings[:10])))
    kinds = sorted({f.kind for f in broken + known + warnings if f.kind in _NEXT_STEP})
    if kinds:
        from bot.store.logverify import KINDS

        sections.append(Section("Next steps", text="\n".join(f"• *{k}* ({KINDS[k]}): {_NEXT_STEP[k]}" for k in kinds)))
    head = report.head
    fields = [("rows", f"{report.rows:,}"), ("checked now", f"{report.checked:,} ({report.mode})"),
              ("segments", str(report.segments)),
              ("head", f"row {head.head_id}, {(head.head_hash or '')[:12]}…, entry #{head.seq}" if head and head.head_id
               else "no entries"),
              ("anchored", "yes (HMAC-SHA256, state.log_secret)" if report.anchored else "NO")]
    if report.checkpoint:
        fields.append(("checkpoint", f"row {report.checkpoint['head_id']} at {report.checkpoint['verified_at']}"
                       + (f"; last full {report.checkpoint['full_at']}" if report.checkpoint.get("full_at") else "")))
    sections.append(Section(fields=tuple(fields)))
    if notes:
        sections.append(Section("Notes", text="\n".join(f"• {f.detail}" for f in notes)))
    data = report.as_dict()
    data["head"] = None if head is None else {k: v for k, v in data["head"].items() if k not in ("key_id", "signature")}
    data["first_bad"] = report.first_bad
    summary = f"action log {summary_line(report)} ({report.mode}, {report.checked:,} rows hashed in {report.seconds:.1f}s)"
    make = Result.fail if broken else Result.warn if report.level == "warn" else Result.ok
    return make(summary, data=data, sections=sections)


COMMANDS = [
    Command("log verify", "Verify the bot's own action log against its signed head, from the last verified point",
            args=(Arg("full", "hash every row, not only those since the last verification", flag=True),),
            run=log_verify, examples=("log verify", "log verify --full"),
            description="Names the first bad row and what is wrong with it: content edited, link broken, row"
                        " missing, truncated, rewritten, a forged segment start, a head that is not anchored."),
]

def status_lines(inv: Invocation) -> list[StatusLine]:
    """`status`: the action log from its last checkpoint (quick: the head and what was appended since)."""
    try:
        report = verify_action_log(inv.state, quick=True)
    except Exception as exc:
        return [StatusLine(Color.RED, "action log", f"cannot verify ({str(exc).splitlines()[0][:160]})")]
    color = Color.RED if report.level == "fail" else Color.AMBER if report.level == "warn" else Color.GREEN
    return [StatusLine(color, "action log", summary_line(report), {"level": report.level,
                                                                    "first_bad": report.first_bad})]


def checks(runtime: Any) -> list[Check]:
    """`opsbot check`: the action log verifies from the last checkpoint (the first time, every row)."""

    def verified() -> str:
        report = verify_action_log(runtime.state)
        if report.level == "fail":
            raise CommandError(summary_line(report) + ": run `opsbot run log verify`")
        if report.level == "warn":
            raise CheckWarning(summary_line(report))
        return f"ok, {summary_line(report)}"

    return [Check("action log", verified)]


GROUP = Group("log", commands=COMMANDS, status=status_lines, checks=checks)

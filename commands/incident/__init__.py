"""``incident ...``: severity-tagged incident threads with a timeline and a postmortem.

Every command but ``declare`` and ``list`` acts on the incident whose thread it runs in,
or on ``--incident INC-42`` (a global option any command takes, see
:mod:`commands.incident.context`). Handlers reach the desk through
``inv.services.get(IncidentDesk)``; they never talk to Slack. The group gives the
bot that desk, the incident context, the reminder sweep, a `status` line and an
`opsbot check` line (see ``GROUP`` at the end).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.core.group import Check, Color, Group, StatusLine, Sweep
from bot.core.invocation import CommandError, Invocation
from bot.core.markup import Mrkdwn, channel, code, md, mention
from bot.core.registry import Arg, Command
from bot.core.result import Attachment, Result, Section
from commands.incident.desk import NOTE_FORM, PHASES, IncidentDesk
from commands.incident.report import postmortem, timeline
from commands.incident.store import Incident
from commands.incident.context import IncidentContext
from commands.incident.settings import IncidentSettings
from commands.incident.store import IncidentStore

__all__ = ["COMMANDS", "GROUP", "permissions"]


def _desk(inv: Invocation) -> IncidentDesk:
    desk = inv.services.find(IncidentDesk)
    if desk is None:
        raise CommandError("incidents are not available here (no state database)")
    return desk


def _current(inv: Invocation) -> tuple[IncidentDesk, Incident]:
    desk = _desk(inv)
    if inv.where.context is None:
        open_ids = ", ".join(i.id for i in desk.store.open()) or "none open"
        raise CommandError(f"`{inv.command.name}` acts on an incident: run it in the incident's thread or add"
                           f" `--incident INC-n` ({open_ids})")
    return desk, desk.store.find(inv.where.context)


def declare(inv: Invocation) -> Result:
    desk = _desk(inv)
    incident, notes = desk.declare(inv.args["severity"], inv.args["title"], inv.actor.user_id)
    where = channel(incident.channel) if incident.channel else "no Slack thread"
    summary = md("{} declared: {} {} ({})", incident.id, incident.severity.upper(), incident.title, where)
    sections = [Section(fields=(("Commander", mention(incident.commander)),
                                ("Target response", desk.target_text(incident.severity))))]
    if notes:
        sections.append(Section(text="\n".join(f"• {note}" for note in notes)))
    sections.append(Section(text=md("Run commands in its thread, or anywhere with {}.",
                                    code(f"--incident {incident.id}"))))
    return Result.ok(summary, data={"incident": incident.as_dict(), "notes": notes}, sections=sections)


def severity(inv: Invocation) -> Result:
    desk, incident = _current(inv)
    before = incident.severity
    incident, notes = desk.change_severity(incident, inv.args["level"], inv.actor.user_id)
    return Result.warn(md("{}: severity {} → {} by {}; target {}", incident.id, before.upper(),
                          incident.severity.upper(), mention(inv.actor.user_id), desk.target_text(incident.severity)),
                       data={"incident": incident.as_dict(), "notes": notes})


def note(inv: Invocation) -> Result:
    desk, incident = _current(inv)
    text = inv.args["text"]
    desk.note(incident, inv.actor.user_id, text)
    return Result.ok(md("{} update from {}: {}", incident.id, mention(inv.actor.user_id), text),
                     data={"incident": incident.id, "note": text})


def phase(inv: Invocation) -> Result:
    desk, incident = _current(inv)
    before = incident.phase
    incident = desk.set_phase(incident, inv.args["phase"], inv.actor.user_id)
    return Result.ok(f"{incident.id}: phase {before} → {incident.phase}", data={"incident": incident.as_dict()})


def resolve(inv: Invocation) -> Result:
    desk, incident = _current(inv)
    incident = desk.resolve(incident, inv.actor.user_id, inv.args["summary"] or "")
    due = incident.postmortem_due_at
    return Result.ok(md("{} resolved by {}", incident.id, mention(inv.actor.user_id)) +
                     (md(": {}", incident.summary) if incident.summary else ""),
                     data={"incident": incident.as_dict()},
                     sections=[Section(text=f"Postmortem due {due:%Y-%m-%d %H:%M} UTC: `incident postmortem` drafts"
                                            " it from the timeline.")])


def show_timeline(inv: Invocation) -> Result:
    desk, incident = _current(inv)
    entries = timeline(desk.store, incident)
    # Slack users are mentioned; the terminal and the bot itself are named.
    lines = [md("`{:%H:%M:%S}` {} {}", e.at, mention(e.who), e.what) + (md(" → {}", e.result) if e.result else "")
             for e in entries]
    return Result.ok(f"{incident.id} timeline: {len(entries)} entries since {incident.declared_at:%Y-%m-%d %H:%M} UTC",
                     data={"incident": incident.id,
                           "entries": [{"at": e.at.isoformat(), "who": e.who, "what": e.what, "result": e.result,
                                        "kind": e.kind} for e in entries]},
                     sections=[Section(text=Mrkdwn("\n").join(lines) or "nothing yet")])


def draft_postmortem(inv: Invocation) -> Result:
    desk, incident = _current(inv)
    entries = timeline(desk.store, incident)
    text = postmortem(inv.settings, incident, entries)
    if incident.postmortem_posted_at is None:
        desk.store.update(incident, postmortem_posted_at=desk.clock())
    note_open = "" if not incident.open else " (the incident is still open: the draft will miss the end)"
    return Result.ok(f"{incident.id} postmortem draft{note_open}",
                     data={"incident": incident.id, "markdown": text},
                     attachments=[Attachment(f"{incident.id}-postmortem.md", content=text.encode(),
                                             title=f"Postmortem draft: {incident.id} {incident.title}")])


def repost(inv: Invocation) -> Result:
    desk, incident = _current(inv)
    incident = desk.repost(incident, inv.actor.user_id)
    return Result.ok(md("{}: root message posted again in {}; its thread is the incident's home from now on",
                        incident.id, channel(incident.channel)), data={"incident": incident.as_dict()})


def list_open(inv: Invocation) -> Result:
    desk = _desk(inv)
    incidents = desk.store.open()
    lines = [md("*{}* {} · {} · {} · commander {}", i.id, i.severity.upper(), i.title, i.phase, mention(i.commander))
             for i in incidents]
    return Result.ok(f"{len(incidents)} open incident{'s' if len(incidents) != 1 else ''}",
                     data={"incidents": [i.as_dict() for i in incidents]},
                     sections=[Section(text=Mrkdwn("\n").join(lines))] if lines else [])


def permissions(settings) -> dict[str, str]:
    """Declaring or raising to a severity that pages people needs the ``oncall`` role (when the role exists)."""
    if "oncall" not in settings.roles:
        return {}
    paging = [name for name, level in settings.incidents.severities.items() if level.page]
    return {f"incident {verb} {name}": "oncall" for name in paging for verb in ("declare", "sev")}


def _severity(text: str) -> str:
    return text.lower()


_severity.__name__ = "SEV"

COMMANDS = [
    Command("incident declare", "Declare an incident: a severity-tagged thread in the incident channel",
            args=(Arg("severity", "sev1 (outage) .. sev4 (cosmetic)", positional=True, required=True, type=_severity),
                  Arg("title", "one line on the impact", positional=True, required=True, rest=True)),
            run=declare, examples=("incident declare sev2 Exports failing for all tenants",)),
    Command("incident sev", "Change the incident's severity (edits the root message; SEV1 pages)",
            args=(Arg("level", "sev1 .. sev4", positional=True, required=True),), run=severity,
            examples=("incident sev sev1 --incident INC-42",)),
    Command("incident note", "Post an update to the incident's timeline (restarts the response clock)",
            args=(Arg("text", "what happened or what you did", positional=True, required=True, rest=True),),
            run=note, examples=("incident note restarted the export worker --incident INC-42",)),
    Command("incident phase", f"Move the incident to a phase: {' → '.join(PHASES)}",
            args=(Arg("phase", "/".join(PHASES), positional=True, required=True),), run=phase,
            examples=("incident phase mitigate",)),
    Command("incident resolve", "Resolve the incident; the postmortem falls due 48 h later",
            args=(Arg("summary", "how it was fixed", positional=True, rest=True),), run=resolve,
            examples=("incident resolve rolled back api to dep-3",)),
    Command("incident timeline", "The incident's timeline: notes, changes and every command run in it",
            run=show_timeline, examples=("incident timeline --incident INC-42",)),
    Command("incident postmortem", "Draft the postmortem from the timeline, as a file in the thread",
            run=draft_postmortem, examples=("incident postmortem --incident INC-42",)),
    Command("incident list", "Open incidents", run=list_open),
    Command("incident repost", "Post the incident's root message again (if Slack refused it, or it was deleted)",
            run=repost, examples=("incident repost --incident INC-42",)),
]

# -- what the group gives the bot --------------------------------------------------------------

# any command takes it: its result also goes to the incident's thread and timeline (the parser's error names it)
OPTION = Arg("incident", "an incident id, e.g. `--incident INC-42`", metavar="INC-n")


def services(runtime: Any) -> list[object]:
    """The incident desk, over the bot's state database and the incident channel's board."""
    settings = runtime.settings
    board = runtime.board(settings.incidents.channel or settings.slack.incident_channel,
                          setting="incidents.channel (or slack.incident_channel)")
    store = IncidentStore(runtime.state, settings.state.db_schema, runtime.redactor)
    return [IncidentDesk(settings, store, board, command=settings.slack.command)]


def status_lines(inv: Invocation) -> list[StatusLine]:
    """`status`: open incidents, red while a paging severity is open."""
    desk = inv.services.find(IncidentDesk)
    try:
        open_now = desk.store.open() if desk is not None else []
    except Exception as exc:
        return [StatusLine.unknown("incidents", exc)]
    if not open_now:
        return [StatusLine(Color.GREEN, "incidents", "none open", {"open": 0})]
    paging = [i for i in open_now if desk.severity(i.severity).page]
    text = ", ".join(f"{i.id} {i.severity.upper()} {i.title}" for i in open_now[:5])
    return [StatusLine(Color.RED if paging else Color.AMBER, "incidents", f"{len(open_now)} open: {text}",
                       {"open": len(open_now)})]


def checks(runtime: Any) -> list[Check]:
    """`opsbot check`: the postmortem template parses."""

    def template() -> str:
        import jinja2

        path = runtime.settings.runbooks_path / runtime.settings.incidents.postmortem_template
        try:
            jinja2.Environment().parse(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise CommandError(f"{path}: {exc.strerror or exc}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise CommandError(f"{path.name}:{exc.lineno}: {exc.message}") from None
        return f"ok, {path.name} parses"

    return [Check("postmortem template", template)]


GROUP = Group(
    "incident",
    commands=COMMANDS,
    settings={"incidents": (IncidentSettings, IncidentSettings())},
    permissions=permissions,
    migrations=Path(__file__).with_name("migrations"),
    services=services,
    context=lambda runtime: IncidentContext(runtime.services.get(IncidentDesk), OPTION),
    context_option=OPTION,
    sweep=Sweep("incident reminders", every=lambda settings: settings.incidents.sweep_every,
                run=lambda runtime: runtime.services.get(IncidentDesk).sweep()),
    status=status_lines,
    checks=checks,
    forms=(NOTE_FORM,),
)

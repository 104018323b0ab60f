"""Commands in an incident's context: ``--incident INC-42`` on any command, or run inside its thread.

Usage (the engine calls these; see :class:`bot.engine.dispatch.Engine`)::

    context = IncidentContext(desk, OPTION)
    where = context.resolve(parsed.context, where)    # "INC-42" from --incident, or the thread's incident
    reply, posted = context.post(result, where)  # into the incident's thread, and onto its timeline

A result lands in the thread through the board (the Web API), unless the command
came from that very thread, where the reply already lands. Either way the
incident's response clock restarts: running a command there is an update.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from bot.core.invocation import Where
from bot.core.registry import Arg
from bot.core.result import Result, Section
from commands.incident.desk import IncidentDesk

__all__ = ["IncidentContext"]

log = logging.getLogger("opsbot.incidents")


class IncidentContext:
    """The :class:`bot.core.group.Context` of the incident group: ``where.context`` is an incident id."""

    name = "incident"  # the key of the incident id in the action log

    def __init__(self, desk: IncidentDesk, option: Arg):
        self.desk = desk
        self.option = option

    def resolve(self, wanted: str | None, where: Where) -> Where:
        """Which incident ``where`` belongs to: ``wanted`` (from ``--incident``; BadArgument if unknown), else the
        incident whose thread it is."""
        if wanted:
            incident = self.desk.store.find(wanted)
            return replace(where, context=incident.id)
        if where.thread_ts:
            incident = self.desk.store.by_root(where.thread_ts)
            if incident is not None:
                return replace(where, context=incident.id)
        return where

    def post(self, result: Result, where: Where) -> tuple[Result, bool]:
        """Post ``result`` into the thread (files too) and restart the response clock.

        Returns what is left to reply to the requester, and whether it went to the thread.
        """
        if where.context is None:
            return result, False
        try:
            incident = self.desk.store.find(where.context)
            self.desk.touched(incident)
            if where.thread_ts is not None and where.thread_ts == incident.root_ts:
                return result, False  # asked from the thread itself: the reply lands there already
            files = result.attachments
            shown = result.with_(attachments=[])
            if not self.desk.post(incident, shown):
                return result, False
            if files and self.desk.board is not None:
                for attachment in files:
                    self.desk.board.upload_thread(incident.channel, incident.root_ts, attachment)
                shown = shown.with_(sections=[*shown.sections,
                                              Section(text=f"Files uploaded to the {incident.id} thread.")])
            return shown, True
        except Exception as exc:  # the command ran; failing to post it must not turn into its failure
            log.error("could not post to the thread of %s: %s", where.context, exc)
            return result, False

"""``dlq status | peek | requeue | trim | cancel``: dead-letter queues (docs/conventions.md).

The commands are declared here; they live in :mod:`~commands.dlq.views` (status, peek,
cancel), :mod:`~commands.dlq.requeue` and :mod:`~commands.dlq.trim`, and speak to a queue
through the :class:`~commands.dlq.backend.DeadLetterBackend` protocol (its backend chosen
by :mod:`commands.dlq.factory`). The backends know nothing of Slack:
:mod:`commands.dlq.redis_list` (Redis lists, with :mod:`~commands.dlq.trimmer` and
:mod:`~commands.dlq.archive` for trims) and :mod:`commands.dlq.http_api` (a service's
admin API). :mod:`commands.dlq.overview` has the group's `status` lines and `opsbot check`s.
"""

from __future__ import annotations

from commands.dlq.gauges import dead_letter_gauges

from bot.core.registry import Arg, Command, Guard, duration, int_between, lazy, positive_int
from pathlib import Path
from pydantic import Field
from bot.core.group import Group
from commands.dlq.settings import QueueSettings, check_queues

__all__ = ["COMMANDS", "GROUP"]

PEEK_DEFAULT = 10


# -- declarations ---------------------------------------------------------------------------

QUEUE = Arg("queue", "a queue from app.yaml (default: the first)", positional=True)
FILTERS = (
    Arg("type", "only entries of this type"),
    Arg("error", "only entries whose error contains this text (any case)"),
    Arg("older_than", "only entries that failed longer ago than this", type=duration),
    Arg("id", "only this entry id (repeatable)", repeat=True, metavar="ID"),
)


COMMANDS = [
    Command("dlq status", "Ready and dead depth of every configured queue (or one)", args=(QUEUE,),
            run=lazy("commands.dlq.views", "status"), examples=("dlq status", "dlq status step")),
    Command(
        "dlq peek", "The oldest dead entries, with counts by type and by error",
        args=(QUEUE, *FILTERS, Arg("limit", "how many entries to show", type=positive_int, default=PEEK_DEFAULT)),
        run=lazy("commands.dlq.views", "peek"),
        examples=("dlq peek", 'dlq peek jobs --error "rate limit" --older-than 1h --limit 5'),
    ),
    Command(
        "dlq requeue", "Move dead jobs back to the ready queue",
        description="Moves the oldest matching entries first, in atomic batches inside Redis. Entries that die "
                    "again while it runs are not taken again. Killing the bot at any moment loses nothing: "
                    "running it again resumes. Progress is updated every 2 s with a Cancel button.",
        args=(QUEUE, *FILTERS, Arg("limit", "move at most this many", type=positive_int),
              Arg("rate", "entries per second at most", type=positive_int)),
        role="oncall", guard=Guard(plan=lazy("commands.dlq.requeue", "plan_requeue"),
                                   execute=lazy("commands.dlq.requeue", "execute_requeue"),
                                   still_valid=lazy("commands.dlq.requeue", "requeue_still_valid"),
                                   replan=lazy("commands.dlq.requeue", "replan_requeue")),
        examples=("dlq requeue", "dlq requeue jobs --type send_email --limit 500 --rate 100"),
    ),
    Command(
        "dlq trim", "Drop all but the newest N dead jobs, archiving what it drops",
        args=(QUEUE, Arg("keep", "how many of the newest entries to keep (default: the queue's keep, "
                                 "DEAD_LETTER_KEEP)", type=int_between(0, 10**9), metavar="N")),
        role="oncall", guard=Guard(plan=lazy("commands.dlq.trim", "plan_trim"),
                                   execute=lazy("commands.dlq.trim", "execute_trim"),
                                   still_valid=lazy("commands.dlq.trim", "trim_still_valid")),
        examples=("dlq trim", "dlq trim jobs --keep 100"),
    ),
    Command("dlq cancel", "Stop a running requeue", args=(QUEUE,), run=lazy("commands.dlq.views", "cancel"),
            role="oncall", examples=("dlq cancel jobs",)),
]

GROUP = Group(
    "dlq",
    commands=COMMANDS,
    settings={"queues": (list[QueueSettings], [])},
    extends={"status": {"queue_depth": (int, Field(1000, ge=0)),  # a ready queue deeper than this is amber
                        "dead_letters": (int, Field(0, ge=0))}},  # more dead letters than this is red
    validate=check_queues,
    status=lazy("commands.dlq.overview", "status_lines"),
    checks=lazy("commands.dlq.overview", "checks"),
    migrations=Path(__file__).with_name("migrations"),
    gauges={"dlq status": dead_letter_gauges},
)

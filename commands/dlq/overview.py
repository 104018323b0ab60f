"""What the ``dlq`` group adds to ``status`` and to ``opsbot check``, through the backend protocol.

Usage (the group's declaration)::

    GROUP = Group("dlq", ..., status=status_lines, checks=checks)

``status_lines(inv)``: per queue, a ready line (amber above ``status.queue_depth``) and a
dead-letter line (red above ``status.dead_letters``); a backend without a ready count
(no ``ready-depth``) has the dead-letter line only. ``checks(runtime)``: per queue, the
backend's :meth:`~commands.dlq.backend.DeadLetterBackend.probe`.
"""

from __future__ import annotations

import time
from typing import Any

from bot.core.durations import format_duration
from bot.core.group import Check, Color, StatusLine
from bot.core.invocation import Invocation
from commands.dlq.backend import READY_DEPTH
from commands.dlq.factory import backend_of, open_backend
from commands.dlq.settings import QueueSettings

__all__ = ["status_lines", "checks"]


def status_lines(inv: Invocation) -> list[StatusLine]:
    limits = inv.settings.status
    lines: list[StatusLine] = []
    for queue in inv.settings.queues:
        try:
            backend = backend_of(inv, queue)
            try:
                depth = backend.depth()
            finally:
                backend.close()
        except Exception as exc:
            lines.append(StatusLine(Color.RED, f"queue {queue.name}", f"cannot read: {exc}", {}))
            continue
        dead = depth.dead + depth.held
        dead_color = Color.RED if dead > limits.dead_letters else Color.GREEN
        if not backend.capabilities.supports(READY_DEPTH):  # its dead letters only
            lines.append(StatusLine(dead_color, f"dead letters {queue.name}",
                                    f"{dead} dead (red above {limits.dead_letters})", {"dead": dead}))
            continue
        ready_color = Color.AMBER if depth.ready > limits.queue_depth else Color.GREEN
        lines.append(StatusLine(ready_color, f"queue {queue.name}",
                                f"{depth.ready} ready (amber above {limits.queue_depth})", {"ready": depth.ready}))
        age = f", oldest {format_duration(time.time() - depth.oldest)}" if depth.oldest else ""
        lines.append(StatusLine(dead_color, f"dead letters {queue.name}",
                                f"{dead} dead{age} (red above {limits.dead_letters})", {"dead": dead}))
    return lines


def checks(runtime: Any) -> list[Check]:
    return [Check(f"queue {queue.name}", lambda queue=queue: _probe(runtime, queue))
            for queue in runtime.settings.queues]


def _probe(runtime: Any, queue: QueueSettings) -> str:
    backend = open_backend(queue, runtime.targets, runtime.settings)
    try:
        return backend.probe()
    finally:
        backend.close()

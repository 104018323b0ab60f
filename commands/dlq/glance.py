"""The dead-letter lines of `status` (one per queue: ready depth, dead letters) and of `opsbot check`."""

from __future__ import annotations

import time
from typing import Any

from bot.core.durations import format_duration
from bot.core.group import Check, Color, StatusLine
from bot.core.invocation import CommandError, Invocation
from commands.dlq.common import backend_of
from commands.dlq.redis_list import RedisListQueue

__all__ = ["checks", "status_lines"]


def status_lines(inv: Invocation) -> list[StatusLine]:
    limits = inv.settings.status
    lines = []
    for queue in inv.settings.queues:
        try:
            backend = backend_of(inv, queue)
            if not isinstance(backend, RedisListQueue):  # an http queue: its dead letters, or its error
                dead = sum(1 for _ in backend.entries())
                lines.append(StatusLine(Color.RED if dead > limits.dead_letters else Color.GREEN,
                                        f"dead letters {queue.name}",
                                        f"{dead} dead (red above {limits.dead_letters})", {"dead": dead}))
                continue
            depth = backend.depth()
        except Exception as exc:
            lines.append(StatusLine(Color.RED, f"queue {queue.name}", f"cannot read: {exc}"))
            continue
        lines.append(StatusLine(Color.AMBER if depth.ready > limits.queue_depth else Color.GREEN,
                                f"queue {queue.name}", f"{depth.ready} ready (amber above {limits.queue_depth})",
                                {"ready": depth.ready}))
        dead = depth.dead + depth.held
        age = f", oldest {format_duration(time.time() - depth.oldest)}" if depth.oldest else ""
        lines.append(StatusLine(Color.RED if dead > limits.dead_letters else Color.GREEN, f"dead letters {queue.name}",
                                f"{dead} dead{age} (red above {limits.dead_letters})", {"dead": dead}))
    return lines


def checks(runtime: Any) -> list[Check]:
    """`opsbot check`: each queue's keys hold what opsbot expects."""

    def keys(queue) -> str:
        client = runtime.targets.redis(queue.redis)
        parts = []
        for role, key in (("ready", queue.ready), ("dead", queue.dead)):
            kind = client.type(key).decode()
            if kind not in ("list", "none"):
                raise CommandError(f"{role} key {key!r} is a Redis {kind}, expected a list")
            parts.append(f"{role} {key!r}: {client.llen(key) if kind == 'list' else 0}")
        return "ok, " + ", ".join(parts)

    return [Check(f"queue {queue.name}", lambda queue=queue: keys(queue)) for queue in runtime.settings.queues]

"""The table of dead-letter backends, by the name app.yaml gives them (``queues[].backend``).

Usage::

    backend = backend_of(inv, queue)                              # a DeadLetterBackend for the queue
    backend = open_backend(queue, runtime.targets, runtime.settings)  # the same, outside a command

This is the one place outside the backend modules (and the settings' validation) where a
backend's name appears: a new backend is one module with a class implementing
:class:`~commands.dlq.backend.DeadLetterBackend` and one entry here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from bot.core.invocation import CommandError, Invocation
from commands.dlq.backend import DeadLetterBackend
from commands.dlq.common import settings_of
from commands.dlq.http_api import HttpDeadLetters
from commands.dlq.redis_list import RedisListQueue
from commands.dlq.settings import QueueSettings
from commands.dlq.sidekiq import SidekiqSet

__all__ = ["BACKENDS", "backend_of", "open_backend"]


def _needs(package: str, module: str, name: str) -> Callable[[QueueSettings, Any, Any], DeadLetterBackend]:
    """A backend whose job library is an optional extra (``pip install 'opsbot[rq]'``): imported when used."""
    def construct(queue: QueueSettings, targets: Any, settings: Any) -> DeadLetterBackend:
        try:
            backend = getattr(importlib.import_module(module), name)
        except ModuleNotFoundError as exc:
            if exc.name != package:
                raise
            raise CommandError(f"queue {queue.name!r} uses the {queue.backend} backend, which needs the "
                               f"{package!r} package: pip install 'opsbot[{package}]'") from None
        return backend.open(queue, targets, settings)
    return construct


# name → constructor(queue settings, targets, app settings)
BACKENDS: dict[str, Callable[[QueueSettings, Any, Any], DeadLetterBackend]] = {
    "redis-list": RedisListQueue.open,
    "http": HttpDeadLetters.open,
    "sidekiq": SidekiqSet.open,
    "rq": _needs("rq", "commands.dlq.rq_jobs", "RqQueue"),
    "bullmq": _needs("bullmq", "commands.dlq.bullmq_jobs", "BullQueue"),
}


def open_backend(queue: QueueSettings, targets: Any, settings: Any) -> DeadLetterBackend:
    """The queue's backend, given the connections (``targets``) and the app's settings."""
    return BACKENDS[queue.backend](queue, targets, settings)


def backend_of(inv: Invocation, queue: QueueSettings | None = None) -> DeadLetterBackend:
    """The backend of ``queue``, or of the queue the invocation names (the first one by default)."""
    queue = queue or settings_of(inv)
    return open_backend(queue, inv.targets, inv.settings)

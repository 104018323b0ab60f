"""Keep Celery's finally failed task messages in a dead list opsbot reads (a ``redis-list`` queue).

Usage, in the Celery app's module (the worker imports it)::

    from commands.dlq.celery_hook import keep_dead_letters
    keep_dead_letters(app, dead="celery.dead")    # Redis: the app's broker_url unless redis_url= is given

and in opsbot's app.yaml::

    queues:
      - {name: celery, redis: main, ready: celery, dead: celery.dead,
         fields: {id: headers.id, type: headers.task, attempts: headers.retries}}

Celery itself keeps no dead letters: once a task has failed for good (its exception was not
a retry, or ``max_retries`` ran out) its message is acknowledged and gone. This hook listens
to Celery's ``task_failure`` signal, which fires only then, and LPUSHes onto ``dead`` the
message as the kombu Redis transport keeps it in a queue list (protocol 2: ``headers`` with
task, id, retries, argsrepr ..., the serialized ``body`` [args, kwargs, embed], and
``properties`` with ``delivery_info`` and a fresh ``delivery_tag``), plus what the envelope
does not say, at the top level, which kombu ignores: ``error`` ("ExceptionClass: message") and
``failedAt``. The queue's ``fields`` setting points opsbot at the envelope for the rest.
``dlq requeue`` then LPUSHes those exact bytes onto the Celery queue's list (``ready``),
where a worker takes it as it takes any message, and runs it again with the same id.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

__all__ = ["keep_dead_letters", "dead_message", "PROTOCOL_2_HEADERS"]

# The headers of a protocol-2 task message (celery.app.amqp.AMQP.as_task_v2).
PROTOCOL_2_HEADERS = ("lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
                      "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
                      "replaced_task_nesting", "stamped_headers", "stamps")
EMBED = ("callbacks", "errbacks", "chain", "chord")
ERROR_CHARS = 2000


def dead_message(task: Any, exception: BaseException, now: float | None = None) -> dict[str, Any]:
    """The failed task's message from ``task.request`` (the worker's copy of its headers, properties
    and body), as the kombu Redis transport stores messages, with opsbot's fields added."""
    from kombu.serialization import dumps

    request = vars(task.request)
    headers = {key: request[key] for key in PROTOCOL_2_HEADERS if key in request}
    headers.setdefault("task", task.name)
    embed = {key: request.get(key) for key in EMBED}
    content_type, encoding, data = dumps([list(request.get("args") or ()), dict(request.get("kwargs") or {}), embed],
                                         serializer=task.serializer or task.app.conf.task_serializer)
    properties = dict(request.get("properties") or {})
    delivery = request.get("delivery_info") or {}
    properties.setdefault("correlation_id", headers.get("id"))
    properties.setdefault("reply_to", request.get("reply_to") or "")
    properties.setdefault("delivery_mode", 2)
    properties["delivery_info"] = {"exchange": delivery.get("exchange") or "",
                                   "routing_key": delivery.get("routing_key") or task.app.conf.task_default_queue}
    properties.setdefault("priority", delivery.get("priority") or 0)
    properties["body_encoding"] = "base64"
    properties["delivery_tag"] = str(uuid.uuid4())  # never the acknowledged original's
    raw = data.encode(encoding) if isinstance(data, str) else data
    error = f"{type(exception).__name__}: {exception}"
    return {
        "body": base64.b64encode(raw).decode(), "content-encoding": encoding, "content-type": content_type,
        "headers": headers, "properties": properties, "error": error[:ERROR_CHARS], "failedAt": time.time() if now is None else now,
    }


def keep_dead_letters(app: Any, *, dead: str = "celery.dead", redis_url: str | None = None) -> Any:
    """Connect the handler to ``task_failure`` for ``app``'s tasks; returns it (``disconnect`` with it)."""
    import json

    import redis
    from celery.signals import task_failure

    client = redis.Redis.from_url(redis_url or app.conf.broker_url)

    def on_failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
        if sender is None or getattr(sender, "app", None) is not app:
            return
        message = dead_message(sender, exception or Exception("unknown"))
        client.lpush(dead, json.dumps(message, ensure_ascii=False, default=str))

    task_failure.connect(on_failure, weak=False)
    return on_failure

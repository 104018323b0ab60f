"""``queues:``: the dead-letter queues ``dlq`` works on, and the checks across them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from bot.config.types import ConfigModel as _Model
from bot.config.types import Duration, Name

__all__ = ["QueueSettings", "check_queues", "find_queue"]


class QueueSettings(_Model):
    """A dead-letter queue: Redis lists (``redis-list``) or a service's admin API (``http``)."""

    name: Name
    backend: Literal["redis-list", "http", "sidekiq", "rq", "bullmq"] = "redis-list"
    # redis-list
    redis: str = "main"
    ready: str = "jobs"
    dead: str = "jobs:dead"
    keep: int = Field(1000, ge=0)
    batch: int = Field(1000, ge=1, le=10000)
    # redis-list: where id/type/attempts/error/failedAt are in an entry (a Celery envelope: headers.task ...)
    fields: dict[Literal["id", "type", "attempts", "error", "failedAt"], str] = Field(default_factory=dict)
    # bullmq: BullMQ's key prefix (default: bull)
    prefix: str | None = None
    # http
    url: str | None = None
    token: SecretStr | None = None
    page_size: int = Field(100, ge=1, le=10000)
    timeout: Duration = 10.0
    retries: int = Field(3, ge=0, le=10)
    # both
    requeue_growth: float = Field(0.10, ge=0)
    lease_ttl: Duration = 15.0
    # sidekiq: `queue` is the set (dead or retry), `namespace` the app's redis-namespace;
    # rq, bullmq: `queue` is the library's queue name (default: the queue's name)
    queue: str | None = None
    namespace: str | None = None


def check_queues(settings) -> None:
    """Queue names are unique, an http queue has a url, the others name a configured Redis (a Redis Cluster only
    for a redis-list queue)."""
    seen: set[str] = set()
    for index, queue in enumerate(settings.queues):
        if queue.name in seen:
            raise ValueError(f"queues[{index}].name: duplicate queue name {queue.name!r}")
        seen.add(queue.name)
        if queue.backend == "http":
            if not queue.url:
                raise ValueError(f"queues[{index}].url: the http backend needs the service's base url")
            continue
        if queue.backend == "sidekiq" and (queue.queue or "dead") not in ("dead", "retry"):
            raise ValueError(f"queues[{index}].queue: a sidekiq queue is Sidekiq's `dead` or `retry` set, "
                             f"not {queue.queue!r}")
        if queue.redis not in settings.redis:
            known = ", ".join(settings.redis) or "none configured"
            raise ValueError(f"queues[{index}].redis: unknown redis connection {queue.redis!r} (known: {known})")
        if queue.backend != "redis-list" and settings.redis[queue.redis].cluster:
            # RQ and Sidekiq do not run on a Redis Cluster; BullMQ does (with a {hash-tagged} prefix), but the
            # keys opsbot keeps beside a job queue (its task, lease and batch) are not in the queue's slot.
            raise ValueError(f"queues[{index}].redis: {queue.redis!r} is a Redis Cluster, and the {queue.backend} "
                             f"backend of queue {queue.name!r} works on a single Redis server only")


def find_queue(settings, name: str | None) -> QueueSettings:
    """The named queue, or the first one when ``name`` is None; KeyError names the known ones."""
    if not settings.queues:
        raise KeyError("no queues are configured in app.yaml")
    if name is None:
        return settings.queues[0]
    for queue in settings.queues:
        if queue.name == name:
            return queue
    raise KeyError(f"unknown queue {name!r}; configured: {', '.join(q.name for q in settings.queues)}")

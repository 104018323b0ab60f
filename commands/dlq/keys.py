"""The keys opsbot keeps next to a ``redis-list`` queue, and whether the queue can live on a Redis Cluster.

Usage::

    keys = QueueKeys.of(settings, prefix="opsbot:", cluster=True)   # CommandError if the queue cannot
    keys.task, keys.lease, keys.trim, keys.held("ab12")

On a Redis Cluster every multi-key script and MULTI needs its keys in one slot, so the
queue's ready and dead lists must share a hash tag (``{jobs}`` and ``{jobs}:dead``) and
opsbot's own keys for the queue (task, lease, trim task, held entries) carry the same tag:
``opsbot:dlq:task:{jobs}:jobs``. On one server they keep the names they always had
(``opsbot:dlq:task:jobs``): an upgrade finds the task, lease and held entries a running
or interrupted requeue or trim left behind. Queue names and the prefix cannot hold braces
(they are ``Name``s), so the tag opsbot writes is the first one in each of its keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.invocation import CommandError
from commands.dlq.settings import QueueSettings

__all__ = ["QueueKeys", "cluster_problem"]


def cluster_problem(queue: QueueSettings) -> str | None:
    """Why ``queue`` cannot run on a Redis Cluster (its lists in two slots, or no hash tag), or None."""
    from bot.runtime.redisconn import hash_tag, key_slot

    ready, dead = queue.ready, queue.dead
    advice = (f"name both with one hash tag, the part in braces that picks the slot, e.g. "
              f'ready: "{{{queue.name}}}" and dead: "{{{queue.name}}}:dead"')
    slots = key_slot(ready), key_slot(dead)
    if slots[0] != slots[1]:
        return (f"queue {queue.name!r} cannot run on Redis Cluster {queue.redis!r}: its ready list {ready!r} and "
                f"dead list {dead!r} hash to different slots ({slots[0]} and {slots[1]}), and opsbot moves entries "
                f"between them in one atomic step; {advice}")
    if hash_tag(dead) is None:
        return (f"queue {queue.name!r} cannot run on Redis Cluster {queue.redis!r}: its dead list {dead!r} has no "
                f"hash tag, which opsbot's own keys for the queue (task, lease, held entries) need to share its "
                f"slot; {advice}")
    return None


@dataclass(frozen=True)
class QueueKeys:
    task: str
    lease: str
    trim: str
    held_prefix: str

    @classmethod
    def of(cls, queue: QueueSettings, prefix: str, cluster: bool) -> QueueKeys:
        from bot.runtime.redisconn import hash_tag, key_slot

        if not cluster:
            name = queue.name
        else:
            problem = cluster_problem(queue)
            if problem:
                raise CommandError(problem)
            name = f"{{{hash_tag(queue.dead)}}}:{queue.name}"
        keys = cls(f"{prefix}dlq:task:{name}", f"{prefix}dlq:lease:{name}", f"{prefix}dlq:trim:{name}",
                   f"{prefix}dlq:held:{name}:")
        if cluster and {key_slot(k) for k in (keys.task, keys.lease, keys.trim, keys.held("x"))} != {
                key_slot(queue.dead)}:
            raise CommandError(f"queue {queue.name!r}: opsbot's keys for it would not share its slot "
                               f"(prefix {prefix!r})")  # unreachable while prefixes and names hold no braces
        return keys

    def held(self, task_id: str) -> str:
        return f"{self.held_prefix}{task_id}"

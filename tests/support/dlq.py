"""Helpers to fill and inspect dead-letter lists the way producers and workers do (docs/conventions.md)."""

from __future__ import annotations

import json
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import psycopg
import redis

TYPES = ("send_email", "render_pdf", "sync_crm")
ERRORS = ("SMTP timeout after 30s", "429 rate limit exceeded", "KeyError: 'tenant'")


def dead_letter(index: int, *, failed_ago: float = 3600.0, type_: str | None = None, error: str | None = None,
                now: float | None = None) -> bytes:
    failed = (now or time.time()) - failed_ago
    return json.dumps({
        "id": f"job-{index}", "type": type_ or TYPES[index % 3], "attempts": 5, "error": error or ERRORS[index % 3],
        "failedAt": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(failed)) + f".{int(failed * 1000) % 1000:03d}Z",
        "payload": {"to": f"user{index}@example.com", "smtp_password": "hunter2"},
    }).encode()


@contextmanager
def lease_held(q, kind: str):
    """The queue's lease taken by a task of ``kind`` on another host that has not written its task yet."""
    from commands.dlq.lease import QueueLease

    value = QueueLease(q.client, q.lease).take(kind, f"{kind}-elsewhere", owner="other-host:1", ttl=30)
    try:
        yield
    finally:
        QueueLease(q.client, q.lease).release(value)


def kill(client: redis.Redis, entries: list[bytes], dead: str = "jobs:dead") -> None:
    """Dead letters are LPUSHed, so the first given ends up oldest (rightmost)."""
    for start in range(0, len(entries), 1000):
        client.lpush(dead, *entries[start:start + 1000])


def oldest_first(client: redis.Redis, key: str) -> list[bytes]:
    return list(reversed(client.lrange(key, 0, -1)))


def everything(client: redis.Redis, *keys: str) -> Counter:
    """The multiset of entries across lists (and the requeue's held lists)."""
    total: Counter = Counter()
    from tests.support.dlqlayout import keys_matching

    for key in list(keys) + [k.decode() for k in keys_matching(client, "opsbot:dlq:held:*")]:
        total.update(client.lrange(key, 0, -1))
    return total


def reset_schema(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS opsbot CASCADE")


def archived_count(database_url: str) -> int:
    """How many dead letters are archived: one count, cheap to ask often while a trim runs."""
    with psycopg.connect(database_url) as conn:
        if conn.execute("SELECT to_regclass('opsbot.dlq_archive')").fetchone()[0] is None:
            return 0
        return conn.execute("SELECT count(*) FROM opsbot.dlq_archive").fetchone()[0]


def archive_rows(database_url: str) -> list[tuple[str, int, bytes]]:
    """(task_id, ordinal, entry) of every archived dead letter, in task and ordinal order."""
    with psycopg.connect(database_url) as conn:
        if conn.execute("SELECT to_regclass('opsbot.dlq_archive')").fetchone()[0] is None:
            return []
        rows = conn.execute("SELECT task_id, ordinal, entry FROM opsbot.dlq_archive ORDER BY task_id, ordinal")
        return [(task, ordinal, bytes(entry)) for task, ordinal, entry in rows]


def assert_exactly_once(client: redis.Redis, database_url: str, original: Counter, *keys: str) -> None:
    """Every original entry is exactly once in Redis or in the archive, and never in both."""
    in_redis = everything(client, *keys)
    archived = Counter(entry for _, _, entry in archive_rows(database_url))
    both = set(in_redis) & set(archived)
    assert not both, f"{len(both)} archive rows describe entries still in Redis"
    lost = original - (in_redis + archived)
    extra = (in_redis + archived) - original
    assert not lost and not extra, f"{sum(lost.values())} lost, {sum(extra.values())} duplicated"


def opsbot(config: Path, text: str, *extra: str, yes: bool = True) -> list[str]:
    """The command line of ``opsbot run --yes TEXT`` (a real process, as an on-call would start it)."""
    import sys

    return [sys.executable, "-m", "bot", "--config", str(config), "run", *(["--yes"] if yes else []), *extra,
            text]


def two_queues_runtime(tmp_path: Path, database_url: str, make_runtime, fake_slack, layout=None):
    """A runtime with queue `jobs` (keep 5, batch 7) and queue `step`, on the test's Redis (or ``layout``'s)."""
    from slack_sdk import WebClient

    from tests.conftest import BOT_TOKEN, REDIS_URL, write_config
    from tests.support.dlqlayout import QueueLayout

    path = write_config(tmp_path / "app.yaml", database_url, api_url=fake_slack.api_url)
    (layout or QueueLayout.server(None, REDIS_URL)).configure(path, "keep: 5, batch: 7", step=True)
    return make_runtime(path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))


class HookedArchive:
    """The real trim archive with hooks around each of its calls, for tests that act at a chosen point of a trim:
    ``before(n, chunk)`` runs before the n-th call archives ``chunk`` and returns what it archives (the chunk, or a
    wrapper of it); ``after(n, first, chunk)`` runs once that call has committed. ``calls`` counts the calls; any
    other attribute is the archive's. A test subclasses it and overrides the hook it needs."""

    def __init__(self, archive):
        self.archive, self.calls = archive, 0

    def __getattr__(self, name):
        return getattr(self.archive, name)

    def __call__(self, task_id, first, entries):
        self.calls += 1
        entries = self.before(self.calls, entries)
        self.archive(task_id, first, entries)
        self.after(self.calls, first, entries)

    def before(self, call: int, entries):
        return entries

    def after(self, call: int, first: int, entries) -> None:
        pass

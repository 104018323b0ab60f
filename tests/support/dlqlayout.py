"""Where a dlq test's queue lives: one Redis server (the names as ever) or a Redis Cluster (hash-tagged names).

Usage (the ``dlq_layout`` fixture of tests/conftest.py gives one of each)::

    q = QueueLayout.server(redis_client, REDIS_URL)          # jobs / jobs:dead, opsbot:dlq:lease:jobs
    q = QueueLayout.on_cluster(cluster)                      # {jobs} / {jobs}:dead, opsbot:dlq:lease:{jobs}:jobs
    q.client, q.ready, q.dead, q.lease, q.task, q.trim, q.held_keys()
    q.configure(path)                                         # app.yaml: target `main` and queue `jobs` here

The scenarios of tests/test_dlq.py, test_dlq_crash.py and test_dlq_trim.py take a layout, so each
runs against both, the crash-safety ones included.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from tests.support.servers import RedisServer

__all__ = ["QueueLayout", "keys_matching"]


def keys_matching(client, pattern: str) -> list[bytes]:
    """KEYS on a server, or on every primary of a cluster (a cluster client asks one node only by default)."""
    if isinstance(client, RedisCluster):
        return sorted(client.keys(pattern, target_nodes=RedisCluster.PRIMARIES))
    return sorted(client.keys(pattern))


class QueueLayout:
    def __init__(self, kind: str, client, url: str, cluster=None, server: RedisServer | None = None):
        self.kind = kind
        self.client = client
        self.url = url
        self.cluster = cluster    # RedisClusterServers, for the cluster layout
        self.server = server      # a RedisServer of the test's own, when it has one
        tagged = (lambda name: f"{{{name}}}") if kind == "cluster" else (lambda name: name)
        self.ready, self.dead = tagged("jobs"), f"{tagged('jobs')}:dead"
        self.step_ready, self.step_dead = f"{tagged('step')}.ready", f"{tagged('step')}.dead"
        own = "{jobs}:jobs" if kind == "cluster" else "jobs"
        self.task, self.lease, self.trim = (f"opsbot:dlq:{part}:{own}" for part in ("task", "lease", "trim"))

    @classmethod
    def server(cls, client: redis.Redis, url: str, server: RedisServer | None = None) -> QueueLayout:
        return cls("server", client, url, server=server)

    @classmethod
    def on_cluster(cls, cluster) -> QueueLayout:
        return cls("cluster", cluster.client(), cluster.url, cluster=cluster)

    @classmethod
    @contextmanager
    def cluster_test(cls, cluster) -> Iterator[QueueLayout]:
        """The layout on a shared cluster for one test: flushed before and after (every node, by its own client)."""
        cluster.wait_ok()
        cluster.flush()
        layout = cls.on_cluster(cluster)
        try:
            yield layout
        finally:
            layout.client.close()
            cluster.wait_ok()
            cluster.flush()

    def __repr__(self) -> str:
        return f"QueueLayout({self.kind})"

    def held_keys(self) -> list[bytes]:
        return keys_matching(self.client, "opsbot:dlq:held:*")

    def node_of_queue(self) -> RedisServer:
        """The redis-server holding the queue (its own server, or the cluster node serving its slot)."""
        return self.cluster.node_for(self.dead) if self.cluster is not None else self.server

    def reconnect(self) -> None:
        """A fresh client after a server restart (a cluster waits for cluster_state:ok first)."""
        self.client.close()
        if self.cluster is not None:
            self.cluster.wait_ok()
            self.client = self.cluster.client()
        else:
            self.client = redis.Redis.from_url(self.url)

    def configure(self, path: Path, queue_extra: str = "", step: bool = False) -> Path:
        """Point app.yaml (from tests.conftest.write_config) at this layout: target `main`, queue `jobs`."""
        from tests.conftest import REDIS_URL

        text = path.read_text()
        cluster = ", cluster: true" if self.kind == "cluster" else ""
        text = text.replace(f'  main: {{url: "{REDIS_URL}"}}', f'  main: {{url: "{self.url}"{cluster}}}', 1)
        extra = f", {queue_extra}" if queue_extra else ""
        queues = f'  - {{name: jobs, redis: main, ready: "{self.ready}", dead: "{self.dead}"{extra}}}\n'
        if step:
            queues += f'  - {{name: step, redis: main, ready: "{self.step_ready}", dead: "{self.step_dead}"}}\n'
        text = text.replace('  - {name: jobs, redis: main, ready: jobs, dead: "jobs:dead"}\n', queues)
        path.write_text(text)
        return path

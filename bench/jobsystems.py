"""Requeue throughput of the ``rq`` and ``bullmq`` backends against the libraries' own bulk requeue.

    .venv/bin/python bench/requeue.py --system rq --entries 100000 [--rounds 3]
    .venv/bin/python bench/requeue.py --system bullmq --entries 100000 [--rounds 3]

Runs on a redis-server of its own (a free loopback port, stopped by PID at the end). Failed jobs
are made for real first: a few jobs fail in a real worker (``rq worker --burst`` / a ``bullmq``
Worker). Running 100,000 real failures would take a worker many minutes, so those real jobs are
then cloned, byte for byte (job hash, RQ's result stream entry, the failed set's score), under
new ids up to N. Each round clones N failed jobs and times one side; rounds alternate which side
goes first. Sides:
  * opsbot: ``start_requeue`` + ``run_requeue`` of the backend (what ``dlq requeue`` runs), in a
    child process whose peak RSS is reported;
  * RQ: ``rq requeue --all --queue mail`` (RQ's own CLI); BullMQ: ``Queue.retryJobs()``.
It prints the medians (jobs/s) and opsbot's ratio to the library's tool (target >= 1).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
SEEDS = 10
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _seed_rq(client: redis.Redis, url: str) -> None:
    from rq import Queue

    from tests.support import jobfuncs

    client.set(jobfuncs.BROKEN, 1)
    queue = Queue("mail", connection=client)
    for index in range(SEEDS):
        queue.enqueue(jobfuncs.send_email, f"user{index}@example.com")
    subprocess.run([sys.executable, "-m", "rq.cli", "worker", "--burst", "-w", "rq.worker.SimpleWorker", "--url",
                    url, "mail"], env=ENV, cwd=ROOT, check=True, capture_output=True)
    assert client.zcard("rq:failed:mail") == SEEDS


def _seed_bullmq(client: redis.Redis, url: str) -> None:
    from bullmq import Queue

    from tests.support import jobfuncs

    client.set(jobfuncs.BROKEN, 1)

    async def add() -> None:
        queue = Queue("pdf", {"connection": url})
        for index in range(SEEDS):
            await queue.add("render", {"to": f"user{index}@example.com"})
        await queue.close()

    asyncio.run(add())
    subprocess.run([sys.executable, "-m", "tests.support.bullworker", url, "pdf"], env=ENV, cwd=ROOT, check=True,
                   capture_output=True)
    assert client.zcard("bull:pdf:failed") == SEEDS


def _seeds(client: redis.Redis, system: str) -> list[tuple[dict, list, float]]:
    failed = "rq:failed:mail" if system == "rq" else "bull:pdf:failed"
    seeds = []
    for job_id, score in client.zrange(failed, 0, -1, withscores=True):
        key = f"rq:job:{job_id.decode()}" if system == "rq" else f"bull:pdf:{job_id.decode()}"
        results = client.xrange(f"rq:results:{job_id.decode()}") if system == "rq" else []
        seeds.append((client.hgetall(key), results, score))
    return seeds


def clone(client: redis.Redis, system: str, seeds: list, count: int) -> None:
    """N failed jobs, copies of the real ones, in the failed set; everything else of the queue emptied."""
    for pattern in ("rq:*", "bull:*", "opsbot:*"):
        keys = list(client.scan_iter(pattern, count=10000))
        for start in range(0, len(keys), 10000):
            client.unlink(*keys[start:start + 10000])
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        fields, results, score = seeds[index % len(seeds)]
        job_id = f"bench-{index:07d}" if system == "rq" else str(index + 1)
        if system == "rq":
            pipe.hset(f"rq:job:{job_id}", mapping=fields)
            for _, entry in results[-1:]:
                pipe.xadd(f"rq:results:{job_id}", entry)
            pipe.zadd("rq:failed:mail", {job_id: score})
        else:
            pipe.hset(f"bull:pdf:{job_id}", mapping=fields)
            pipe.zadd("bull:pdf:failed", {job_id: score - count + index})  # all in the past
        if index % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def child(system: str, url: str) -> None:
    """The bot's own requeue path in a fresh process: time and peak RSS."""
    import resource

    sys.path.insert(0, str(ROOT))
    from commands.dlq.bullmq_jobs import BullQueue
    from commands.dlq.entries import Filters
    from commands.dlq.rq_jobs import RqQueue
    from commands.dlq.settings import QueueSettings

    client = redis.Redis.from_url(url)
    if system == "rq":
        queue = RqQueue(QueueSettings(name="mail", backend="rq", queue="mail"), client)
    else:
        queue = BullQueue(QueueSettings(name="pdf", backend="bullmq", queue="pdf"), client)
    started = time.perf_counter()
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=0, requested_by="bench")
    report = queue.run_requeue(task.id, owner="bench", batch=1000)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "moved": report.task.moved, "outcome": report.outcome,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def opsbot_side(system: str, url: str) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__)), system, url], capture_output=True, text=True,
                         check=True, cwd=ROOT, env=ENV).stdout
    return json.loads(out.strip().splitlines()[-1])


def library_side(system: str, url: str) -> float:
    started = time.perf_counter()
    if system == "rq":
        subprocess.run([sys.executable, "-m", "rq.cli", "requeue", "--all", "--queue", "mail", "--url", url],
                       check=True, capture_output=True, cwd=ROOT, env=ENV)
    else:
        from bullmq import Queue

        async def retry() -> None:
            queue = Queue("pdf", {"connection": url})
            await queue.retryJobs({"count": 1000})
            await queue.close()

        asyncio.run(retry())
    return time.perf_counter() - started


def run(system: str, count: int, rounds: int) -> int:
    sys.path.insert(0, str(ROOT))
    from tests.support.servers import RedisServer

    server = RedisServer().start()
    try:
        client = server.client()
        (_seed_rq if system == "rq" else _seed_bullmq)(client, server.url)
        seeds = _seeds(client, system)
        failed, ready = ("rq:failed:mail", "rq:queue:mail") if system == "rq" else ("bull:pdf:failed",
                                                                                  "bull:pdf:wait")
        print(f"{system}: {count:,} failed jobs per round (clones of {SEEDS} real failures), {rounds} rounds")
        ours, theirs, rss = [], [], []
        for round_ in range(rounds):
            for side in (("opsbot", "library") if round_ % 2 == 0 else ("library", "opsbot")):
                clone(client, system, seeds, count)
                if side == "opsbot":
                    result = opsbot_side(system, server.url)
                    assert result["moved"] == count and result["outcome"] == "done", result
                    ours.append(count / result["seconds"])
                    rss.append(result["rss_mb"])
                else:
                    theirs.append(count / library_side(system, server.url))
                assert client.zcard(failed) == 0 and client.llen(ready) == count, (side, client.zcard(failed))
            print(f"  round {round_ + 1}: opsbot {ours[-1]:,.0f}/s, library {theirs[-1]:,.0f}/s")
        mine, lib = statistics.median(ours), statistics.median(theirs)
        tool = "rq requeue --all" if system == "rq" else "Queue.retryJobs"
        print(f"opsbot dlq requeue ({system}) median {mine:>10,.0f} jobs/s  peak RSS {max(rss):.0f} MB")
        print(f"{tool:<28} median {lib:>10,.0f} jobs/s")
        print(f"opsbot / {tool}: {mine / lib:.2f} (target >= 1)")
        return 0 if mine >= lib else 1
    finally:
        server.close()


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2])

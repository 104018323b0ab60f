"""Requeue throughput against baselines, on the real Redis.

    .venv/bin/python bench/requeue.py [--entries 1000000]
    .venv/bin/python bench/requeue.py --system rq|bullmq --entries 100000   # bench/jobsystems.py

Fills ``jobs:dead`` with N entries of about 200 bytes. It times an unfiltered and a
filtered (10% match) requeue through ``RedisListQueue.run_requeue``, the code path
``dlq requeue`` uses, each in a fresh child process whose peak RSS is reported. In
the same run it measures three baselines:
  * a plain redis-py loop of LMOVE, one per call (on 100,000 entries),
  * redis-py pipelines of 1,000 LMOVEs (on N entries),
  * ``redis-benchmark -c 1 -P 100`` of LMOVE on N entries (the server's own limit for one client).
It prints entries/s for each and the ratios against the targets: unfiltered >= 60% of
redis-benchmark and >= 5x the pipelines; filtered >= 150,000 entries scanned/s; peak
RSS < 150 MB. Uses Redis database 4 ($BENCH_REDIS_URL to change), flushed first.

``--sidekiq``: Sidekiq's dead set instead, against Sidekiq's own ``retry_all`` (bench/requeue_sidekiq.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/4")
TYPES = [f"type_{n}" for n in range(10)]  # filtering on one type matches 10%


def entry(index: int) -> bytes:
    body = {"id": f"job-{index:08d}", "type": TYPES[index % 10], "attempts": 5,
            "error": "SMTP timeout after 30s",
            "failedAt": "2026-11-21T10:15:02.123Z", "payload": {"to": "someone@example.com", "n": index}}
    raw = json.dumps(body)
    return (raw[:-1] + ', "pad": "' + "x" * max(0, 198 - len(raw) - 11) + '"}').encode()


def fill(client: redis.Redis, key: str, count: int) -> None:
    client.delete(key)
    pipe = client.pipeline(transaction=False)
    for start in range(0, count, 1000):
        pipe.lpush(key, *[entry(i) for i in range(start, min(start + 1000, count))])
        if start % 50000 == 0:
            pipe.execute()
    pipe.execute()


def child_requeue(type_filter: str | None) -> None:
    """Run in a fresh process: the bot's own requeue path, then report time and peak RSS."""
    import resource

    from commands.dlq.settings import QueueSettings
    from commands.dlq.entries import Filters
    from commands.dlq.redis_list import RedisListQueue

    client = redis.Redis.from_url(URL)
    queue = RedisListQueue(QueueSettings(name="jobs", redis="main"), client, prefix="bench:")
    client.delete(queue.task_key, queue.lease_key)
    filters = Filters(type=type_filter)
    started = time.perf_counter()
    task = queue.start_requeue(filters, limit=None, rate=None, matching=0, requested_by="bench")
    report = queue.run_requeue(task.id, owner="bench", batch=1000)
    seconds = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "moved": report.task.moved, "scanned": report.task.scanned,
                      "outcome": report.outcome, "rss_mb": rss_mb}))


def run_child(type_filter: str | None) -> dict:
    args = [sys.executable, __file__, "--child"] + (["--type", type_filter] if type_filter else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def lmove_loop(client: redis.Redis, count: int) -> float:
    fill(client, "base:src", count)
    client.delete("base:dst")
    started = time.perf_counter()
    for _ in range(count):
        client.lmove("base:src", "base:dst", "RIGHT", "LEFT")
    return count / (time.perf_counter() - started)


def lmove_pipelined(client: redis.Redis, count: int) -> float:
    fill(client, "base:src", count)
    client.delete("base:dst")
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for start in range(0, count, 1000):
        for _ in range(min(1000, count - start)):
            pipe.lmove("base:src", "base:dst", "RIGHT", "LEFT")
        pipe.execute()
    return count / (time.perf_counter() - started)


def redis_benchmark(client: redis.Redis, count: int) -> float:
    fill(client, "base:src", count)
    client.delete("base:dst")
    url = urlparse(URL)
    db = (url.path or "/0").lstrip("/") or "0"
    out = subprocess.run(
        ["redis-benchmark", "-h", url.hostname or "127.0.0.1", "-p", str(url.port or 6379), "--dbnum", db,
         "-c", "1", "-P", "100", "-n", str(count), "-q", "LMOVE", "base:src", "base:dst", "RIGHT", "LEFT"],
        capture_output=True, text=True, check=True).stdout
    moved = client.llen("base:dst")
    if moved < count * 0.99:
        raise SystemExit(f"redis-benchmark moved only {moved} of {count}: {out}")
    match = re.findall(r"([\d.]+) requests per second", out)
    return float(match[-1])


def main() -> int:
    if "--sidekiq" in sys.argv:  # Sidekiq's dead set vs DeadSet#retry_all, on a redis-server of its own
        from bench.requeue_sidekiq import main as sidekiq_main

        return sidekiq_main([a for a in sys.argv[1:] if a != "--sidekiq"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--type", help=argparse.SUPPRESS)
    parser.add_argument("--system", choices=("redis-list", "rq", "bullmq"), default="redis-list",
                        help="rq, bullmq: against the library's own bulk requeue (bench/jobsystems.py)")
    parser.add_argument("--rounds", type=int, default=3, help="rq, bullmq: interleaved rounds (medians)")
    args = parser.parse_args()
    if args.system != "redis-list":
        from bench.jobsystems import run

        return run(args.system, args.entries, args.rounds)
    if args.child:
        child_requeue(args.type)
        return 0

    client = redis.Redis.from_url(URL)
    client.flushdb()
    n = args.entries
    print(f"{n:,} entries of {len(entry(0))} bytes in jobs:dead ({URL})")

    fill(client, "jobs:dead", n)
    unfiltered = run_child(None)
    assert unfiltered["moved"] == n and client.llen("jobs") == n, unfiltered

    client.delete("jobs", "jobs:dead")
    fill(client, "jobs:dead", n)
    filtered = run_child("type_3")
    assert filtered["scanned"] == n and filtered["moved"] == n // 10, filtered
    assert client.llen("jobs:dead") == n - n // 10
    client.delete("jobs", "jobs:dead")

    loop = lmove_loop(client, min(n, 100_000))
    pipelined = lmove_pipelined(client, n)
    server = redis_benchmark(client, n)
    client.flushdb()

    unfiltered_rate = n / unfiltered["seconds"]
    scanned_rate = n / filtered["seconds"]
    rows = [
        ("dlq requeue, unfiltered", unfiltered_rate, f"moved {unfiltered['moved']:,}, peak RSS {unfiltered['rss_mb']:.0f} MB"),
        ("dlq requeue, 10% match", scanned_rate, f"scanned/s; moved {filtered['moved']:,}, peak RSS {filtered['rss_mb']:.0f} MB"),
        ("redis-py LMOVE loop", loop, "100,000 entries"),
        ("redis-py pipelines of 1000 LMOVE", pipelined, ""),
        ("redis-benchmark -c 1 -P 100 LMOVE", server, ""),
    ]
    for name, rate, note in rows:
        print(f"{name:<36}{rate:>14,.0f} entries/s  {note}")
    vs_server, vs_pipe = unfiltered_rate / server, unfiltered_rate / pipelined
    peak = max(unfiltered["rss_mb"], filtered["rss_mb"])
    print(f"unfiltered / redis-benchmark: {vs_server:.2f} (target >= 0.60)")
    print(f"unfiltered / pipelined:       {vs_pipe:.1f}x (target >= 5x)")
    print(f"filtered scan rate:           {scanned_rate:,.0f}/s (target >= 150,000/s)")
    print(f"peak RSS of the bot:          {peak:.0f} MB (target < 150 MB)")
    ok = vs_server >= 0.6 and vs_pipe >= 5 and scanned_rate >= 150_000 and peak < 150
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

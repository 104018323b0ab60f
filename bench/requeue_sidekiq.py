"""Requeue from Sidekiq's dead set: opsbot's ``sidekiq`` backend against Sidekiq's own ``DeadSet#retry_all``.

    .venv/bin/python bench/requeue_sidekiq.py [--entries 100000] [--rounds 3]
    .venv/bin/python bench/requeue.py --sidekiq [--entries 100000]     # the same

On a redis-server of its own (a free loopback port, stopped by PID at the end), a real
Sidekiq (Debian's ruby-sidekiq) kills a few jobs for real (``retry: 0``, the job raises);
those real dead jobs are then cloned in bulk (new jid, args and failed_at per clone, scores
spaced 1 ms apart) into N members of ``dead``. Each round fills the set afresh and times,
interleaved: ``SidekiqSet.run_requeue`` (the code path of ``dlq requeue``) in a fresh child
process, with its peak RSS, and ``ruby -e 'Sidekiq::DeadSet.new.retry_all'`` (timed inside
Ruby, so Ruby's start-up is not counted). Both must leave exactly N jobs in ``queue:mail``.
Prints medians of the rounds and the ratio (target: opsbot >= 1x Sidekiq's own, flat memory).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RETRY_ALL = ('require "sidekiq"; require "sidekiq/api"; t = Process.clock_gettime(Process::CLOCK_MONOTONIC); '
             'Sidekiq::DeadSet.new.retry_all; puts Process.clock_gettime(Process::CLOCK_MONOTONIC) - t')


def real_dead_jobs(url: str, folder: Path) -> list[dict]:
    """A few jobs killed by a real Sidekiq process."""
    from tests.support.sidekiq import SidekiqProcess, enqueue, wait_until

    client = redis.Redis.from_url(url)
    client.set("failing", "1")
    enqueue(url, folder, "FlakyJob", 6)
    with SidekiqProcess(url, folder) as sidekiq:
        wait_until(lambda: sidekiq.alive() and client.zcard("dead") == 6, what="6 real dead jobs")
    jobs = [json.loads(raw) for raw in client.zrange("dead", 0, -1)]
    client.delete("dead", "failing")
    return jobs


def clones(templates: list[dict], count: int) -> list[tuple[bytes, float]]:
    base = time.time() - 86400
    members = []
    for i in range(count):
        job = dict(templates[i % len(templates)])
        job["jid"] = f"{i:024x}"
        job["args"] = [i, *job["args"][1:]]
        job["failed_at"] = base + i / 1000
        members.append((json.dumps(job, separators=(",", ":")).encode(), base + i / 1000))
    return members


def fill(client: redis.Redis, members: list[tuple[bytes, float]]) -> None:
    client.delete("dead", "queue:mail", "queues", "bench:dlq:task:mail", "bench:dlq:lease:mail")
    for start in range(0, len(members), 10000):
        client.zadd("dead", dict(members[start:start + 10000]))


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM): getrusage's ru_maxrss would carry over the parent's from before exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(url: str) -> None:
    from commands.dlq.entries import Filters
    from commands.dlq.settings import QueueSettings
    from commands.dlq.sidekiq import SidekiqSet

    queue = SidekiqSet(QueueSettings(name="mail", backend="sidekiq", queue="dead"), redis.Redis.from_url(url),
                       prefix="bench:")
    started = time.perf_counter()
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=0, requested_by="bench")
    report = queue.run_requeue(task.id, owner="bench", batch=1000)
    print(json.dumps({"seconds": time.perf_counter() - started, "moved": report.task.moved,
                      "rss_mb": peak_rss_mb()}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    from tests.support.packages import debian_binary
    from tests.support.servers import RedisServer

    ruby = debian_binary("ruby-sidekiq", "ruby")
    n = args.entries
    with RedisServer() as server, tempfile.TemporaryDirectory() as folder:
        client = server.client()
        members = clones(real_dead_jobs(server.url, Path(folder)), n)
        print(f"{n:,} dead Sidekiq jobs of ~{len(members[0][0])} bytes (cloned from 6 real ones), "
              f"{args.rounds} interleaved rounds")
        ours, theirs, rss = [], [], []
        for _ in range(args.rounds):
            fill(client, members)
            out = subprocess.run([sys.executable, __file__, "--child", server.url], capture_output=True, text=True,
                                 check=True, cwd=ROOT).stdout
            result = json.loads(out.strip().splitlines()[-1])
            assert result["moved"] == n and client.llen("queue:mail") == n and client.zcard("dead") == 0, result
            ours.append(n / result["seconds"])
            rss.append(result["rss_mb"])
            fill(client, members)
            out = subprocess.run([ruby, "-e", RETRY_ALL], capture_output=True, text=True, check=True,
                                 env={**os.environ, "REDIS_URL": server.url}).stdout
            assert client.llen("queue:mail") == n and client.zcard("dead") == 0
            theirs.append(n / float(out.strip().splitlines()[-1]))
    mine, sidekiq = statistics.median(ours), statistics.median(theirs)
    print(f"{'opsbot dlq requeue (sidekiq backend)':<40}{mine:>12,.0f} jobs/s  peak RSS {max(rss):.0f} MB")
    print(f"{'Sidekiq::DeadSet#retry_all':<40}{sidekiq:>12,.0f} jobs/s")
    print(f"opsbot / retry_all: {mine / sidekiq:.1f}x (target >= 1x); rounds: "
          f"{', '.join(f'{a:,.0f}' for a in ours)} vs {', '.join(f'{b:,.0f}' for b in theirs)}")
    return 0 if mine >= sidekiq and max(rss) < 150 else 1


if __name__ == "__main__":
    sys.exit(main())

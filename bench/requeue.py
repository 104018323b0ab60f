"""Requeue throughput as a user runs it (a whole ``opsbot run`` process), against Redis's own limit.

    .venv/bin/python bench/requeue.py [--entries 1000000] [--rounds 3] [--before /tmp/before]
    .venv/bin/python bench/requeue.py --system rq|bullmq --entries 100000   # bench/jobsystems.py
    .venv/bin/python bench/requeue.py --sidekiq                             # bench/requeue_sidekiq.py

Fills ``jobs:dead`` with N entries of about 200 bytes, then times, each round and interleaved:
  * ``opsbot run --yes --json "dlq requeue jobs"``: the whole command, preview, confirm and move,
    as a fresh process whose own peak RSS is read (bench/process.py);
  * the same with ``--type type_3`` (a filter matching 10%): entries scanned per second;
  * ``redis-benchmark -c 1 -P 100`` of LMOVE over N entries (the server's own limit for one client).
It prints the medians and the ratios against the targets: unfiltered >= 0.6x redis-benchmark,
filtered >= 400,000 entries scanned/s, peak RSS < 100 MB. ``--before PATH`` runs another
checkout's code as well (``git worktree add /tmp/before <commit>``), in the same rounds.
Uses Redis database 4 ($BENCH_REDIS_URL to change), flushed first; the bot's own state is a
scratch database and prefix (bench/scratch.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.process import ProcessRun, opsbot  # noqa: E402
from bench.scratch import REDIS_URL, scratch  # noqa: E402

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
    parser.add_argument("--before", help="another checkout to measure in the same rounds")
    parser.add_argument("--system", choices=("redis-list", "rq", "bullmq"), default="redis-list",
                        help="rq, bullmq: against the library's own bulk requeue (bench/jobsystems.py)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--process", action="store_true",
                        help="rq, bullmq: time both sides as whole processes, start-up included")
    args = parser.parse_args()
    if args.system != "redis-list":
        from bench.jobsystems import run

        return run(args.system, args.entries, args.rounds, args.before, args.process)
    client = redis.Redis.from_url(URL)
    client.flushdb()
    n = args.entries
    print(f"{n:,} entries of {len(entry(0))} bytes in jobs:dead ({URL}), {args.rounds} interleaved rounds")
    trees = {"opsbot": None, **({"before": Path(args.before)} if args.before else {})}
    with scratch("requeue") as place:
        config = place.folder / "app.yaml"
        config.write_text(
            f"state: {{redis_url: '{REDIS_URL}', database_url: '{place.url}', prefix: '{place.prefix}',"
            f" run_migrations: true}}\n"
            f"redis: {{main: {{url: '{URL}'}}}}\n"
            "queues:\n  - {name: jobs, redis: main, ready: jobs, dead: 'jobs:dead'}\n")
        for tree in trees.values():  # migrations, and each tree's bytecode, once
            opsbot(config, "run", "--json", "dlq status", tree=tree)
        runs: dict[str, list[ProcessRun]] = {}
        servers = []
        for round_no in range(1, args.rounds + 1):
            for label, tree in trees.items():
                for kind, text in (("unfiltered", "dlq requeue jobs"), ("filtered", "dlq requeue jobs --type type_3")):
                    run = requeue_once(client, config, text, n, tree)
                    runs.setdefault(f"{label} {kind}", []).append(run)
                    print(f"round {round_no}: {label:<7} {kind:<10} {run.seconds:6.2f}s  {n / run.seconds:>10,.0f}/s"
                          f"  peak RSS {run.rss_mb:.0f} MB", flush=True)
            servers.append(redis_benchmark(client, n))
            print(f"round {round_no}: redis-benchmark -c 1 -P 100 LMOVE {servers[-1]:>12,.0f}/s", flush=True)
    client.flushdb()
    server = statistics.median(servers)
    print(f"\nmedians over {args.rounds} rounds (entries/s, whole process):")
    print(f"{'redis-benchmark -c 1 -P 100 LMOVE':<36}{server:>12,.0f}")
    for label, measured in runs.items():
        seconds = statistics.median(r.seconds for r in measured)
        rss = max(r.rss_mb for r in measured)
        print(f"{label:<36}{n / seconds:>12,.0f}  {seconds:.2f}s  x{n / seconds / server:.2f} of redis-benchmark"
              f"  peak RSS {rss:.0f} MB")
    unfiltered = n / statistics.median(r.seconds for r in runs["opsbot unfiltered"])
    scanned = n / statistics.median(r.seconds for r in runs["opsbot filtered"])
    peak = max(r.rss_mb for key in ("opsbot unfiltered", "opsbot filtered") for r in runs[key])
    print(f"unfiltered / redis-benchmark: {unfiltered / server:.2f} (target >= 0.60)")
    print(f"filtered, scanned/s:          {scanned:,.0f} (target >= 400,000)")
    print(f"peak RSS of the bot:          {peak:.0f} MB (target < 100 MB)")
    return 0 if unfiltered / server >= 0.6 and scanned >= 400_000 and peak < 100 else 1


def requeue_once(client: redis.Redis, config: Path, text: str, n: int, tree: Path | None) -> ProcessRun:
    """One whole ``opsbot run --yes`` requeue over a freshly filled dead list, checked after."""
    client.delete("jobs", "jobs:dead")
    fill(client, "jobs:dead", n)
    run = opsbot(config, "run", "--yes", "--json", text, tree=tree)
    want = n if "--type" not in text else n // 10
    if run.exit_code != 0 or not isinstance(run.body, dict) or run.body["data"].get("moved") != want:
        raise SystemExit(f"{text}: exit {run.exit_code}: {run.body!r:.500} {run.stderr[-2000:]}")
    if client.llen("jobs") != want or client.llen("jobs:dead") != n - want:
        raise SystemExit(f"{text}: the lists do not add up after the requeue")
    client.delete("jobs", "jobs:dead")
    return run


if __name__ == "__main__":
    sys.exit(main())

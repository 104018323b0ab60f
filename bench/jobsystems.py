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
It prints the medians (jobs/s) and opsbot's ratio to the library's tool (target >= 1), and the
redis-server's CPU time each side cost (INFO cpu, before and after; steadier than wall time on a
loaded machine, as it leaves out the time the sides wait for a core).

What each side's clock covers:
  * opsbot: inside the child, from just before ``start_requeue`` (the selection) to the end of
    ``run_requeue``: not the interpreter's start-up, the imports, the connection or the preview;
  * ``rq requeue --all``: the whole CLI process, start-up included (``subprocess.run``);
  * ``Queue.retryJobs``: in the bench's own process (bullmq already imported), ``asyncio.run`` of
    ``Queue(...)``, ``retryJobs({"count": 1000})`` and ``close()``: not start-up or imports.
``--process`` times both sides as a user runs them instead, each a whole process, start-up included:
``opsbot run --yes --json "dlq requeue pdf"`` (preview, confirm, selection, batches; bench/process.py;
state in $DATABASE_URL and $REDIS_URL, the task keys on the bench's server) against
``python -c '<Queue(...).retryJobs({"count": 1000})>'`` (RQ: its CLI, as above).
``--before PATH`` times another checkout's opsbot side too (its own bench/jobsystems.py child),
in the same rounds. ``$BENCH_REDIS_PORT`` puts the redis-server on that port instead of a free one.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
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


def opsbot_side(system: str, url: str, tree: Path = ROOT) -> dict:
    out = subprocess.run([sys.executable, str(tree / "bench" / "jobsystems.py"), system, url], capture_output=True,
                         text=True, check=True, cwd=tree, env={**ENV, "PYTHONPATH": str(tree)}).stdout
    return json.loads(out.strip().splitlines()[-1])


RETRY_JOBS = """
import asyncio, sys
from bullmq import Queue

async def retry():
    queue = Queue("pdf", {"connection": sys.argv[1]})
    await queue.retryJobs({"count": 1000})
    await queue.close()

asyncio.run(retry())
"""


def opsbot_process(system: str, config: Path, tree: Path) -> dict:
    """``opsbot run --yes --json "dlq requeue ..."``, a whole process as a user starts it."""
    from bench.process import opsbot

    run = opsbot(config, "run", "--yes", "--json", f"dlq requeue {'mail' if system == 'rq' else 'pdf'}", tree=tree)
    if run.exit_code != 0 or not isinstance(run.body, dict):
        raise SystemExit(f"exit {run.exit_code}: {run.body!r:.500} {run.stderr[-2000:]}")
    return {"seconds": run.seconds, "moved": run.body["data"].get("moved"), "outcome": "done", "rss_mb": run.rss_mb}


def library_process(system: str, url: str) -> float:
    if system == "rq":
        return library_side(system, url)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", RETRY_JOBS, url], check=True, capture_output=True, cwd=ROOT, env=ENV)
    return time.perf_counter() - started


def process_config(system: str, url: str) -> Path:
    """An app.yaml for ``--process``: the queue on the bench's server, the bot's state where the tests' is."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="opsbot-bench-jobs-"))
    queue = "{name: mail, backend: rq, redis: main, queue: mail}" if system == "rq" else \
        "{name: pdf, backend: bullmq, redis: main, queue: pdf}"
    config = folder / "app.yaml"
    config.write_text(
        f"state: {{redis_url: '{os.environ.get('REDIS_URL', 'redis://127.0.0.1:6379/3')}', database_url: "
        f"'{os.environ.get('DATABASE_URL', 'postgresql://127.0.0.1:5432/postgres')}', prefix: 'opsbot:', "
        f"run_migrations: true}}\nredis: {{main: {{url: '{url}'}}}}\nqueues:\n  - {queue}\n")
    return config


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


def run(system: str, count: int, rounds: int, before: str | None = None, process: bool = False) -> int:
    sys.path.insert(0, str(ROOT))
    from tests.support.servers import RedisServer

    server = RedisServer()
    if os.environ.get("BENCH_REDIS_PORT"):
        server.port = int(os.environ["BENCH_REDIS_PORT"])
        server.url = f"redis://127.0.0.1:{server.port}/0"
    server.start()
    config: Path | None = None
    try:
        client = server.client()
        (_seed_rq if system == "rq" else _seed_bullmq)(client, server.url)
        seeds = _seeds(client, system)
        failed, ready = ("rq:failed:mail", "rq:queue:mail") if system == "rq" else ("bull:pdf:failed",
                                                                                  "bull:pdf:wait")
        print(f"{system}: {count:,} failed jobs per round (clones of {SEEDS} real failures), {rounds} rounds")
        sides = {"opsbot": ROOT, **({"before": Path(before)} if before else {}), "library": None}
        config = process_config(system, server.url) if process else None
        if config is not None:
            print("timed as whole processes (start-up included): opsbot run --yes, and the library's tool")
            for tree in (path for path in sides.values() if path is not None):   # migrations, bytecode: once
                clone(client, system, seeds, 10)
                opsbot_process(system, config, tree)
        rates: dict[str, list[float]] = {side: [] for side in sides}
        rss: dict[str, list[float]] = {side: [] for side in sides}
        cpu: dict[str, list[float]] = {side: [] for side in sides}   # redis-server's CPU seconds, per side

        def server_cpu() -> float:
            info = client.info("cpu")
            return info["used_cpu_user"] + info["used_cpu_sys"]

        for round_ in range(rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for side in order:
                clone(client, system, seeds, count)
                spent = server_cpu()
                if sides[side] is not None:
                    result = opsbot_process(system, config, sides[side]) if config is not None else \
                        opsbot_side(system, server.url, sides[side])
                    assert result["moved"] == count and result["outcome"] == "done", (side, result)
                    rates[side].append(count / result["seconds"])
                    rss[side].append(result["rss_mb"])
                else:
                    rates[side].append(count / (library_process if process else library_side)(system, server.url))
                cpu[side].append(server_cpu() - spent)
                assert client.zcard(failed) == 0 and client.llen(ready) == count, (side, client.zcard(failed))
            print(f"  round {round_ + 1}: " + ", ".join(f"{side} {rates[side][-1]:,.0f}/s (Redis CPU "
                                                      f"{cpu[side][-1]:.2f}s)" for side in sides), flush=True)
        lib = statistics.median(rates["library"])
        tool = "rq requeue --all" if system == "rq" else "Queue.retryJobs"
        for side in sides:
            if side != "library":
                mine = statistics.median(rates[side])
                print(f"{side + f' dlq requeue ({system})':<32} median {mine:>10,.0f} jobs/s  "
                      f"x{mine / lib:.2f} of {tool}  peak RSS {max(rss[side]):.0f} MB  "
                      f"Redis CPU {statistics.median(cpu[side]):.2f}s")
        print(f"{tool:<32} median {lib:>10,.0f} jobs/s  Redis CPU {statistics.median(cpu['library']):.2f}s")
        mine = statistics.median(rates["opsbot"])
        print(f"opsbot / {tool}: {mine / lib:.2f} (target >= 1)")
        return 0 if mine >= lib else 1
    finally:
        server.close()
        if config is not None:
            shutil.rmtree(config.parent, ignore_errors=True)


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2])

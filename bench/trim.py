"""Whole-process ``dlq trim`` (archive included) against COPY of the same rows into the archive table.

    REDIS_URL=redis://127.0.0.1:6379/14 .venv/bin/python bench/trim.py [--entries 1000000] [--rounds 3]
        [--before /tmp/before]

The trim is timed as a user runs it: ``opsbot run --yes --json "dlq trim jobs --keep 0"``
as a process, on a scratch app.yaml (bench/scratch.py: a database, a Redis key prefix on
``$REDIS_URL`` and a folder of its own, all removed afterwards), over ``--entries`` dead
letters of about 200 bytes (bench/requeue.py's) in a redis-list queue. It reads every entry
from Redis, archives it in PostgreSQL (``opsbot.dlq_archive``) and only then removes it.

The baseline is the cost of archiving alone: ``COPY <table> FROM STDIN`` of exactly the
rows the archive ends up holding (task id, ordinal, queue, dead key, entry bytes), produced
before any timing into files in the scratch folder (text format, and binary format), and
streamed in 1 MiB chunks with psycopg's ``copy`` into a fresh table made ``LIKE
opsbot.dlq_archive INCLUDING ALL`` (same columns, defaults, primary key and index). The
ratio is taken against the faster of the two formats. Before each trim the archive table is
emptied (TRUNCATE), so both start from an empty table with the same indexes.

Each round fills the dead list (untimed), runs the trim, checks that the list is empty and
the archive holds every entry exactly once, then runs both COPYs; the order of trim and
COPY alternates between rounds. Also timed each round: the same command once the list is
empty ("Nothing to trim": start-up, config, connections and the preview, no work), which
says how much of the trim's time is start-up. Prints medians of the rounds, the peak RSS of
the trim process and the ratio (target: trim <= 1.5x the COPY). ``--before PATH`` also runs
another checkout's trim (``git worktree add /tmp/before <commit>``) in the same rounds. Each trim
also reports the CPU seconds of the opsbot process and, when Redis runs on this machine, of the
Redis server (its /proc/<pid>/stat, pid from INFO).
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.process import opsbot  # noqa: E402
from bench.requeue import entry, fill  # noqa: E402
from bench.scratch import REDIS_URL, Scratch, scratch  # noqa: E402

TABLE = "opsbot.dlq_archive"
BASE = "public.bench_copy"
COLUMNS = "task_id, ordinal, queue, dead_key, entry"
CHUNK = 2 ** 20


def write_config(place: Scratch) -> Path:
    config = place.folder / "app.yaml"
    config.write_text(
        f"state: {{redis_url: '{REDIS_URL}', database_url: '{place.url}', prefix: '{place.prefix}',"
        " run_migrations: true}\n"
        f"redis:\n  main: {{url: '{REDIS_URL}'}}\n"
        f"queues:\n  - {{name: jobs, redis: main, ready: '{place.prefix}jobs', dead: '{place.prefix}jobs:dead'}}\n")
    return config


def produce_rows(folder: Path, count: int, dead_key: str) -> dict[str, Path]:
    """The rows a trim of ``count`` entries archives, as COPY text and COPY binary files."""
    task, queue = b"0123456789ab", b"jobs"
    text, binary = folder / "rows.txt", folder / "rows.bin"
    first = struct.pack(">hi", 5, len(task)) + task
    middle = struct.pack(">i", len(queue)) + queue + struct.pack(">i", len(dead_key)) + dead_key.encode()
    with text.open("wb") as t, binary.open("wb") as b:
        b.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
        for start in range(0, count, 10_000):
            entries = [(n, entry(n)) for n in range(start, min(start + 10_000, count))]
            t.write(b"".join(b"%s\t%d\t%s\t%s\t\\\\x%s\n" % (task, n, queue, dead_key.encode(), e.hex().encode())
                             for n, e in entries))
            b.write(b"".join(first + struct.pack(">iq", 8, n) + middle + struct.pack(">i", len(e)) + e
                             for n, e in entries))
        b.write(struct.pack(">h", -1))
    return {"text": text, "binary": binary}


def copy_baseline(url: str, rows: Path, fmt: str, count: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {BASE}")
        conn.execute(f"CREATE TABLE {BASE} (LIKE {TABLE} INCLUDING ALL)")
        conn.execute("CHECKPOINT")
        options = " (FORMAT BINARY)" if fmt == "binary" else ""
        started = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur, rows.open("rb") as source:
            with cur.copy(f"COPY {BASE} ({COLUMNS}) FROM STDIN{options}") as copy:
                while chunk := source.read(CHUNK):
                    copy.write(chunk)
        seconds = time.perf_counter() - started
        loaded = conn.execute(f"SELECT count(*) FROM {BASE}").fetchone()[0]
        conn.execute(f"DROP TABLE {BASE}")
    assert loaded == count, (fmt, loaded)
    return seconds


def run_opsbot(config: Path, text: str, tree: Path | None = None) -> tuple[float, float, dict, float]:
    """Wall seconds, peak RSS (MB), the JSON result and the CPU seconds of ``opsbot run --yes --json TEXT``."""
    run = opsbot(config, "run", "--yes", "--json", text, env={"RUN_MIGRATIONS": "true"}, tree=tree)
    if run.exit_code != 0 or not isinstance(run.body, dict):
        raise SystemExit(f"opsbot run {text!r} exited {run.exit_code}: {run.body!r:.500} {run.stderr[-2000:]}")
    return run.seconds, run.rss_mb, run.body, run.cpu


def redis_cpu(client: redis.Redis) -> float:
    """CPU seconds the Redis server has used (all its threads), or nan when it is not on this machine."""
    try:
        stat = Path(f"/proc/{client.info('server')['process_id']}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def trim_round(config: Path, place: Scratch, client: redis.Redis, dead: str, count: int,
               tree: Path | None = None) -> dict:
    fill(client, dead, count)
    with psycopg.connect(place.url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLE}")
        conn.execute("CHECKPOINT")
    server = redis_cpu(client)
    seconds, rss, result, cpu = run_opsbot(config, "dlq trim jobs --keep 0", tree)
    server = redis_cpu(client) - server
    assert result["status"] == "ok" and result["data"]["dropped_now"] == count, result
    assert client.llen(dead) == 0
    with psycopg.connect(place.url) as conn:
        rows, distinct = conn.execute(f"SELECT count(*), count(DISTINCT entry) FROM {TABLE}").fetchone()
    assert rows == distinct == count, (rows, distinct)
    idle, _, nothing, _ = run_opsbot(config, "dlq trim jobs --keep 0", tree)
    assert nothing["data"]["to_drop"] == 0, nothing
    return {"seconds": seconds, "rss_mb": rss, "idle": idle, "cpu": cpu, "redis_cpu": server}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", help="another checkout whose trim to time in the same rounds")
    args = parser.parse_args()
    with scratch("trim") as place:
        return run(args, place)


def run(args: argparse.Namespace, place: Scratch) -> int:
    n = args.entries
    client = redis.Redis.from_url(REDIS_URL)
    dead = f"{place.prefix}jobs:dead"
    config = write_config(place)
    trees = {"trim": None, **({"before": Path(args.before)} if args.before else {})}
    for tree in trees.values():  # migrates the scratch database; each tree's bytecode once
        run_opsbot(config, "dlq status jobs", tree)
    files = produce_rows(place.folder, n, dead)
    print(f"{n:,} entries of {len(entry(0))} bytes; Redis {REDIS_URL}; load {os.getloadavg()[0]:.2f}")
    trims: dict[str, list[dict]] = {label: [] for label in trees}
    copies: dict[str, list[float]] = {"text": [], "binary": []}
    for number in range(args.rounds):
        def baseline() -> None:
            for fmt, rows in files.items():
                copies[fmt].append(copy_baseline(place.url, rows, fmt, n))

        def trimmer(label: str) -> Callable[[], None]:
            return lambda: trims[label].append(trim_round(config, place, client, dead, n, trees[label]))

        steps = [*(trimmer(label) for label in trees), baseline]
        for step in steps if number % 2 == 0 else steps[::-1]:
            step()
        said = "; ".join(f"{label} {t['seconds']:.2f}s (CPU {t['cpu']:.2f}s, Redis CPU {t['redis_cpu']:.2f}s, "
                         f"peak RSS {t['rss_mb']:.0f} MB, nothing-to-trim run {t['idle']:.2f}s)"
                         for label, t in ((label, runs[-1]) for label, runs in trims.items()))
        print(f"round {number + 1}: {said}; COPY text {copies['text'][-1]:.2f}s, binary {copies['binary'][-1]:.2f}s;"
              f" load {os.getloadavg()[0]:.2f}", flush=True)
    medians = {fmt: statistics.median(times) for fmt, times in copies.items()}
    fastest = min(medians, key=medians.get)
    rows = []
    for label, runs in trims.items():
        trim = statistics.median(t["seconds"] for t in runs)
        idle = statistics.median(t["idle"] for t in runs)
        rows += [(f"{label}: opsbot run dlq trim --keep 0", trim,
                  f"{trim / medians[fastest]:.2f}x; peak RSS {max(t['rss_mb'] for t in runs):.0f} MB, "
                  f"CPU {statistics.median(t['cpu'] for t in runs):.2f}s, "
                  f"Redis CPU {statistics.median(t['redis_cpu'] for t in runs):.2f}s"),
                 ("  of which start-up (nothing to trim)", idle, f"{idle / trim:.0%} of the trim")]
    rows += [("COPY FROM STDIN, text", medians["text"], ""),
             ("COPY FROM STDIN, binary", medians["binary"], "")]
    print(f"medians of {args.rounds} rounds:")
    for name, seconds, note in rows:
        print(f"  {name:<40}{seconds:>7.2f}s {n / seconds:>12,.0f} entries/s  {note}")
    trim = statistics.median(t["seconds"] for t in trims["trim"])
    idle = statistics.median(t["idle"] for t in trims["trim"])
    ratio = trim / medians[fastest]
    print(f"trim / COPY ({fastest}): {ratio:.2f}x (target <= 1.5x); without start-up: "
          f"{(trim - idle) / medians[fastest]:.2f}x; text COPY: {trim / medians['text']:.2f}x")
    return 0 if ratio <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())

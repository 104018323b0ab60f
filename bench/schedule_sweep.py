"""What scheduling costs: an idle sweep, and a scheduled run against the same command typed, on the real servers.

    .venv/bin/python bench/schedule_sweep.py [--schedules 50] [--rounds 200]

Creates a throw-away database on ``$BENCH_DATABASE_URL``'s server (default the loopback one) and
uses the Redis database ``$REDIS_URL`` names (default 3; keys under a unique prefix, deleted at the
end). With ``--schedules`` schedules of ``dlq status`` configured it times, ``--rounds`` times each
(median per call):

- an idle sweep (nothing due: the sync query and the two claim queries), against ``SELECT 1`` on a
  pooled connection (the baseline: one round trip);
- a scheduled run (claim, run through the engine, record, gauges), against ``engine.handle("dlq
  status")`` (the baseline: the command as typed, action log and gauges included).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config.settings import load_settings  # noqa: E402
from bot.core.invocation import Actor, Where  # noqa: E402
from bot.runtime.factory import Runtime  # noqa: E402
from commands.schedule.runner import ScheduleRunner  # noqa: E402
from bench.scratch import REDIS_URL, Scratch, scratch  # noqa: E402



def median_of(fn, rounds: int) -> float:
    times = []
    for n in range(rounds):
        started = time.perf_counter()
        fn(n)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schedules", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with scratch("schedule") as place:
        run(args, place)


def run(args: argparse.Namespace, place: Scratch) -> None:
    folder, url, prefix = place.folder, place.url, place.prefix
    schedules = "".join(f"  - {{name: s{n}, every: 1m, run: dlq status}}\n" for n in range(args.schedules))
    config = folder / "app.yaml"
    config.write_text(f"""
state: {{redis_url: "{REDIS_URL}", database_url: "{url}", prefix: "{prefix}"}}
limits: {{per_user: "0", guarded_per_user: "0", per_command: "0"}}
redis: {{main: {{url: "{REDIS_URL}"}}}}
queues: [{{name: jobs, redis: main, ready: "{prefix}jobs", dead: "{prefix}jobs:dead"}}]
schedules:
{schedules}""")
    runtime = Runtime.build(load_settings(config))
    try:
        runtime.state.migrate()
        runner = runtime.services.get(ScheduleRunner)
        now = [datetime(2026, 1, 1, tzinfo=UTC)]
        runner.clock = lambda: now[0]
        runner.sweep(wait=True)  # rows created; the first slots fall due at the next minute

        def select_one(_):
            with runtime.state.pool.connection() as conn:
                conn.execute("SELECT 1").fetchone()

        idle_base = median_of(select_one, args.rounds)
        idle = median_of(lambda _: runner.sweep(wait=True), args.rounds)
        actor, where = Actor("bench"), Where("cli")
        typed = median_of(lambda _: runtime.engine.handle("dlq status", actor, where), args.rounds)

        def one_slot(_):  # each round: one minute later, so every schedule is due; time one of them
            now[0] += timedelta(minutes=1)
            started = time.perf_counter()
            claimed = runner.sweep(wait=True)
            elapsed.append((time.perf_counter() - started) / claimed)

        elapsed: list[float] = []
        rounds = max(3, args.rounds // args.schedules)
        for n in range(rounds):
            one_slot(n)
        scheduled = statistics.median(elapsed)
        print(f"{args.schedules} schedules configured, {args.rounds} rounds")
        print(f"idle sweep           {idle * 1000:8.2f} ms   SELECT 1 {idle_base * 1000:6.2f} ms   ratio"
              f" {idle / idle_base:5.1f}x")
        print(f"scheduled run        {scheduled * 1000:8.2f} ms   typed    {typed * 1000:6.2f} ms   ratio"
              f" {scheduled / typed:5.2f}x  (per run, {rounds} sweeps of {args.schedules})")
    finally:
        runtime.close()

if __name__ == "__main__":
    main()

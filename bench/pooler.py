"""What a transaction-mode pooler and turning prepared statements off cost the action log.

    .venv/bin/python bench/pooler.py [--appends 500] [--rounds 3]

Times, in one process and one thread, ``--appends`` action-log appends on the same throw-away
database three ways, interleaved per round: direct with psycopg's prepared statements (the
baseline), direct with them off (``pooler: transaction``), and through a PgBouncer of its own in
transaction mode (off, as required there). Prints the medians and their ratios to the baseline.
Needs PostgreSQL (``$BENCH_DATABASE_URL``, default loopback), Redis (``$REDIS_URL``, database 10
by default; keys under a unique prefix, deleted at the end) and the ``pgbouncer`` binary.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config.settings import load_settings  # noqa: E402
from bot.store.state import State  # noqa: E402
from tests.support.pgbouncer import PgBouncer  # noqa: E402
from bench.scratch import REDIS_URL, Scratch, scratch  # noqa: E402

PAYLOAD = {"command": "dlq trim", "text": "dlq trim jobs --keep 100", "channel": "C0123", "pending_id": "p-01"}


def state_for(folder: Path, url: str, pooler: str, prefix: str) -> State:
    config = folder / f"{pooler}-{secrets.token_hex(2)}.yaml"
    config.write_text(f"state: {{redis_url: '{REDIS_URL}', database_url: '{url}', prefix: '{prefix}',"
                      f" database_pooler: {pooler}}}\n")
    return State(load_settings(config, env=os.environ))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--appends", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with scratch("pooler") as place:
        run(args, place)


def run(args: argparse.Namespace, place: Scratch) -> None:
    folder, url, prefix = place.folder, place.url, place.prefix
    bouncer = PgBouncer(url, pool_size=2).start()
    states = {}
    try:
        states = {"direct, prepared (baseline)": state_for(folder, url, "none", prefix),
                  "direct, no prepared statements": state_for(folder, url, "transaction", prefix),
                  "PgBouncer transaction mode": state_for(folder, bouncer.url, "transaction", prefix)}
        next(iter(states.values())).migrate()
        times: dict[str, list[float]] = {label: [] for label in states}
        for _ in range(args.rounds):
            for label, state in states.items():
                log = state.action_log
                log.append("request", actor="UWARM", payload=PAYLOAD)
                started = time.perf_counter()
                for n in range(args.appends):
                    log.append("request", actor="U1", payload={**PAYLOAD, "n": n}, tenant="T1")
                times[label].append(time.perf_counter() - started)
        base = statistics.median(next(iter(times.values())))
        for label, values in times.items():
            median = statistics.median(values)
            print(f"{label}: {args.appends:,} appends in {median:.3f}s median of {args.rounds}"
                  f" ({median / args.appends * 1000:.2f} ms each), ratio {median / base:.2f}")
    finally:
        for state in states.values():
            state.close()
        bouncer.close()

if __name__ == "__main__":
    main()

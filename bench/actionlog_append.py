"""The cost of an action-log append (and of verifying the result), on the real Redis and PostgreSQL.

    .venv/bin/python bench/actionlog_append.py [--appends 1000] [--rounds 3]

Creates a throw-away database on ``$BENCH_DATABASE_URL``'s server (default the loopback
one), migrates the bot's schema into it and times, in one process and one thread,
``--appends`` appends of a typical engine payload, ``--rounds`` times (median
printed). When the build has them it also times ``append_or_keep`` and a full and
an incremental ``verify``. Redis keys use a unique prefix on ``$REDIS_URL``
(default database 10) and are deleted at the end; the database is dropped.
Set ``OPSBOT_LOG_SECRET`` to time the anchored path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config.settings import load_settings  # noqa: E402
from bot.config.settings import StateSettings  # noqa: E402
from bot.store.state import State  # noqa: E402
from bench.scratch import REDIS_URL, Scratch, scratch  # noqa: E402

PAYLOAD = {"command": "dlq requeue", "text": "dlq requeue jobs --type send_email --limit 300", "channel": "C0123",
           "thread_ts": None, "local_admin": False, "pending_id": "p-0123456789abcdef"}


def timed(fn, count: int) -> float:
    started = time.perf_counter()
    for n in range(count):
        fn(n)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--appends", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with scratch("actionlog") as place:
        run(args, place)


def run(args: argparse.Namespace, place: Scratch) -> None:
    config = place.folder / "app.yaml"
    anchored = "log_secret" in StateSettings.model_fields
    secret = ", log_secret: '${OPSBOT_LOG_SECRET:-}'" if anchored else ""
    config.write_text(f"state: {{redis_url: '{REDIS_URL}', database_url: '{place.url}', prefix: '{place.prefix}'{secret}}}\n")
    settings = load_settings(config, env=os.environ)
    state = State(settings)
    try:
        state.migrate()
        log = state.action_log
        log.append("request", actor="UWARM", payload=PAYLOAD)
        kinds = [("append", lambda n: log.append("request", actor="U1", payload={**PAYLOAD, "n": n}, tenant="T1"))]
        if hasattr(log, "append_or_keep"):
            kinds.append(("append_or_keep",
                          lambda n: log.append_or_keep("outcome", actor="U1", payload={**PAYLOAD, "n": n}, tenant="T1")))
        for label, fn in kinds:
            times = [timed(fn, args.appends) for _ in range(args.rounds)]
            median = statistics.median(times)
            print(f"{label}: {args.appends:,} appends in {median:.3f}s (median of {args.rounds}:"
                  f" {', '.join(f'{t:.3f}' for t in times)}) = {median / args.appends * 1000:.2f} ms each")
        for label, kwargs in (("verify (full)", {"full": True}), ("verify (incremental)", {})):
            try:
                started = time.perf_counter()
                report = log.verify(**kwargs)
            except TypeError:
                continue
            print(f"{label}: {report.rows:,} rows, ok={report.ok} in {time.perf_counter() - started:.3f}s")
    finally:
        state.close()

if __name__ == "__main__":
    main()

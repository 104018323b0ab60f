"""``audit verify --all`` against the cost of just reading the rows, on the real PostgreSQL.

    .venv/bin/python bench/audit_verify.py [--sizes 1000000,4000000] [--rounds 3] [--compare /path/to/other/checkout]

For each size it fills ``"AuditLog"`` (4 tenants, valid v1 chains hashed by
bench/audit_data.py, ``timestamp(3)`` and the (tenant, createdAt, id) index) in the
database ``opsbot_bench_audit`` (created if missing; $BENCH_DATABASE_URL to change).
Then, interleaved over the rounds, it times:
  * ``psql -c "COPY (<the bot's exact SELECT>) TO STDOUT" > /dev/null``: reading the rows
    with the same columns, formatting and order;
  * ``psql -c "COPY (<the raw columns> ORDER BY ...) TO STDOUT"``: without the text formatting;
  * ``opsbot run --json audit verify --all`` in a fresh process: the walk's own time
    (from its JSON), the process's wall time, and its peak RSS;
  * with ``--compare DIR``, the same command run from another checkout (e.g. main, for a
    before/after in one run), in the same rounds.
It prints rows/s, the medians, and the ratios against the targets (issue 18): verify, whole
process, <= 1.2x the raw-column COPY; peak RSS < 150 MB at every size. The bot's Redis is
$REDIS_URL (database 3 by default).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.process import opsbot  # noqa: E402

from audit_data import fill  # noqa: E402

from commands.audit.settings import AuditSettings  # noqa: E402
from commands.audit.scheme import Layout  # noqa: E402

URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://127.0.0.1:5432/opsbot_bench_audit")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/3")


def ensure_database(url: str) -> None:
    info = conninfo_to_dict(url)
    name = info["dbname"]
    admin = make_conninfo(url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def queries(url: str) -> tuple[str, str]:
    with psycopg.connect(url) as conn:
        layout = Layout.load(conn, AuditSettings())
        exact = layout.select(sql.SQL("TRUE")).as_string(conn)
    raw = ('SELECT "tenantId", id, "createdAt", "prevHash", hash, actor, action, payload FROM "AuditLog"'
           ' ORDER BY "tenantId", "createdAt", id')
    return exact, raw


def time_psql(url: str, query: str) -> float:
    started = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        subprocess.run(["psql", url, "-X", "-q", "-c", f"COPY ({query}) TO STDOUT"], stdout=sink, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000000,4000000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", type=Path, help="another checkout whose verify is timed in the same rounds")
    args = parser.parse_args()
    ensure_database(URL)
    folder = Path(tempfile.mkdtemp(prefix="opsbot-bench-"))
    config = folder / "app.yaml"
    config.write_text(
        f"state: {{redis_url: '{REDIS_URL}', database_url: '${{BENCH_DATABASE_URL}}', run_migrations: true}}\n"
        "databases: {main: {url: '${BENCH_DATABASE_URL}'}}\n")
    roots = {"verify": ROOT, **({"compare": args.compare.resolve()} if args.compare else {})}
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            print(f"\n== {size:,} rows, 4 tenants")
            started = time.perf_counter()
            fill(URL, size, tenants=4)
            print(f"filled in {time.perf_counter() - started:.0f}s")
            exact, raw = queries(URL)
            copy_exact, copy_raw = [], []
            walks, walls, rss = ({name: [] for name in roots} for _ in range(3))
            for round_no in range(1, args.rounds + 1):
                copy_exact.append(time_psql(URL, exact))
                copy_raw.append(time_psql(URL, raw))
                line = f"round {round_no}: COPY (same SELECT) {copy_exact[-1]:.2f}s · COPY (raw columns) {copy_raw[-1]:.2f}s"
                for name, root in roots.items():
                    walk, wall, peak, rows = time_verify(config, root)
                    assert rows == size, rows
                    walks[name].append(walk)
                    walls[name].append(wall)
                    rss[name].append(peak)
                    line += f" · {name} in-process {walk:.2f}s, process {wall:.2f}s, peak RSS {peak:.0f} MB"
                print(line + f" · load {os.getloadavg()[0]:.1f}")
            same, plain = statistics.median(copy_exact), statistics.median(copy_raw)
            print(f"median: COPY same SELECT {same:.2f}s = {size / same:,.0f} rows/s; COPY raw {plain:.2f}s")
            for name, root in roots.items():
                walk, wall = statistics.median(walks[name]), statistics.median(walls[name])
                print(f"{name} ({root}): in-process {walk:.2f}s = {size / walk:,.0f} rows/s, process {wall:.2f}s;"
                      f" vs COPY raw: in-process {walk / plain:.2f}, whole process {wall / plain:.2f} (target <= 1.2);"
                      f" vs COPY same SELECT: {walk / same:.2f}, {wall / same:.2f};"
                      f" peak RSS {max(rss[name]):.0f} MB (target < 150 MB)")
    finally:
        shutil.rmtree(folder)


def time_verify(config: Path, root: Path = ROOT) -> tuple[float, float, float, int]:
    """(walk seconds, process wall seconds, peak RSS MB, rows) of one `opsbot run audit verify --all`,
    run from ``root`` as a whole process (bench/process.py: its own peak RSS, bytecode cached)."""
    run = opsbot(config, "run", "--json", "audit", "verify", "--all",
                 env={"RUN_MIGRATIONS": "true", "BENCH_DATABASE_URL": URL}, tree=None if root == ROOT else root)
    body = run.body
    if not isinstance(body, dict) or body["status"] != "ok":
        raise SystemExit(f"verify did not pass: {body!r:.500} {run.stderr[-2000:]}")
    return body["data"]["seconds"], run.seconds, run.rss_mb, body["data"]["rows"]


if __name__ == "__main__":
    main()

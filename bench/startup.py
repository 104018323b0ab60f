"""How long ``opsbot run`` takes as a whole process, against Python's own start-up, measured in the same run.

    .venv/bin/python bench/startup.py [--rounds 21] [--before DIR]

Each round runs, one after the other (interleaved, so load on the machine hits all alike):

- ``python -S -c pass`` and ``python -c pass``: the interpreter alone, without and with ``site``
  (the baselines: nothing opsbot does can start faster);
- ``opsbot run help``: the command list, answered from the declarations with nothing connected;
- ``opsbot run --json "dlq status"``: a cheap command that needs the runtime (Redis for the queue,
  PostgreSQL for the action log), against the real servers.

Both opsbot commands use a scratch app.yaml (bench/scratch.py: a database of its own on
``$BENCH_DATABASE_URL``'s server, a key prefix of its own on ``$REDIS_URL``, both removed after)
and the ``opsbot`` entry point of this checkout's virtualenv. Bytecode is written once, before
the first round, as an installed package has it. It prints the median and 90th percentile wall
time of each and its median CPU time (user + system), the ratio of ``opsbot run help`` to the
300 ms target and to ``python -c pass``, which heavy libraries each command loads, and the load
average before and after.

``--before DIR``: also time the same two commands from another checkout of opsbot (e.g. a git
worktree of main: ``git worktree add /tmp/opsbot-main main``), run as ``python -m bot`` with
that folder first on ``PYTHONPATH``, interleaved with this one's, for a before/after table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scratch import REDIS_URL, scratch  # noqa: E402

TARGET_MS = 300.0
PYTHON = str(ROOT / ".venv" / "bin" / "python")
OPSBOT = str(ROOT / ".venv" / "bin" / "opsbot")
HEAVY = ("psycopg", "psycopg_pool", "redis", "redis.asyncio", "slack_sdk", "slack_bolt", "pydantic",
         "prometheus_client", "httpx", "jinja2")
# Which heavy libraries a command loads: the command run in-process, sys.modules read afterwards.
PROBE = ("import json, os, sys\n"
         "from bot.runtime.cli import main\n"
         "out = os.dup(1)\n"
         "os.dup2(os.open(os.devnull, os.O_WRONLY), 1)\n"
         "main(sys.argv[1:])\n"
         "sys.stdout.flush()\n"
         "os.dup2(out, 1)\n"
         f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n")


def environment(pythonpath: str | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU (user + system) milliseconds of one run; a failing command stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = (time.perf_counter() - started) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}")
    return elapsed, (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000


def write_config(folder: Path, database_url: str, prefix: str) -> Path:
    config = folder / "app.yaml"
    config.write_text(
        "state:\n"
        f"  redis_url: '{REDIS_URL}'\n"
        f"  database_url: '{database_url}'\n"
        f"  prefix: '{prefix}'\n"
        "redis:\n"
        f"  main: {{url: '{REDIS_URL}'}}\n"
        "queues:\n"
        f"  - {{name: jobs, redis: main, ready: '{prefix}jobs', dead: '{prefix}jobs:dead'}}\n"
        f"runbooks_dir: '{ROOT / 'runbooks'}'\n")
    return config


def as_url(conninfo: str) -> str:
    """The scratch database as a postgresql:// URL, the form an app.yaml usually holds."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(conninfo)
    user = f"{params['user']}@" if params.get("user") else ""
    return f"postgresql://{user}{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}/{params['dbname']}"


def cases(config: Path, before: str | None) -> dict[str, tuple[list[str], dict[str, str]]]:
    here = environment()
    found = {
        "python -S -c pass": ([PYTHON, "-S", "-c", "pass"], here),
        "python -c pass": ([PYTHON, "-c", "pass"], here),
        "opsbot run help": ([OPSBOT, "--config", str(config), "run", "help"], here),
        "opsbot run --json 'dlq status'": ([OPSBOT, "--config", str(config), "run", "--json", "dlq status"], here),
    }
    if before:
        for label, where in (("after", str(ROOT)), ("before", before)):
            env = environment(where)
            found[f"{label}: python -m bot run help"] = (
                [PYTHON, "-m", "bot", "--config", str(config), "run", "help"], env)
            found[f"{label}: python -m bot run --json 'dlq status'"] = (
                [PYTHON, "-m", "bot", "--config", str(config), "run", "--json", "dlq status"], env)
    return found


def loaded(config: Path, argv: list[str], pythonpath: str | None = None) -> list[str]:
    proc = subprocess.run([PYTHON, "-c", PROBE, "--config", str(config), *argv], env=environment(pythonpath),
                          cwd=config.parent, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--before", help="another checkout of opsbot to time as well (e.g. main's)")
    args = parser.parse_args()
    if args.before and not (Path(args.before) / "bot" / "runtime" / "cli.py").is_file():
        raise SystemExit(f"--before {args.before}: not a checkout of opsbot")
    with scratch("startup") as place:
        config = write_config(place.folder, as_url(place.url), place.prefix)
        run(args, config)


def run(args: argparse.Namespace, config: Path) -> None:
    found = cases(config, args.before)
    cwd = config.parent  # not a checkout: `python -m bot` must find the code PYTHONPATH names, not the current folder's
    for argv, env in found.values():  # warm-up: bytecode written, the bot's schema migrated, caches filled
        timed(argv, env, cwd)
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {label: [] for label in found}
    cpu: dict[str, list[float]] = {label: [] for label in found}
    for round_ in range(args.rounds):
        labels = list(found)
        labels = labels[round_ % len(labels):] + labels[:round_ % len(labels)]  # rotate: no case always goes first
        for label in labels:
            argv, env = found[label]
            wall, used = timed(argv, env, cwd)
            times[label].append(wall)
            cpu[label].append(used)
    load_after = os.getloadavg()
    medians = {label: statistics.median(values) for label, values in times.items()}
    print(f"{args.rounds} interleaved rounds on {os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after\n")
    print(f"{'':52} {'wall median':>12} {'p90':>9} {'CPU median':>11}")
    for label, values in times.items():
        print(f"{label:52} {medians[label]:10.1f}ms {percentile(values, 0.9):7.1f}ms "
              f"{statistics.median(cpu[label]):9.1f}ms")
    help_ms, python_ms = medians["opsbot run help"], medians["python -c pass"]
    status_ms = medians["opsbot run --json 'dlq status'"]
    print(f"\nopsbot run help: {help_ms:.0f} ms = {help_ms / TARGET_MS:.2f}x the {TARGET_MS:.0f} ms target "
          f"({'met' if help_ms < TARGET_MS else 'NOT met'}); {help_ms / python_ms:.1f}x python -c pass, "
          f"{help_ms - python_ms:.0f} ms above it")
    print(f"opsbot run --json 'dlq status': {status_ms:.0f} ms = {status_ms / python_ms:.1f}x python -c pass")
    print("(CPU time, user + system, is what the process itself spent: less sensitive to a busy machine than wall "
          "time)")
    if args.before:
        for command in ("run help", "run --json 'dlq status'"):
            old, new = medians[f"before: python -m bot {command}"], medians[f"after: python -m bot {command}"]
            print(f"{command}: before {old:.0f} ms, after {new:.0f} ms ({old / new:.1f}x faster)")
    print()
    for argv in (["run", "help"], ["run", "--json", "dlq status"]):
        print(f"opsbot {' '.join(argv)} loads: {', '.join(loaded(config, argv)) or 'none of them'}"
              + (f"  (before: {', '.join(loaded(config, argv, args.before))})" if args.before else ""))
    print(f"  (of: {', '.join(HEAVY)})")


if __name__ == "__main__":
    main()

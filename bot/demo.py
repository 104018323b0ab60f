"""``opsbot demo``: opsbot working within a minute, with nothing but Python.

Usage::

    opsbot demo            # in a terminal: a console where you type /ops commands as in Slack
    opsbot demo | cat      # without a terminal: a scripted tour that checks every step

It starts a real Redis and a real PostgreSQL from Python packages (:mod:`bot.sandbox`)
and seeds a broken world drawn from the seeds. So far that is a dead-letter backlog
with several kinds of failure, including entries that are not JSON. The world grows
with every command group. Everything runs through the same engine as Slack and the
CLI; the processes and files are removed on exit, Ctrl-C included.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from bot.config import load_settings
from bot.engine import Outcome
from bot.invocation import Actor, Where
from bot.render.text import to_text
from bot.runtime import Runtime
from bot.sandbox import Sandbox, SandboxUnavailable

__all__ = ["main", "seed_world", "TOUR"]

ROOT = Path(__file__).resolve().parent.parent
ONCALL = "U0DEMOONCALL"
WHERE = Where("C0DEMO", channel_name="ops-demo")

FAILURES = [
    ("send_email", "SMTP timeout after 30s talking to smtp.mailgun.org:587"),
    ("send_email", "535 5.7.8 Authentication credentials invalid"),
    ("render_pdf", "429 rate limit exceeded (OpenAI), retry after 20s"),
    ("sync_crm", "KeyError: 'tenantId'"),
]


def demo_config(sandbox: Sandbox, folder: Path) -> Path:
    path = folder / "app.yaml"
    path.write_text(f"""
slack:
  incident_channel: "#incidents"
state:
  redis_url: "{sandbox.redis_url}"
  database_url: "{sandbox.database_url}"
  run_migrations: true
roles:
  oncall: {{users: [{ONCALL}]}}
redis:
  main: {{url: "{sandbox.redis_url}"}}
databases:
  main: {{url: "{sandbox.database_url}"}}
queues:
  - {{name: jobs, redis: main, ready: jobs, dead: "jobs:dead", keep: 100}}
  - {{name: step, redis: main, ready: step.ready, dead: step.dead, keep: 10}}
runbooks_dir: "{ROOT / 'runbooks'}"
""")
    return path


def seed_world(client: redis.Redis, now: float | None = None) -> dict[str, int]:
    """A dead-letter backlog as the seeds describe it (`jobs` / `jobs:dead`, `step.ready` / `step.dead`)."""
    now = now or time.time()
    entries = []
    for index in range(160):
        kind, error = FAILURES[index % len(FAILURES)]
        failed = now - 6 * 3600 + index * 120
        entries.append(json.dumps({
            "id": f"job-{1000 + index}", "type": kind, "attempts": 5, "error": error,
            "failedAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(failed)),
            "payload": {"tenantId": f"tenant-{index % 3}", "to": f"client{index}@example.com",
                        "apiKey": "sk-demo-should-never-show"},
        }))
    client.lpush("jobs:dead", *entries, b"\x8b\x00\xffgzip-bytes-from-an-old-producer")
    client.lpush("jobs", *[json.dumps({"id": f"job-{n}", "type": "send_email"}) for n in range(3)])
    client.lpush("step.dead", *[json.dumps({"id": f"step-{n}", "type": "step.run", "error": "step timeout",
                                            "failedAt": now - 600 + n}) for n in range(25)])
    return {"jobs:dead": 161, "step.dead": 25, "rate_limited": 40}


# -- the scripted tour ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    text: str
    expect: Callable[[Outcome], bool]
    what: str


TOUR = [
    Step("help", lambda o: o.result.status == "ok" and "dlq requeue" in str(o.result.data), "every command"),
    Step("runbook", lambda o: len(o.result.data["runbooks"]) >= 17, "the runbooks"),
    Step("runbook dead-letter-backlog queue=jobs", lambda o: o.result.data["steps"][1]["run"] == "dlq peek jobs",
         "a runbook with Run buttons"),
    Step("dlq status", lambda o: o.result.status == "warn" and o.result.data["queues"][0]["dead"] == 161,
         "the dead-letter backlog"),
    Step('dlq peek --error "rate limit" --limit 2',
         lambda o: o.result.data["matching"] == 40 and len(o.result.data["entries"]) == 2, "what failed, grouped"),
    Step('dlq requeue --error "rate limit"', lambda o: o.result.status == "ok" and o.result.data["moved"] == 40,
         "a guarded requeue, previewed and confirmed"),
    Step("dlq status jobs", lambda o: o.result.data["queues"][0]["dead"] == 121
         and o.result.data["queues"][0]["ready"] == 43, "after the requeue"),
    Step("dlq trim step --keep 10", lambda o: o.result.status == "ok" and o.result.data["dropped"] == 15,
         "a guarded trim, archived to PostgreSQL first"),
]


def run_tour(runtime: Runtime, out=sys.stdout) -> bool:
    actor = Actor(ONCALL, team="TDEMO")
    passed = 0
    for number, step in enumerate(TOUR, 1):
        print(f"\n── {number}/{len(TOUR)} /ops {step.text}   ({step.what})", file=out)
        outcome = runtime.engine.handle(step.text, actor, WHERE)
        if outcome.kind == "preview":
            print(to_text(outcome.result, runtime.redactor), file=out)
            print("   → Confirm (as the on-call who asked)", file=out)
            outcome = runtime.engine.confirm(outcome.pending.id, actor, WHERE)
        print(to_text(outcome.result, runtime.redactor), file=out)
        try:
            ok = step.expect(outcome)
        except (KeyError, IndexError, TypeError):
            ok = False
        print(f"   {'✔ as expected' if ok else '✘ NOT as expected'}", file=out)
        passed += ok
    chain = runtime.state.action_log.verify()
    print(f"\nAction log: {chain.rows} entries, hash chain {'intact' if chain.ok else 'BROKEN'}", file=out)
    print(f"Tour: {passed}/{len(TOUR)} steps as expected", file=out)
    return passed == len(TOUR) and chain.ok


# -- the console ----------------------------------------------------------------------------------

def console(runtime: Runtime) -> None:
    actor = Actor(ONCALL, team="TDEMO")
    print("Type /ops commands as in Slack (`/ops help`, `/ops dlq status`, ...). Ctrl-D or `exit` leaves.")
    while True:
        try:
            line = input("\n/ops ").strip()
        except EOFError:
            print()
            return
        text = line.removeprefix("/ops").strip()
        if text in ("exit", "quit"):
            return
        outcome = runtime.engine.handle(text, actor, WHERE)
        print(to_text(outcome.result, runtime.redactor))
        if outcome.kind == "preview":
            answer = input("Confirm? [y/N] ").strip().lower()
            if answer in ("y", "yes"):
                outcome = runtime.engine.confirm(outcome.pending.id, actor, WHERE)
            else:
                outcome = runtime.engine.cancel(outcome.pending.id, actor, WHERE)
            print(to_text(outcome.result, runtime.redactor))


def main(interactive: bool | None = None) -> int:
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(143)))
    print("Starting an embedded Redis and PostgreSQL ...", flush=True)
    try:
        with Sandbox() as sandbox, tempfile.TemporaryDirectory(prefix="opsbot-demo-") as folder:
            settings = load_settings(demo_config(sandbox, Path(folder)))
            runtime = Runtime.build(settings)
            try:
                runtime.state.migrate()
                counts = seed_world(runtime.state.redis)
                print(f"Seeded a broken world: {counts['jobs:dead']} dead jobs in jobs:dead "
                      f"(SMTP timeouts, auth failures, rate limits, a KeyError, bytes that are not JSON), "
                      f"{counts['step.dead']} in step.dead.", flush=True)
                if interactive:
                    console(runtime)
                    return 0
                return 0 if run_tour(runtime) else 1
            finally:
                runtime.close()
    except SandboxUnavailable as exc:
        print(f"opsbot demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nStopped; the embedded servers are gone.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

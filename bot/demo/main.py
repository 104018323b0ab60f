"""``opsbot demo``: opsbot working within a minute, with nothing but Python.

Usage::

    opsbot demo            # in a terminal: a console where you type /ops commands as in Slack
    opsbot demo | cat      # without a terminal: a scripted tour that checks every step
    opsbot demo --tour     # the scripted tour in a terminal too (the flag is parsed by bot.runtime.cli)

    from bot.demo import main as demo
    demo.main(interactive=None)     # None: the console in a terminal, the tour otherwise; returns the exit code

It starts a real Redis and a real PostgreSQL from Python packages (:mod:`bot.demo.sandbox`)
and seeds a broken world: a dead-letter backlog with several kinds
of failure (including entries that are not JSON), email stuck behind an SMTP provider
that refuses connections, a case whose reminder was blocked by its cap, and two services
of which one is not ready. The world grows with every command group. Everything runs through the same engine as Slack and the
CLI; the processes and files are removed on exit, Ctrl-C included.

This module is the entry point only: the world is :mod:`bot.demo.world`, the services it
points at :mod:`bot.demo.services`, the tour :mod:`bot.demo.tour` and the console
:mod:`bot.demo.console`.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import tempfile
from pathlib import Path

from bot.config.settings import load_settings
from bot.demo.alert import GID, fire_alert
from bot.demo.console import console
from bot.demo.sandbox import Sandbox, SandboxUnavailable
from bot.demo.services import DemoServices
from bot.demo.tour import run_tour
from bot.demo.world import demo_config, describe, migrations_dir, seed_database, seed_rq, seed_world
from bot.runtime.factory import Runtime

__all__ = ["main"]


def main(interactive: bool | None = None) -> int:
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(143)))
    # Ctrl-C stops the demo and cleans up, even when whatever started us ignored or blocked SIGINT (both are
    # inherited across exec: a supervisor, a test runner's thread waiting in sigwait, `nohup`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    print("Starting an embedded Redis and PostgreSQL ...", flush=True)
    try:
        with Sandbox() as sandbox, DemoServices() as services, \
                tempfile.TemporaryDirectory(prefix="opsbot-demo-") as folder:
            # Throwaway secrets, from the environment as app.yaml requires (a literal default is refused).
            env = {**os.environ, **{name: os.environ.get(name) or secrets.token_hex(16)
                                    for name in ("OPSBOT_DEMO_SNAPSHOT_SECRET", "OPSBOT_DEMO_LOG_SECRET",
                                                 "OPSBOT_DEMO_ALERTS_TOKEN")}}
            settings = load_settings(demo_config(sandbox, Path(folder), services), env=env)
            runtime = Runtime.build(settings)
            try:
                runtime.state.migrate()
                counts = seed_world(runtime.state.redis) | seed_rq(sandbox.redis_url)
                seed_database(sandbox.database_url, migrations_dir(Path(folder)))
                print(describe(counts), flush=True)
                fire_alert(runtime, env["OPSBOT_DEMO_ALERTS_TOKEN"])
                print("Alertmanager's webhook for the dead-letter backlog was POSTed to /alerts: "
                      f"`/ops alerts show {GID}` shows its thread.", flush=True)
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

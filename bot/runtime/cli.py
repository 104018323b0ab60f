"""The ``opsbot`` command line: the same commands as Slack, for when Slack is down.

Usage::

    opsbot run [--config PATH] [--as USER] [--yes] [--json] "<command text>"
    opsbot serve [--port N]      # Slack over HTTP: POST /slack/events, GET /healthz, /readyz
    opsbot worker                # carry out queued Slack work (serve starts these itself)
    opsbot socket                # Slack over Socket Mode
    opsbot manifest [--socket] [--json]
    opsbot check [--json] [--deadline S]
    opsbot migrate
    opsbot demo [--tour]         # embedded Redis + PostgreSQL and a broken world (needs the demo extra)

Exit codes: 0 ran, 1 failed, 2 usage or configuration error, 3 denied or not confirmed.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the rest is imported where it is used: `opsbot run help` loads no driver, no Slack client
    from bot.config.settings import Settings
    from bot.core.redact import Redactor
    from bot.runtime.factory import Runtime

__all__ = ["entry", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DENIED = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 2 with one line, as argparse does, but never a traceback
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="opsbot", description="Incident-response runbook actions for Slack and the terminal.")
    parser.add_argument("--config", help="app.yaml to use (default: $OPSBOT_CONFIG, then ./app.yaml)")
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run one command as /ops would")
    run.add_argument("--config", dest="config_sub", help=argparse.SUPPRESS)
    run.add_argument("--as", dest="as_user", metavar="USER", help="act as this Slack user id, with their roles")
    run.add_argument("--yes", action="store_true", help="confirm a guarded command without asking")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.add_argument("--output", metavar="PATH", default=".",
                     help="where files a command produces (audit export) are written: a folder or a file name")
    run.add_argument("text", nargs=argparse.REMAINDER,
                     help='the command text, e.g. "dlq status" (quoted or not: options after it belong to it)')

    serve = sub.add_parser("serve", help="serve Slack over HTTP")
    serve.add_argument("--config", dest="config_sub", help=argparse.SUPPRESS)
    serve.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    serve.add_argument("--threads", type=int, default=8, help="HTTP threads (they only verify, queue and ack)")
    serve.add_argument("--workers", type=int, default=2,
                       help="worker processes carrying out the work (0: threads in this process)")
    serve.add_argument("--worker-threads", type=int, default=8, help="threads in each worker")
    serve.add_argument("--worker-nice", type=int, default=10, help="CPU niceness of worker processes")
    serve.add_argument("--shutdown-deadline", type=float, default=30.0,
                       help="seconds running work may take to finish on SIGTERM")

    worker = sub.add_parser("worker", help="carry out queued Slack work (started by serve, or on its own)")
    worker.add_argument("--config", dest="config_sub", help=argparse.SUPPRESS)
    worker.add_argument("--threads", type=int, default=8)
    worker.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority")
    worker.add_argument("--shutdown-deadline", type=float, default=30.0)

    socket = sub.add_parser("socket", help="serve Slack over Socket Mode (needs SLACK_APP_TOKEN)")
    socket.add_argument("--config", dest="config_sub", help=argparse.SUPPRESS)
    socket.add_argument("--worker-threads", type=int, default=8)
    socket.add_argument("--shutdown-deadline", type=float, default=30.0)

    manifest = sub.add_parser("manifest", help="print the Slack app manifest")
    manifest.add_argument("--config", dest="config_sub", help=argparse.SUPPRESS)
    manifest.add_argument("--socket", action="store_true", help="for Socket Mode (no public URL)")
    manifest.add_argument("--json", action="store_true", help="JSON instead of YAML")

    check = sub.add_parser("check", help="validate app.yaml and reach every configured target")
    check.add_argument("--config", dest="config_sub", help=argparse.SUPPRESS)
    check.add_argument("--json", action="store_true")
    check.add_argument("--deadline", type=_seconds, default=30.0, metavar="S",
                       help="give up on targets that have not answered after S seconds (default 30)")

    demo = sub.add_parser("demo", help="a sandbox with real Redis and PostgreSQL and a broken world to fix")
    demo.add_argument("--tour", action="store_true", help="run the scripted tour even in a terminal")

    migrate = sub.add_parser("migrate", help="create or upgrade the bot's own schema")
    migrate.add_argument("--config", dest="config_sub", help=argparse.SUPPRESS)
    return parser


def entry() -> None:
    """The ``opsbot`` process (the console script, ``python -m bot``): :func:`main`, then exit without
    collecting garbage on the way out. Every object is frozen first (``gc.freeze``), so the interpreter's
    last collection scans none of them: exit handlers, flushing and thread joins still run as usual."""
    code = main()
    gc.freeze()
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Start-up runs with garbage collection off (see :func:`_started`); it is back on when this returns."""
    collecting, frozen = gc.isenabled(), gc.get_freeze_count()
    gc.disable()
    try:
        return _command(argv)
    finally:
        if gc.get_freeze_count() > frozen:  # called in-process (a test): what start-up froze is collected again
            gc.unfreeze()
        if collecting:
            gc.enable()


def _started() -> None:
    """Start-up is over: the command's own work begins, with garbage collection on.

    Start-up (the imports, the settings models, the command declarations, the connections) makes a few
    hundred thousand objects that live as long as the process, so collecting while they are made finds
    nothing, and costs about a sixth of ``opsbot run help``, which runs with it off throughout. They are
    frozen here (never scanned again) so that collections during the command, e.g. a million-row audit
    walk, scan only what it allocates.
    """
    gc.freeze()
    gc.enable()


def _command(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>`: every thread's stack to stderr, for a process that hangs
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    scratch = None
    if args.verb == "serve" and args.workers:
        from bot.runtime.metrics import enable_multiprocess

        # Worker processes count too: prometheus-client's multiprocess mode, set up before anything counts.
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            scratch = tempfile.mkdtemp(prefix="opsbot-metrics-")
        enable_multiprocess(scratch or os.environ["PROMETHEUS_MULTIPROC_DIR"])
    try:
        return _main(args)
    finally:
        if scratch is not None:  # ours, not the operator's: it goes with us (SIGTERM included)
            shutil.rmtree(scratch, ignore_errors=True)


def _main(args: argparse.Namespace) -> int:
    from bot.runtime.logs import setup_logging

    default_level = "INFO" if args.verb in ("serve", "worker", "socket") else "WARNING"
    setup_logging(os.environ.get("LOG_LEVEL", default_level), _env_redactor())
    if args.verb == "demo":  # needs no app.yaml: it brings its own world
        from bot.demo import main as demo

        _started()
        return demo.main(interactive=False if args.tour else None)
    from bot.config.settings import ConfigError, default_config_path, load_settings

    args.config_path = default_config_path(getattr(args, "config_sub", None) or args.config)
    try:
        settings = load_settings(args.config_path)
    except ConfigError as exc:
        count = f" ({len(exc.problems)} problems)" if len(exc.problems) > 1 else ""
        print(f"opsbot: invalid configuration{count}:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(os.environ.get("LOG_LEVEL", default_level), _env_redactor(settings))
    verb = {"run": _run, "serve": _serve, "worker": _worker, "socket": _socket, "manifest": _manifest,
            "check": _check, "migrate": _migrate}[args.verb]
    if args.verb != "run":  # run says when its start-up is over: after the declarations answered or not
        _started()
    try:
        return verb(settings, args)
    except ConfigError as exc:  # found while building (permissions naming no command, ...)
        print(f"opsbot: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _env_redactor(settings: Settings | None = None) -> Redactor:
    """Redact the values of secret-looking environment variables (and the settings' secrets) from every log line."""
    from bot.config.secretnames import is_secret_key
    from bot.core.redact import Redactor

    secrets = [value for key, value in os.environ.items() if is_secret_key(key)]
    return Redactor(secrets + (settings.secret_values() if settings else []))


def _runtime(settings: Settings, timeout: int = 10, registry=None) -> Runtime:
    """A runtime; the bot's schema is migrated on its first use of PostgreSQL (see bot.store.state)."""
    from bot.runtime.factory import Runtime

    return Runtime.connect(settings, timeout=timeout, registry=registry)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from bot.config.settings import installed_groups
    from bot.core.group import registry_of
    from bot.core.invocation import Actor, Where
    from bot.core.markup import is_user_id
    from bot.core.redact import Redactor
    from bot.engine.declared import answer
    from bot.runtime.factory import policy_for
    from bot.runtime.terminal import TerminalSession, render

    if not " ".join(args.text).strip():
        print('opsbot run: the command text is missing, e.g. opsbot run "dlq status"', file=sys.stderr)
        return EXIT_USAGE
    if args.as_user is not None and not is_user_id(args.as_user):
        print(f"opsbot run: --as takes a Slack user id (U0123ABCD), not {args.as_user!r}", file=sys.stderr)
        return EXIT_USAGE
    actor = Actor(args.as_user, team="cli") if args.as_user is not None else Actor.local()
    text, where = " ".join(args.text), Where("cli")
    groups = installed_groups()
    registry = registry_of(groups)
    policy = policy_for(settings, registry, groups)  # a ConfigError, as building the runtime would raise it
    declared = answer(settings, registry, policy, text, actor, where, groups=groups)
    if declared is not None:  # a usage error, or `help`: from the declarations, with nothing connected
        return _print_outcome(declared, render(declared.result, Redactor(settings.secret_values()), args.json), args)
    runtime = _runtime(settings, timeout=5, registry=registry)
    _started()
    try:
        runtime.state.action_log.drain()  # entries kept in Redis while PostgreSQL was down go first
        session = TerminalSession(runtime, actor, where, output=args.output,
                                  interactive=None if not args.json else False)
        outcome = session.run(text, assume_yes=args.yes, quiet=args.json)
        return _print_outcome(outcome, session.render(outcome, as_json=args.json), args)
    finally:
        runtime.close()


def _print_outcome(outcome, rendered: str, args: argparse.Namespace) -> int:
    stream = sys.stderr if outcome.kind == "usage" and not args.json else sys.stdout
    print(rendered, file=stream)
    return outcome.exit_code


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from bot.runtime.http import HttpServer
    from bot.slack.app import Intake
    from bot.runtime.supervisor import WorkerProcesses
    from bot.runtime.worker import Worker
    from bot.store.workqueue import WorkQueue

    missing = _missing_for_slack(settings, need_signing=True)
    if missing:
        print(f"opsbot serve: missing required settings: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    runtime = _runtime(settings)
    intake = Intake(runtime, WorkQueue(runtime.state.ack_redis, settings.state.prefix))  # pushes before each ack
    server = HttpServer(runtime, intake, host=args.host, port=args.port, threads=args.threads)
    if args.workers:
        workers = WorkerProcesses(args.config_path, count=args.workers, threads=args.worker_threads,
                                  nice=args.worker_nice).start()
    else:
        workers = Worker(runtime, threads=args.worker_threads).start()
    signal.signal(signal.SIGTERM, _raise_exit)
    print(f"opsbot serving Slack on http://{args.host}:{server.port}/slack/events", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except SystemExit:
        pass
    finally:
        server.stop()
        workers.stop(deadline=args.shutdown_deadline)
        runtime.close()
    return EXIT_OK


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from bot.runtime.worker import Worker

    if args.nice:
        os.nice(args.nice)
    runtime = _runtime(settings)
    worker = Worker(runtime, threads=args.threads).start()
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        worker.wait()
    except SystemExit:
        pass
    finally:
        worker.stop(deadline=args.shutdown_deadline)
        runtime.close()
    return EXIT_OK


def _raise_exit(signum, frame):
    raise SystemExit(0)


def _socket(settings: Settings, args: argparse.Namespace) -> int:
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    from bot.slack.app import Intake, build_app
    from bot.runtime.worker import Worker
    from bot.store.workqueue import WorkQueue

    missing = _missing_for_slack(settings, need_signing=False)
    if not settings.slack.app_token:
        missing.append("SLACK_APP_TOKEN (slack.app_token)")
    if missing:
        print(f"opsbot socket: missing required settings: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    runtime = _runtime(settings)
    app = build_app(runtime, Intake(runtime, WorkQueue(runtime.state.ack_redis, settings.state.prefix)))
    worker = Worker(runtime, threads=args.worker_threads).start()
    handler = SocketModeHandler(app, settings.slack.app_token.get_secret_value())
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        handler.start()
    except SystemExit:
        pass
    finally:
        handler.close()
        worker.stop(deadline=args.shutdown_deadline)
        runtime.close()
    return EXIT_OK


def _missing_for_slack(settings: Settings, *, need_signing: bool) -> list[str]:
    missing = []
    if not settings.slack.bot_token:
        missing.append("SLACK_BOT_TOKEN (slack.bot_token)")
    if need_signing and not settings.slack.signing_secret:
        missing.append("SLACK_SIGNING_SECRET (slack.signing_secret)")
    return missing


def _manifest(settings: Settings, args: argparse.Namespace) -> int:
    import yaml

    from bot.config.settings import installed_groups
    from bot.core.group import registry_of
    from bot.slack.manifest import build_manifest

    if not args.socket and not settings.slack.request_url:
        print("opsbot manifest: WARNING: OPSBOT_PUBLIC_URL (slack.request_url) is not set, so the request URLs below"
              " point at https://opsbot.example.com, where Slack cannot reach you. Set it to this deployment's public"
              " base URL and run `opsbot manifest` again, or use `opsbot manifest --socket` for Socket Mode.",
              file=sys.stderr)
    manifest = build_manifest(settings, registry_of(installed_groups()), socket_mode=args.socket)
    print(json.dumps(manifest, indent=2) if args.json else yaml.safe_dump(manifest, sort_keys=False, width=100))
    return EXIT_OK


def _seconds(text: str) -> float:
    """A number of seconds in (0, 3600], for argparse."""
    try:
        if 0 < (value := float(text)) <= 3600:
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0 and 3600")


def _check(settings: Settings, args: argparse.Namespace) -> int:
    from bot.core.result import to_json
    from bot.render.text import to_text
    from bot.runtime.checks import run_checks
    from bot.runtime.factory import Runtime

    runtime = Runtime.connect(settings, timeout=5)
    try:
        result = run_checks(runtime, deadline=args.deadline)
    finally:
        runtime.close(timeout=1.0)  # a pool thread stuck where a check hung is not waited for
    print(to_json(runtime.redactor.result(result)) if args.json else to_text(result, runtime.redactor))
    return EXIT_OK if result.status in ("ok", "warn") else EXIT_FAILED


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from bot.runtime.factory import Runtime

    runtime = Runtime.build(settings)
    try:
        applied = runtime.state.migrate()
    except Exception as exc:
        print(f"opsbot migrate: {runtime.redactor.text(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        runtime.close()
    schema = settings.state.db_schema
    print(f"schema {schema!r}: applied {', '.join(applied)}" if applied else f"schema {schema!r} is up to date")
    return EXIT_OK


if __name__ == "__main__":
    entry()

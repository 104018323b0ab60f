"""``opsbot serve``: Slack over HTTP, plus the probes a platform needs.

Usage::

    server = HttpServer(runtime, Intake(runtime, queue), host="127.0.0.1", port=0)   # port 0: any free port
    server.start()           # in a background thread; server.port is the bound port
    server.stop()

Routes: ``POST /slack/events`` (Bolt), ``GET /healthz`` (the process is up),
``GET /readyz`` (Redis and PostgreSQL answer; 503 naming the one that does not),
``GET /metrics`` (Prometheus; a bearer token when ``metrics.token`` is set), and the webhooks the groups
offer (``POST /alerts``; :mod:`bot.runtime.hooks`).

A slash command for the bot's own command (``/ops``) that passed the gate is acked here by the
:class:`~bot.slack.app.Intake` without going through Bolt: the gate has verified and parsed it
already, and Bolt would do both again, then build a context and match listeners, for the same
two answers (an empty 200, or an ephemeral text as JSON). That is most of the CPU an ack costs
and every ack of a busy incident is one. It also keeps a command whose body holds the word
"payload" anywhere (``/ops dlq show payload``, a channel named #payload): Bolt 1.30 reads such a
body as an interaction, finds no ``payload`` field and answers 404, so Slack said dispatch_failed.
Everything else (buttons, forms, ssl_check, another command) goes to Bolt.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable

from slack_bolt.adapter.wsgi import SlackRequestHandler
from waitress.server import create_server

from bot.runtime.metrics import GaugeCollector
from bot.runtime.factory import Runtime
from bot.runtime.hooks import WebhookIntake
from bot.slack.app import Intake, build_app
from bot.slack.gate import COMMAND, SlackGate
from bot.store.deadline import Bound
from bot.store.workqueue import WorkQueue

__all__ = ["HttpServer", "build_wsgi", "readiness"]

log = logging.getLogger("opsbot.http")


def readiness(runtime: Runtime, timeout: float = 2.0) -> dict[str, str]:
    """``{"redis": "ok", "postgres": "error: ..."}`` for the bot's own state stores."""
    checks: dict[str, str] = {}
    try:
        runtime.state.ack_redis.ping()  # 1 s, no retry: the general client's 5 s would hold the threads acks need
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {runtime.redactor.text(str(exc))}"
    try:
        with runtime.state.pool.connection(timeout=timeout) as conn, Bound(timeout).on(conn):
            conn.execute("SELECT 1")  # a PostgreSQL that froze would hold this thread, and the next probe's, for ever
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"error: {runtime.redactor.text(str(exc) or type(exc).__name__)}"
    return checks


def build_wsgi(runtime: Runtime, intake: Intake, path: str = "/slack/events") -> Callable:
    """The WSGI application of ``opsbot serve``: the Bolt app (:func:`bot.slack.app.build_app`) behind the gate."""
    slack = SlackRequestHandler(build_app(runtime, intake), path=path)
    command = runtime.settings.slack.command
    queue = WorkQueue(runtime.state.redis, runtime.settings.state.prefix)
    gauges = [
        GaugeCollector("opsbot_work_queue_depth", "Slack deliveries waiting for a worker", queue.depth),
        GaugeCollector("opsbot_outbox_depth", "Slack posts waiting to be delivered again", runtime.outbox.depth),
        GaugeCollector("opsbot_action_log_kept_depth", "Action-log entries kept in Redis, waiting for PostgreSQL",
                       lambda: runtime.state.action_log.spool.depth()),
        runtime.gauges.collector(),
    ]
    token = runtime.settings.metrics.token
    secret = runtime.settings.slack.signing_secret
    gate = SlackGate(secret.get_secret_value() if secret else None)
    hooks = WebhookIntake(runtime, queue)

    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        route = (environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
        if hooks.serves(environ):
            return hooks(environ, start_response)
        if route == ("GET", "/healthz"):
            return _json(start_response, 200, {"ok": True})
        if route == ("GET", "/readyz"):
            checks = readiness(runtime)
            ready = all(value == "ok" for value in checks.values())
            return _json(start_response, 200 if ready else 503, {"ok": ready, "checks": checks})
        if route == ("GET", "/metrics"):
            given = environ.get("HTTP_AUTHORIZATION", "")
            if token is not None and not hmac.compare_digest(given, f"Bearer {token.get_secret_value()}"):
                return _json(start_response, 401, {"ok": False, "error": "metrics need a bearer token"})
            body, content_type = runtime.metrics.exposition(extra=gauges)
            start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
            return [body]
        if route[1] == path:
            started = time.perf_counter()
            refusal = gate.check(environ) if route[0] == "POST" else None
            if refusal is not None:
                status, reason = refusal
                log.warning("refused a request to %s: %s", path, reason)
                return _json(start_response, status, {"ok": False, "error": reason})
            try:
                form = environ.get(COMMAND)
                if form is not None and form.get("command") == command:
                    return _ack(start_response, intake.command(form))
                return slack(environ, start_response)
            finally:
                runtime.metrics.ack_seconds.observe(time.perf_counter() - started)
        return slack(environ, start_response)

    return application


def _json(start_response: Callable, status: int, body: dict) -> list[bytes]:
    payload = json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 413: "Content Too Large",
              503: "Service Unavailable"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]


def _ack(start_response: Callable, text: str | None) -> list[bytes]:
    """The answer Bolt gives for ``ack()`` and ``ack(text=..., response_type="ephemeral")``, to the byte."""
    if text is None:
        body, content_type = b"", "text/plain;charset=utf-8"
    else:
        body, content_type = json.dumps({"text": text, "response_type": "ephemeral"}).encode(), \
            "application/json;charset=utf-8"
    start_response("200 OK", [("content-type", content_type), ("content-length", str(len(body)))])
    return [body]


class HttpServer:
    def __init__(self, runtime: Runtime, intake: Intake, *, host: str = "0.0.0.0", port: int = 3000, threads: int = 8):
        self.server = create_server(
            build_wsgi(runtime, intake), host=host, port=port, threads=threads, ident="opsbot", clear_untrusted_proxy_headers=True
        )
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def port(self) -> int:
        return self.server.effective_port

    def serve_forever(self) -> None:
        try:
            self.server.run()
        except OSError:
            if not self._stopping:  # closing the sockets under the loop ends it with EBADF: expected
                raise

    def start(self) -> "HttpServer":
        self._thread = threading.Thread(target=self.serve_forever, name="opsbot-http", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking requests; requests in flight are answered (up to ``timeout``)."""
        self._stopping = True
        self.server.task_dispatcher.shutdown(cancel_pending=False, timeout=timeout)  # in-flight tasks finish
        self.server.close()
        if self._thread:
            self._thread.join(timeout)

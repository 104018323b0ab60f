"""Upstreams that echo a secret back: the value never reaches Slack, the terminal, JSON, the action log or the logs.

Every secret here comes from the environment, as app.yaml requires; each upstream quotes
it back in an error (an SMTP server repeating the password it refused, a service echoing
the auth header, an admin API echoing the bearer token, a deploy API echoing its key).
"""

from __future__ import annotations

import base64
import json
import logging
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bot.core.invocation import Actor, Where
from bot.render.blocks import to_message
from bot.render.text import to_text
from bot.core.result import to_json
from tests.conftest import ALICE, write_config
from tests.support import email as email_tables

SECRETS = {
    "SMTP_PASS": "smtp-Pa55word-echoed",
    "INTERNAL_API_KEY": "internal-key-4242-echoed",
    "ADMIN_API_KEY": "admin-key-7777-echoed",
    "DEPLOY_TOKEN": "deploy-token-9191-echoed",
}


class Echo(BaseHTTPRequestHandler):
    """Fails every request, quoting its headers back (as careless error pages do)."""

    def log_message(self, *args):
        pass

    def _send(self, status: int, document) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _echo(self):
        credential = (self.headers.get("Authorization") or self.headers.get("x-internal-key") or "").removeprefix("Bearer ")
        self._send(400 if "deploys" in self.path else 500,
                   {"error": f"refused credential {credential}", "you_sent": dict(self.headers.items())})

    def do_GET(self):
        if self.path.startswith("/v1/admin/export-dead-letter"):  # the listing works; replays will not
            return self._send(200, {"items": [{"id": "exp-1", "type": "export", "error": "S3 timeout"}],
                                    "next_cursor": None})
        self._echo()

    do_POST = _echo


class ChattySmtp(socketserver.StreamRequestHandler):
    """An SMTP server that refuses AUTH and repeats the credentials it was given."""

    def handle(self):
        self.wfile.write(b"220 chatty ESMTP\r\n")
        while line := self.rfile.readline():
            command = line.decode(errors="replace").strip()
            if command.upper().startswith("EHLO"):
                self.wfile.write(b"250-chatty\r\n250 AUTH PLAIN LOGIN\r\n")
            elif command.upper().startswith("AUTH PLAIN"):
                given = base64.b64decode(command.split()[-1]).decode(errors="replace").replace("\0", " ")
                self.wfile.write(f"535 5.7.8 bad credentials {given}\r\n".encode())
            elif command.upper().startswith("QUIT"):
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"502 no\r\n")


@pytest.fixture
def upstreams():
    http = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    smtp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), ChattySmtp)
    for server in (http, smtp):
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{http.server_address[1]}", smtp.server_address[1]
    for server in (http, smtp):
        server.shutdown()
        server.server_close()


@pytest.fixture
def runtime(tmp_path, database_url, make_runtime, monkeypatch, upstreams):
    base, smtp_port = upstreams
    email_tables.create(database_url, sent=10, failed=5, stuck=2)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    path = write_config(tmp_path / "app.yaml", database_url, extra=f"""
        services:
          api:
            liveness: {base}/health
            auth_header: x-internal-key
            auth_token: ${{INTERNAL_API_KEY}}
            deploy: {{provider: http, url: "{base}/deploy", token: "${{DEPLOY_TOKEN}}", retries: 0}}
        email:
          smtp: {{host: 127.0.0.1, port: {smtp_port}, username: ops, password: "${{SMTP_PASS}}", security: none}}
        """)
    path.write_text(path.read_text().replace(
        '  - {name: jobs, redis: main, ready: jobs, dead: "jobs:dead"}',
        f'  - {{name: jobs, redis: main, ready: jobs, dead: "jobs:dead"}}\n'
        f'  - {{name: exports, backend: http, url: "{base}", token: "${{ADMIN_API_KEY}}", retries: 0}}'))
    return make_runtime(path)


def _everywhere(runtime, outcome) -> str:
    result = outcome.result
    return "\n".join([to_text(result, runtime.redactor), to_json(runtime.redactor.result(result)),
                      json.dumps(to_message(result, runtime.redactor)),
                      json.dumps([e.payload for e in runtime.state.action_log.entries()])])


@pytest.mark.parametrize("text, shows", [
    ("health api", "you_sent"),                        # the failing body is shown, redacted
    ("email triage", "bad credentials"),               # the SMTP server's refusal is quoted, redacted
    ("rollback api", "HTTP 400"),                      # the deploy API's error
    ("dlq requeue exports", "Failed replays"),         # the admin API's answer to each failed replay
])
def test_an_echoed_secret_is_redacted_in_every_rendering_and_the_log(runtime, text, shows, caplog):
    caplog.set_level(logging.INFO)
    outcome = runtime.engine.handle(text, Actor(ALICE), Where("C-ops"))
    if outcome.kind == "preview":
        outcome = runtime.engine.confirm(outcome.pending.id, Actor(ALICE), Where("C-ops"))
    everything = _everywhere(runtime, outcome) + caplog.text
    assert shows in everything, everything[:3000]
    for name, value in SECRETS.items():
        assert value not in everything, f"{name} leaked in `{text}`"
        assert base64.b64encode(value.encode()).decode() not in everything

"""A fake Slack Web API on loopback that records every request body.

Usage::

    with FakeSlack() as slack:
        client = WebClient(token="xoxb-test", base_url=slack.api_url)
        client.chat_postMessage(channel="C1", text="hi")
        slack.calls("chat.postMessage")[0].body["text"]      # 'hi'
        slack.response_url("abc")                            # where respond() posts

Web API methods answer ``{"ok": true, ...}``; ``fail(method, status, body, times)``
makes the next calls fail (429 with Retry-After, 500, ``ok: false``).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from tests.support.http import send_json

__all__ = ["Call", "FakeSlack"]


@dataclass
class Call:
    path: str
    method: str
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.time)


class FakeSlack:
    def __init__(self, usergroups: dict[str, list[str]] | None = None):
        self.usergroups = usergroups or {}
        self.answers: dict[str, dict] = {}  # method -> fixed answer (e.g. apps.connections.open)
        self._calls: list[Call] = []
        self._failures: dict[str, list[tuple[int, dict, dict]]] = {}
        self._lock = threading.Condition()
        self._ts = 0
        self.uploads: dict[str, bytes] = {}  # file id -> bytes uploaded to its upload URL
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                fake._handle(self)

            def do_GET(self):
                fake._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> FakeSlack:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def api_url(self) -> str:
        return self.base + "/api/"

    def response_url(self, key: str) -> str:
        return f"{self.base}/response/{key}"

    # -- scripting --------------------------------------------------------------------
    def fail(self, method: str, status: int = 500, body: dict | None = None, times: int = 1,
             headers: dict | None = None) -> None:
        with self._lock:
            self._failures.setdefault(method, []).extend(
                [(status, body or {"ok": False, "error": "internal_error"}, headers or {})] * times
            )

    # -- inspection -------------------------------------------------------------------
    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def responses(self, key: str | None = None) -> list[Call]:
        """Messages sent to response URLs (what respond() posted)."""
        with self._lock:
            return [c for c in self._calls if c.method.startswith("response/")
                    and (key is None or c.method == f"response/{key}")]

    def wait(self, predicate, timeout: float = 10.0) -> Any:
        """Block until ``predicate(self)`` is truthy; return its value (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                value = predicate(self)
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting; calls so far: {[c.method for c in self._calls]}")
                self._lock.wait(remaining)

    def wait_for(self, method: str, count: int = 1, timeout: float = 10.0) -> list[Call]:
        return self.wait(lambda s: (lambda found: found if len(found) >= count else None)(
            [c for c in s._calls if c.method == method]), timeout)

    # -- the server side --------------------------------------------------------------
    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        ctype = request.headers.get("Content-Type", "")
        if request.path.startswith("/upload/"):  # the URL files.getUploadURLExternal handed out
            with self._lock:
                self.uploads[request.path.removeprefix("/upload/")] = raw
            body = {"bytes": len(raw)}
        elif "json" in ctype:
            body = json.loads(raw or b"{}")
        else:
            body = dict(parse_qsl(raw.decode()))
            if "?" in request.path:
                body.update(parse_qsl(request.path.split("?", 1)[1]))
        path = request.path.split("?", 1)[0]
        if path == "/_stats":  # for out-of-process users (benchmarks): calls per method
            with self._lock:
                counts: dict[str, int] = {}
                for call in self._calls:
                    counts[call.method] = counts.get(call.method, 0) + 1
            send_json(request, 200, counts)
            return
        method = path.removeprefix("/api/") if path.startswith("/api/") else path.lstrip("/")
        status, answer, extra = self._answer(method, body)
        call = Call(path, method, dict(request.headers.items()), body)
        payload = json.dumps(answer).encode() if not isinstance(answer, bytes) else answer
        request.send_response(status)
        request.send_header("Content-Type", "application/json" if not isinstance(answer, bytes) else "text/plain")
        request.send_header("Content-Length", str(len(payload)))
        for key, value in extra.items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(payload)
        with self._lock:
            self._calls.append(call)
            self._lock.notify_all()

    def _answer(self, method: str, body: dict) -> tuple[int, Any, dict]:
        with self._lock:
            queue = self._failures.get(method)
            if queue:
                return queue.pop(0)
            self._ts += 1
            ts = f"{1700000000 + self._ts}.{self._ts:06d}"
        if method.startswith("response/"):
            return 200, b"ok", {}
        if method in self.answers:
            return 200, self.answers[method], {}
        if method == "auth.test":
            return 200, {"ok": True, "user": "opsbot", "team": "Test Team", "user_id": "UBOT", "team_id": "T1"}, {}
        if method == "usergroups.users.list":
            group = body.get("usergroup", "")
            if group not in self.usergroups:
                return 200, {"ok": False, "error": "no_such_subteam"}, {}
            return 200, {"ok": True, "users": self.usergroups[group]}, {}
        if method == "files.getUploadURLExternal":
            file_id = f"F{self._ts:06d}"
            return 200, {"ok": True, "upload_url": f"{self.base}/upload/{file_id}", "file_id": file_id}, {}
        if method == "files.completeUploadExternal":
            files = json.loads(body.get("files", "[]"))
            return 200, {"ok": True, "files": [{"id": f["id"], "title": f.get("title")} for f in files]}, {}
        if method in ("chat.postMessage", "chat.update", "chat.postEphemeral"):
            channel = body.get("channel", "C0")  # Slack answers with the channel's id, not its name
            channel = f"C-{channel[1:].upper()}" if channel.startswith("#") else channel
            return 200, {"ok": True, "channel": channel, "ts": body.get("ts") or ts,
                         "message": {"text": body.get("text", "")}}, {}
        return 200, {"ok": True}, {}


if __name__ == "__main__":  # python -m tests.support.fakeslack: serve until killed, print the base URL
    import signal

    with FakeSlack() as fake:
        print(fake.base, flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})

"""A fake Slack Web API on loopback, at least as strict as Slack, that records every request body.

Usage::

    with FakeSlack(token="xoxb-test") as slack:
        client = WebClient(token="xoxb-test", base_url=slack.api_url)
        client.chat_postMessage(channel="C1", text="hi")
        slack.calls("chat.postMessage")[0].body["text"]      # 'hi'
        slack.response_url("abc")                            # where respond() posts

It refuses what Slack refuses, with Slack's answers: a missing or wrong bot token
(``not_authed``/``invalid_auth``), Block Kit that is malformed or past Slack's limits
(``invalid_blocks`` with Slack's ``errors`` list; see :mod:`tests.support.blockkit`), blocks
without fallback ``text`` (``no_text``), more than 40,000 characters (``msg_too_long``),
channels it cannot post to (``channel_not_found``, ``not_in_channel``; see
:mod:`tests.support.fakeworkspace`), ``chat.update`` of a message that is not there. A
response_url answers as Slack does: an HTTP error status with a short text body. A
message opsbot answers in an HTTP ack is checked with ``acked()`` (the harness does it).

Every refusal is recorded (``refusals()``); the ``fake_slack`` fixture fails a test that
made Slack refuse something, unless the test ``allow()``-ed that error. ``fail(method,
status, body, times)`` scripts failures (429 with Retry-After, 500, ``ok: false``).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

from tests.support.blockkit import message_refusal, view_errors
from tests.support.fakeworkspace import Workspace
from tests.support.http import send_json

__all__ = ["Call", "FakeSlack"]

RESPONSE_URL_USES = 5  # Slack: a response_url takes up to 5 messages within 30 minutes


@dataclass
class Call:
    path: str
    method: str
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.time)
    status: int = 200
    answer: Any = None
    refusal: str | None = None  # Slack's error code when the fake's rules refused the call (not fail())

    @property
    def ok(self) -> bool:
        return self.refusal is None and self.status < 400 and not (
            isinstance(self.answer, dict) and self.answer.get("ok") is False)


def _invalid_arguments(*messages: str) -> dict:
    return {"ok": False, "error": "invalid_arguments",
            "response_metadata": {"messages": [f"[ERROR] {m}" for m in messages]}}


class FakeSlack:
    def __init__(self, usergroups: dict[str, list[str]] | None = None, *, token: str = "xoxb-test-token-0000",
                 app_token: str = "xapp-test", keep_calls: bool = True):
        self.keep_calls = keep_calls  # False (a benchmark's long run): keep refusals only; /_stats counts all
        self.usergroups = usergroups or {}
        self.token, self.app_token = token, app_token
        self.workspace = Workspace()
        self.answers: dict[str, dict] = {}  # method -> fixed answer (e.g. apps.connections.open)
        self._calls: list[Call] = []
        self._counts: dict[str, int] = {}  # method -> calls; for /_stats
        self._used: dict[str, int] = {}  # method -> calls answered ok; a response_url takes 5 (see _respond)
        self._failures: dict[str, list[tuple[int, dict, dict]]] = {}
        self._allowed: set[str] = set()
        self._expired: set[str] = set()
        self._files: set[str] = set()
        self._lock = threading.Condition()
        self._ts = 0
        self.uploads: dict[str, bytes] = {}  # file id -> bytes uploaded to its upload URL
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes: without this, a client that keeps the connection open
            # waits for its own delayed ACK (40 ms) before the body comes; Slack's servers do not do that.
            disable_nagle_algorithm = True

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

    def channel(self, ref: str, **kw) -> Any:
        """Declare a channel: ``channel("#secret", private=True, member=False)``, ``channel("#x", exists=False)``."""
        with self._lock:
            return self.workspace.channel(ref, **kw)

    def expire(self, key: str) -> None:
        """The response_url ``key`` is past its 30 minutes: Slack answers 404 ``expired_url``."""
        with self._lock:
            self._expired.add(key)

    def allow(self, *errors: str) -> None:
        """This test makes Slack refuse on purpose with these errors (e.g. ``not_in_channel``)."""
        with self._lock:
            self._allowed.update(errors)

    def acked(self, answer: dict) -> Call:
        """Check a message opsbot answered in an HTTP ack (Slack shows it like a post): recorded as ``ack``."""
        call = Call("/ack", "ack", {}, answer)
        refusal = message_refusal(answer)
        call.answer, call.refusal = refusal or {"ok": True}, refusal and refusal["error"]
        with self._lock:
            self._record(call)
        return call

    def _record(self, call: Call) -> None:
        """Keep a call (with the lock held), and count it: a busy run (a benchmark) makes tens of thousands."""
        if self.keep_calls or call.refusal:
            self._calls.append(call)
        self._counts[call.method] = self._counts.get(call.method, 0) + 1
        if call.refusal:
            self._counts["_refused"] = self._counts.get("_refused", 0) + 1
        if call.ok and not call.method.startswith("response/"):  # a response_url's uses are taken in _respond
            self._used[call.method] = self._used.get(call.method, 0) + 1
        self._lock.notify_all()

    # -- inspection -------------------------------------------------------------------
    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def responses(self, key: str | None = None) -> list[Call]:
        """Messages sent to response URLs (what respond() posted)."""
        with self._lock:
            return [c for c in self._calls if c.method.startswith("response/")
                    and (key is None or c.method == f"response/{key}")]

    def refusals(self, error: str | None = None) -> list[Call]:
        """Calls the fake refused by Slack's rules (scripted ``fail()`` answers are not refusals)."""
        with self._lock:
            return [c for c in self._calls if c.refusal and error in (None, c.refusal)]

    def unexpected_refusals(self) -> list[Call]:
        return [c for c in self.refusals() if c.refusal not in self._allowed]

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
        path = request.path.split("?", 1)[0]
        if path == "/_stats":  # for out-of-process users (benchmarks): calls per method; ?prefix=P: their sum
            prefix = parse_qs(urlsplit(request.path).query).get("prefix")
            with self._lock:
                counts = dict(self._counts) if prefix is None else \
                    {"calls": sum(n for method, n in self._counts.items() if method.startswith(prefix[0]))}
            send_json(request, 200, counts)
            return
        body: Any
        if path.startswith("/upload/"):  # the URL files.getUploadURLExternal handed out
            with self._lock:
                self.uploads[path.removeprefix("/upload/")] = raw
            body = {"bytes": len(raw)}
        elif "json" in ctype:
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = raw.decode(errors="replace")  # refused below: invalid_json / invalid_payload
        else:
            body = dict(parse_qsl(raw.decode(errors="replace")))
            if "?" in request.path:
                body.update(parse_qsl(request.path.split("?", 1)[1]))
        method = path.removeprefix("/api/") if path.startswith("/api/") else path.lstrip("/")
        call = Call(path, method, dict(request.headers.items()), body)
        status, answer, extra = self._answer(call)
        call.status, call.answer = status, answer
        with self._lock:  # recorded before the answer goes out: a client that got it can inspect the call
            self._record(call)
        payload = json.dumps(answer).encode() if not isinstance(answer, bytes) else answer
        request.send_response(status)
        request.send_header("Content-Type", "application/json" if not isinstance(answer, bytes) else "text/plain")
        request.send_header("Content-Length", str(len(payload)))
        for key, value in extra.items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(payload)

    def _refuse(self, call: Call, answer: dict, status: int = 200) -> tuple[int, Any, dict]:
        call.refusal = answer["error"]
        return status, answer, {}

    def _answer(self, call: Call) -> tuple[int, Any, dict]:
        method, body = call.method, call.body
        with self._lock:  # scripted failures first; every other call gets the next ts (tests count on it)
            queue = self._failures.get(method)
            if queue:
                return queue.pop(0)
            self._ts += 1
            ts = f"{1700000000 + self._ts}.{self._ts:06d}"
        if method.startswith("upload/"):
            return 200, b"OK - " + str(body["bytes"]).encode(), {}
        if method.startswith("response/"):
            return self._respond(call)
        refusal = self._auth(call)
        if refusal:
            return self._refuse(call, {"ok": False, "error": refusal})
        if not isinstance(body, dict):
            return self._refuse(call, {"ok": False, "error": "invalid_json"})
        if method in self.answers:
            return 200, self.answers[method], {}
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {"ok": True}, {}
        answer = handler(body, ts)
        if answer.get("ok") is False:
            return self._refuse(call, answer)
        return 200, answer, {}

    def _auth(self, call: Call) -> str | None:
        """Slack's answer to a call without the right token: not_authed, invalid_auth, not_allowed_token_type."""
        header = call.headers.get("Authorization") or call.headers.get("authorization") or ""
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None
        if token is None and isinstance(call.body, dict):
            token = call.body.get("token")  # Slack also takes the token as a form field
        expected = self.app_token if call.method == "apps.connections.open" else self.token
        if not token:
            return "not_authed"
        if token != expected:
            return "not_allowed_token_type" if token in (self.token, self.app_token) else "invalid_auth"
        return None

    def _respond(self, call: Call) -> tuple[int, Any, dict]:
        """A post to a response_url: Slack answers errors with an HTTP status and a one-word body."""
        key = call.method.removeprefix("response/")
        with self._lock:  # a use is taken here, before the checks: posts at once cannot all pass the count
            expired = key in self._expired
            used = self._used.get(call.method, 0)
            if not expired and used < RESPONSE_URL_USES:
                self._used[call.method] = used + 1
        if expired or used >= RESPONSE_URL_USES:
            call.refusal = "expired_url" if expired else "used_url"
            return 404, call.refusal.encode(), {}
        if not isinstance(call.body, dict):
            call.refusal = "invalid_payload"
        else:
            answer = message_refusal(call.body)
            call.refusal = answer and answer["error"]
        if call.refusal:  # a refused post does not use the URL up: its use is given back
            with self._lock:
                self._used[call.method] -= 1
            return 400, call.refusal.encode(), {}
        return 200, b"ok", {}

    # -- Web API methods (each answers like Slack; ``ok: false`` answers count as refusals) --
    def _auth_test(self, body: dict, ts: str) -> dict:
        return {"ok": True, "user": "opsbot", "team": "Test Team", "user_id": "UBOT", "team_id": "T1"}

    def _usergroups_users_list(self, body: dict, ts: str) -> dict:
        group = body.get("usergroup", "")
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": self.usergroups[group]}

    def _files_getUploadURLExternal(self, body: dict, ts: str) -> dict:
        missing = [f for f in ("filename", "length") if not body.get(f)]
        if missing:
            return _invalid_arguments(*(f"missing required field: {f}" for f in missing))
        file_id = f"F{ts.split('.')[1]}"
        with self._lock:
            self._files.add(file_id)
        return {"ok": True, "upload_url": f"{self.base}/upload/{file_id}", "file_id": file_id}

    def _files_completeUploadExternal(self, body: dict, ts: str) -> dict:
        files = body.get("files", "[]")
        files = json.loads(files) if isinstance(files, str) else files
        with self._lock:
            if not files or any(f.get("id") not in self._files or f["id"] not in self.uploads for f in files):
                return {"ok": False, "error": "file_not_found"}
            if body.get("channel_id"):
                channel, error = self.workspace.resolve(body["channel_id"], ids_only=True)
                if error:
                    return {"ok": False, "error": error}
        return {"ok": True, "files": [{"id": f["id"], "title": f.get("title")} for f in files]}

    def _views_open(self, body: dict, ts: str) -> dict:
        view = body.get("view")
        if isinstance(view, str):
            try:
                view = json.loads(view)
            except ValueError:
                return _invalid_arguments("must provide an object [json-pointer:/view]")
        if not body.get("trigger_id"):
            return _invalid_arguments("missing required field: trigger_id")
        errors = view_errors(view)
        if errors:
            return _invalid_arguments(*errors)
        return {"ok": True, "view": {**view, "id": f"V{self._ts:06d}", "hash": f"h{self._ts}"}}

    def _chat(self, body: dict, ts: str, *, update: bool = False, ephemeral: bool = False) -> dict:
        missing = [f for f in (("channel", "ts") if update else ("user",) if ephemeral else ()) if not body.get(f)]
        if missing:
            return _invalid_arguments(*(f"missing required field: {f}" for f in missing))
        refusal = message_refusal(body)
        if refusal:
            return refusal
        with self._lock:
            channel, error = self.workspace.resolve(body.get("channel"), ids_only=update, users_too=not update)
            if error:
                return {"ok": False, "error": error}
            if update:
                error = self.workspace.update(channel, body["ts"], body)
                if error:
                    return {"ok": False, "error": error}
                ts = body["ts"]
            elif not ephemeral:
                self.workspace.posted(channel, ts, body)
        if ephemeral:
            return {"ok": True, "message_ts": ts}
        return {"ok": True, "channel": channel, "ts": ts, "message": {"text": body.get("text", "")}}

    def _chat_postMessage(self, body: dict, ts: str) -> dict:
        return self._chat(body, ts)

    def _chat_update(self, body: dict, ts: str) -> dict:
        return self._chat(body, ts, update=True)

    def _chat_postEphemeral(self, body: dict, ts: str) -> dict:
        return self._chat(body, ts, ephemeral=True)


if __name__ == "__main__":  # python -m tests.support.fakeslack [--token xoxb-…]: serve until killed, print the base URL
    import argparse
    import signal

    parser = argparse.ArgumentParser()
    parser.add_argument("--token", default="xoxb-test-token-0000")
    parser.add_argument("--counts-only", action="store_true",
                        help="keep no accepted call, only counts (GET /_stats) and refusals: for a long benchmark")
    options = parser.parse_args()
    with FakeSlack(token=options.token, keep_calls=not options.counts_only) as fake:
        print(fake.base, flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})

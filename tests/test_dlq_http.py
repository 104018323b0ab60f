"""The http dead-letter backend against a local service implementing the dead-letter admin API."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from pydantic import SecretStr

from bot.core.invocation import Actor, CommandError, Where
from commands.dlq.http_api import HttpDeadLetters
from tests.conftest import ALICE, write_config
from tests.support.http import send_json
from commands.dlq.settings import find_queue

TOKEN = "admin-token-123"
OPS = Where("C-ops", channel_name="ops")


class ExportService:
    """GET /v1/admin/export-dead-letter (paged), POST .../{id}/replay; can fail on purpose."""

    def __init__(self, count: int):
        self.dead = {f"dl-{i}": {"id": f"dl-{i}", "type": "export" if i % 2 else "webhook",
                                 "error": "HTTP 502 from partner" if i % 2 else "signature mismatch",
                                 "failedAt": f"2026-11-01T10:{i % 60:02d}:00Z", "payload": {"n": i}}
                     for i in range(count)}
        self.replays: list[tuple[str, str]] = []     # (id, idempotency key) accepted
        self.fail_next: dict[str, int] = {}          # path prefix -> how many 500s to answer first
        self.always_fail: set[str] = set()           # ids whose replay fails for good
        self.slow_next: dict[str, int] = {}          # path prefix -> how many answers to delay past the timeout
        self.requests: list[str] = []
        self.lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body):
                send_json(self, status, body)

            def _guard(self) -> bool:
                delay = False
                with service.lock:
                    for prefix, left in list(service.slow_next.items()):
                        if self.path.startswith(prefix) and left > 0:
                            service.slow_next[prefix] = left - 1
                            delay = True
                if delay:
                    time.sleep(3)  # beyond the client's 2 s timeout
                with service.lock:
                    service.requests.append(f"{self.command} {self.path}")
                    for prefix, left in list(service.fail_next.items()):
                        if self.path.startswith(prefix) and left > 0:
                            service.fail_next[prefix] = left - 1
                            self._send(500, {"error": "try again"})
                            return False
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._send(401, {"error": "unauthorized"})
                    return False
                return True

            def do_GET(self):
                if not self._guard():
                    return
                query = parse_qs(urlparse(self.path).query)
                limit, cursor = int(query["limit"][0]), int(query.get("cursor", ["0"])[0])
                with service.lock:
                    ids = list(service.dead)
                page = [service.dead[i] for i in ids[cursor:cursor + limit]]
                nxt = str(cursor + limit) if cursor + limit < len(ids) else None
                self._send(200, {"items": page, "next_cursor": nxt})

            def do_POST(self):
                if not self._guard():
                    return
                entry_id = self.path.split("/")[-2]
                key = self.headers.get("Idempotency-Key", "")
                with service.lock:
                    if entry_id in service.always_fail:
                        self._send(422, {"error": "payload rejected"})
                        return
                    if entry_id not in service.dead:
                        already = any(k == key for _, k in service.replays)
                        self._send(409 if already else 404, {"error": "gone"})
                        return
                    del service.dead[entry_id]
                    service.replays.append((entry_id, key))
                self._send(200, {"ok": True, "status": "replayed"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def service():
    svc = ExportService(45)
    yield svc
    svc.server.shutdown()


@pytest.fixture
def runtime_http(tmp_path, database_url, make_runtime, redis_client, service, monkeypatch):
    monkeypatch.setenv("TEST_EXPORT_TOKEN", TOKEN)
    path = write_config(tmp_path / "app.yaml", database_url)
    path.write_text(path.read_text().replace(
        '  - {name: jobs, redis: main, ready: jobs, dead: "jobs:dead"}',
        f'  - {{name: exports, backend: http, url: "{service.url}", token: "${{TEST_EXPORT_TOKEN}}", '
        'page_size: 10, retries: 3, timeout: 2s}'))
    return make_runtime(path)


def run(runtime, text):
    return runtime.engine.handle(text, Actor(ALICE), OPS)


def test_status_and_peek_page_through_the_api(runtime_http, service):
    status = run(runtime_http, "dlq status").result
    assert status.data["queues"][0] == {"queue": "exports", "backend": "http", "ready": None, "dead": 45,
                                        "oldest_age_seconds": status.data["queues"][0]["oldest_age_seconds"]}
    peek = run(runtime_http, "dlq peek --type webhook --limit 2").result
    assert peek.data["matching"] == 23 and [e["id"] for e in peek.data["entries"]] == ["dl-0", "dl-2"]
    assert len([r for r in service.requests if r.startswith("GET")]) == 10  # 5 pages each


def test_replay_retries_5xx_reports_per_item_and_is_idempotent(runtime_http, service):
    service.fail_next["/v1/admin/export-dead-letter?"] = 2      # the listing fails twice, then answers
    service.fail_next["/v1/admin/export-dead-letter/dl-1/"] = 1  # one replay fails once, then succeeds
    service.always_fail.add("dl-3")

    preview = run(runtime_http, "dlq requeue --type export")
    assert preview.kind == "preview" and preview.result.data["plan"]["matching"] == 22
    done = runtime_http.engine.confirm(preview.pending.id, Actor(ALICE), OPS).result

    assert done.status == "warn"
    assert done.data["replayed"] == 21
    assert done.data["failed"] == [{"id": "dl-3", "status": 422, "detail": '{"error": "payload rejected"}'}]
    assert {i for i, _ in service.replays} == {f"dl-{i}" for i in range(1, 45, 2)} - {"dl-3"}
    assert all(key.startswith("opsbot:") and key.endswith(entry) for entry, key in service.replays)
    # Replaying again finds only what failed; nothing is replayed twice.
    again = run(runtime_http, "dlq requeue --type export")
    assert again.result.data["plan"]["matching"] == 1


def test_a_timeout_is_retried_and_the_replay_still_happens_once(runtime_http, service):
    service.slow_next["/v1/admin/export-dead-letter/dl-5/"] = 1
    preview = run(runtime_http, "dlq requeue --id dl-5")
    done = runtime_http.engine.confirm(preview.pending.id, Actor(ALICE), OPS).result

    assert done.status == "ok" and done.data["replayed"] == 1
    posts = lambda: [r for r in service.requests if r.startswith("POST") and "/dl-5/" in r]  # noqa: E731
    deadline = time.monotonic() + 5
    while len(posts()) < 2 and time.monotonic() < deadline:  # the slow first try reaches the service late
        time.sleep(0.05)
    assert len(posts()) == 2                               # the first timed out, the retry went through
    assert [i for i, _ in service.replays] == ["dl-5"]     # and the late first try replayed nothing twice


def test_a_wrong_token_is_a_clear_error(runtime_http):
    wrong = find_queue(runtime_http.settings, "exports").model_copy(update={"token": SecretStr("wrong")})

    with pytest.raises(CommandError, match="refused the token"):
        list(HttpDeadLetters(wrong).entries())


def test_trim_is_refused_for_the_http_backend(runtime_http):
    outcome = run(runtime_http, "dlq trim")
    assert outcome.result.status == "error" and "trim works on redis-list queues" in outcome.result.summary

"""A fake deploy provider and a fake service on loopback, for ``rollback``.

Usage::

    with Deployer(style="http") as deployer:          # or style="render"
        deployer.add("dep-1", "aaa111...", "succeeded", minutes_ago=300)
        deployer.add("dep-2", "bbb222...", "live", minutes_ago=60)
        deployer.base                                  # the provider's base URL
        deployer.rollbacks                             # [(deploy id, Idempotency-Key or None)], as received

    with FakeService() as service:
        service.ready = False; service.errors = 50; service.requests = 100; service.queue = 3000

A rollback starts a new deploy that is ``in_progress`` for ``polls_until_live`` reads, then
``live`` (or ``failed`` with ``fail_next``); the one it replaced becomes ``succeeded``.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

from tests.support.http import PROMETHEUS_TEXT, send_json, send_text

__all__ = ["Deployer", "FakeService"]

RENDER_STATUS = {"live": "live", "succeeded": "deactivated", "failed": "build_failed", "in_progress": "update_in_progress"}


class _Server:
    def __init__(self, handle):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                handle(self, "GET", None)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                handle(self, "POST", json.loads(self.rfile.read(length) or b"{}"))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.owner = owner

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


class Deployer(_Server):
    def __init__(self, style: str = "http", token: str = "deploy-token", service_id: str = "srv-api"):
        super().__init__(self._handle)
        self.style, self.token, self.service_id = style, token, service_id
        self.deploys: list[dict] = []  # newest first
        self.rollbacks: list[tuple[str, str | None]] = []
        self.polls_until_live = 2
        self.fail_next = False
        self.errors_before_answer = 0  # 5xx answers before a real one (retries)
        self._lock = threading.Lock()
        self._count = 0

    def add(self, deploy_id: str, version: str, state: str, minutes_ago: float, message: str = "") -> None:
        created = datetime.now(UTC) - timedelta(minutes=minutes_ago)
        self.deploys.append({"id": deploy_id, "version": version, "state": state, "created": created,
                             "finished": created + timedelta(minutes=2), "message": message or f"release {version[:7]}",
                             "polls": 0})
        self.deploys.sort(key=lambda d: d["created"], reverse=True)

    def _render(self, deploy: dict) -> dict:
        if self.style == "http":
            return {"id": deploy["id"], "version": deploy["version"], "status": deploy["state"],
                    "created_at": deploy["created"].isoformat(), "finished_at": deploy["finished"].isoformat(),
                    "message": deploy["message"]}
        return {"id": deploy["id"], "commit": {"id": deploy["version"], "message": deploy["message"] + "\n\nbody"},
                "status": RENDER_STATUS[deploy["state"]], "trigger": "api",
                "createdAt": deploy["created"].isoformat().replace("+00:00", "Z"),
                "finishedAt": deploy["finished"].isoformat().replace("+00:00", "Z")}

    def _advance(self, deploy: dict) -> None:
        if deploy["state"] != "in_progress":
            return
        deploy["polls"] += 1
        if deploy["polls"] >= self.polls_until_live:
            if deploy.get("will_fail"):
                deploy["state"] = "failed"
                return
            for other in self.deploys:
                if other["state"] == "live":
                    other["state"] = "succeeded"
            deploy["state"] = "live"
            deploy["finished"] = datetime.now(UTC)

    def _handle(self, request: BaseHTTPRequestHandler, method: str, body: dict | None) -> None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            send_json(request, 401, {"message": "unauthorized"})
            return
        with self._lock:
            if self.errors_before_answer:
                self.errors_before_answer -= 1
                send_json(request, 503, {"message": "try later"})
                return
            path = urlparse(request.path).path
            prefix = "" if self.style == "http" else f"/services/{self.service_id}"
            if method == "GET" and path == f"{prefix}/deploys":
                items = [self._render(d) for d in self.deploys]
                send_json(request, 200, items if self.style == "http" else
                          [{"deploy": item, "cursor": item["id"]} for item in items])
            elif method == "GET" and path.startswith(f"{prefix}/deploys/"):
                deploy = next((d for d in self.deploys if d["id"] == path.rsplit("/", 1)[1]), None)
                if deploy is None:
                    send_json(request, 404, {"message": "not found"})
                    return
                self._advance(deploy)
                send_json(request, 200, self._render(deploy))
            elif method == "POST" and path == f"{prefix}/rollback":
                target_id = body.get("deploy_id") if self.style == "http" else body.get("deployId")
                target = next(d for d in self.deploys if d["id"] == target_id)
                self.rollbacks.append((target_id, request.headers.get("Idempotency-Key")))
                self._count += 1
                new = {"id": f"dep-rb{self._count}", "version": target["version"], "state": "in_progress",
                       "created": datetime.now(UTC), "finished": datetime.now(UTC), "polls": 0,
                       "message": f"rollback to {target_id}", "will_fail": self.fail_next}
                self.deploys.insert(0, new)
                send_json(request, 201, self._render(new))
            else:
                send_json(request, 404, {"message": f"no route {method} {path}"})


class FakeService(_Server):
    """/ready and /metrics of a service whose health the test sets; counters move between scrapes."""

    def __init__(self):
        super().__init__(self._handle)
        self.ready = True
        self.requests = 1000.0
        self.errors = 10.0
        self.error_share = 0.0  # of the requests added between two scrapes
        self.queue = 500.0
        self.queue_step = -50.0  # per scrape: negative is draining

    def _handle(self, request: BaseHTTPRequestHandler, method: str, body: dict | None) -> None:
        if request.path == "/ready":
            send_json(request, 200 if self.ready else 503, {"ok": self.ready})
        elif request.path == "/metrics":
            self.requests += 100
            self.errors += 100 * self.error_share
            self.queue = max(0.0, self.queue + self.queue_step)
            text = (f"# TYPE http_requests_total counter\nhttp_requests_total {self.requests}\n"
                    f"# TYPE http_requests_errors_total counter\nhttp_requests_errors_total {self.errors}\n"
                    f"# TYPE queue_depth gauge\nqueue_depth {self.queue}\n")
            send_text(request, 200, text, PROMETHEUS_TEXT)
        else:
            send_json(request, 404, {})

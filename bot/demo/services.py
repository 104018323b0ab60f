"""The demo's own services on loopback: an API that is healthy (with deploys to roll back) and a worker that is not ready.

Usage::

    with DemoServices() as services:            # an HTTP server on 127.0.0.1, a free port
        services.base                           # 'http://127.0.0.1:41234'
        # GET  {base}/api/health, /api/readyz, /worker/health   -> 200 {"ok": true}
        # GET  {base}/worker/readyz                             -> 503, the worker is not ready
        # GET  {base}/worker/metrics                            -> Prometheus text, error rate above threshold
        # GET  {base}/deploy/deploys[/<id>]                     -> the API's deploys, newest first
        # POST {base}/deploy/rollback {"deploy_id": "dep-103"}  -> a new live deploy at once

Leaving the block shuts the server down.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["DemoServices"]


class DemoServices:
    """The demo's own services on loopback: an API that is healthy and a worker that is not ready."""

    METRICS = ("# TYPE queue_depth gauge\nqueue_depth 1380\n"
               "# TYPE http_requests_total counter\nhttp_requests_total 2000\n"
               "# TYPE http_requests_errors_total counter\nhttp_requests_errors_total 160\n")

    def __init__(self) -> None:
        demo = self
        now = time.time()
        # The API's deploys, newest first: the live one came an hour ago, after the last migration.
        self.deploys = [
            {"id": "dep-104", "version": "9f2c1e7a", "status": "live", "message": "bulk export v2",
             "created_at": _iso(now - 3600), "finished_at": _iso(now - 3500)},
            {"id": "dep-103", "version": "4b7d0c21", "status": "succeeded", "message": "fix tenant caps",
             "created_at": _iso(now - 86400), "finished_at": _iso(now - 86300)},
            {"id": "dep-102", "version": "e81a9f55", "status": "succeeded", "message": "audit log paging",
             "created_at": _iso(now - 3 * 86400), "finished_at": _iso(now - 3 * 86400 + 100)},
        ]

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(*demo.answer(self.path))

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                self._send(*demo.rollback(json.loads(self.rfile.read(length) or b"{}")))

            def _send(self, status: int, body: str, kind: str) -> None:
                payload = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str) -> tuple[int, str, str]:
        if path == "/worker/readyz":
            return 503, json.dumps({"ok": False, "redis": "reconnecting", "heartbeat_age_s": 412}), "application/json"
        if path == "/worker/metrics":
            return 200, self.METRICS, "text/plain; version=0.0.4"
        if path in ("/api/health", "/api/readyz", "/worker/health"):
            return 200, json.dumps({"ok": True}), "application/json"
        if path.startswith("/deploy/deploys"):
            wanted = path.split("?")[0].removeprefix("/deploy/deploys").strip("/")
            found = [d for d in self.deploys if not wanted or d["id"] == wanted]
            body = found if not wanted else (found[0] if found else {})
            return (200 if found else 404), json.dumps(body), "application/json"
        return 404, "{}", "application/json"

    def rollback(self, body: dict) -> tuple[int, str, str]:
        """POST /deploy/rollback: the new deploy is live at once (the demo's platform is fast)."""
        target = next((d for d in self.deploys if d["id"] == body.get("deploy_id")), None)
        if target is None:
            return 404, json.dumps({"message": "no such deploy"}), "application/json"
        for deploy in self.deploys:
            if deploy["status"] == "live":
                deploy["status"] = "succeeded"
        new = {**target, "id": f"dep-{100 + len(self.deploys) + 2}", "status": "live",
               "message": f"rollback to {target['id']}", "created_at": _iso(time.time()),
               "finished_at": _iso(time.time())}
        self.deploys.insert(0, new)
        return 201, json.dumps(new), "application/json"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "DemoServices":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))

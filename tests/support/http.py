"""Small helpers for the HTTP servers the tests run on loopback."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


PROMETHEUS_TEXT = "text/plain; version=0.0.4"


def send_json(handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    send_text(handler, status, json.dumps(body), "application/json", headers)


def send_text(handler: BaseHTTPRequestHandler, status: int, text: str, content_type: str,
              headers: dict[str, str] | None = None) -> None:
    payload = text.encode()
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(payload)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(payload)

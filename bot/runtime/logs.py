"""Structured logs: one JSON object per line in production, readable lines on a terminal.

Usage::

    setup_logging(level="INFO", redactor=runtime.redactor)
    with log_context(request_id="abc", team="T1", user="U1", channel="C1"):
        log.info("command done", extra={"command": "dlq status", "duration_ms": 12})

Every line carries the request context set with :func:`log_context`. Secrets are
redacted by key (password|token|secret|key ...) and by value pattern (DSN
credentials, Slack and bearer tokens, ``token=...``) before anything is written.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, TextIO

from bot.config.secretnames import is_secret_key
from bot.core.redact import MASK, Redactor

__all__ = ["setup_logging", "log_context", "JsonFormatter", "TextFormatter"]

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("opsbot_log_context", default={})
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(_context.get())
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_"):
            fields[key] = value
    return {key: (MASK if is_secret_key(key) and value not in (None, "") else value) for key, value in fields.items()}


class JsonFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return self.redactor.text(json.dumps(document, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor):
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        return self.redactor.text(f"{line} {extra}".rstrip())


def setup_logging(level: str = "INFO", redactor: Redactor | None = None, stream: TextIO | None = None,
                  json_lines: bool | None = None) -> logging.Handler:
    """Send every log line through one redacting handler; JSON unless writing to a terminal."""
    stream = stream or sys.stderr
    if json_lines is None:
        json_lines = not stream.isatty()
    redactor = redactor or Redactor()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(redactor) if json_lines else TextFormatter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler

"""The door of ``POST /slack/events``: size, signature and shape are checked before Bolt sees a request.

Usage::

    gate = SlackGate(signing_secret)
    refusal = gate.check(environ)       # None, or (status, reason) to answer at once; the body is re-readable
    environ.get(COMMAND)                # a slash command's fields, when it passed and is one (as Bolt reads them;
                                        # not an ssl_check=1, which Bolt answers without running it)

Slack signs every request; Bolt verifies the signature, but it parses the body
first, so a correctly signed request with a malformed body (a ``payload`` that is
not a JSON object, a click without actions, a non-numeric timestamp header) made
it answer 500 with a traceback. Here: too large is 413, an unsigned or badly
stamped request is 401, and a signed one Slack would never send is 400.
"""

from __future__ import annotations

import io
import json
from urllib.parse import parse_qs

from slack_sdk.signature import SignatureVerifier

__all__ = ["SlackGate", "MAX_BODY", "COMMAND"]

COMMAND = "opsbot.slack_command"  # the environ key of a passed slash command's fields: the body is parsed once
MAX_BODY = 1_000_000  # Slack's payloads are a few kB; a modal submission stays far below this
_INTERACTIVE = {"block_actions", "view_submission", "view_closed", "shortcut", "message_action",
                "block_suggestion", "interactive_message"}


class SlackGate:
    def __init__(self, signing_secret: str | None):
        self.verifier = SignatureVerifier(signing_secret) if signing_secret else None

    def check(self, environ: dict) -> tuple[int, str] | None:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return 400, "bad Content-Length"
        if length > MAX_BODY:
            return 413, "request too large"
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)  # Bolt reads it again
        if self.verifier is not None:
            timestamp = environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", "")
            if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
                return 401, "invalid request timestamp"
            if not self.verifier.is_valid(body, timestamp, environ.get("HTTP_X_SLACK_SIGNATURE", "")):
                return 401, "invalid signature"
        return _shape(body, environ.get("CONTENT_TYPE", ""), environ)


def _shape(body: bytes, content_type: str, environ: dict) -> tuple[int, str] | None:
    """None when the body is something Slack sends: a slash command (its fields then under ``environ[COMMAND]``,
    the last of a repeated field winning, as in Bolt), or an interaction whose payload holds up."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return 400, "body is not UTF-8"
    if content_type.startswith("application/json"):
        try:
            document = json.loads(text)
        except ValueError:
            return 400, "body is not JSON"
        return None if isinstance(document, dict) else (400, "body is not a JSON object")
    form = parse_qs(text, keep_blank_values=True)
    if "payload" not in form:
        if "command" in form:
            fields = {key: values[-1] for key, values in form.items()}
            if fields.get("ssl_check") != "1":  # Bolt answers an ssl_check before any listener: never a command
                environ[COMMAND] = fields
            return None
        return None if "ssl_check" in form else (400, "neither a command nor an interaction")
    if len(form["payload"]) != 1:
        return 400, "more than one payload"
    try:
        payload = json.loads(form["payload"][0])
    except ValueError:
        return 400, "payload is not JSON"
    if not isinstance(payload, dict) or payload.get("type") not in _INTERACTIVE:
        return 400, "payload is not an interaction"
    if payload["type"] == "block_actions":
        actions = payload.get("actions")
        if not isinstance(actions, list) or not actions or not all(
                isinstance(a, dict) and isinstance(a.get("action_id"), str) for a in actions):
            return 400, "block_actions without actions"
    if payload["type"] in ("view_submission", "view_closed") and not isinstance(payload.get("view"), dict):
        return 400, "view payload without a view"
    return None

"""The groups' webhooks on ``opsbot serve``: authenticate, size-check, queue durably, answer at once; handle later.

Usage::

    intake = WebhookIntake(runtime, queue)          # every Webhook the installed groups offer
    if intake.serves(environ):                       # in the WSGI app, before the other routes
        return intake(environ, start_response)
    ...
    run_webhook(runtime, job)                        # in a worker, for a job of kind ``hook:<path>``

A request is answered 401 unless it carries the webhook's bearer token or basic-auth pair
(compared in constant time; nothing is read or queued before that), 413 above the size
limit, 400 when it is not a JSON object, 503 when the work queue cannot take it (the sender
retries), and 200 once the body is in the durable work queue: an accepted body is never lost.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from bot.core.group import Webhook
from bot.store.workqueue import Job, WorkQueue

__all__ = ["KIND", "WebhookIntake", "run_webhook"]

log = logging.getLogger("opsbot.hooks")

KIND = "hook:"  # a queued webhook body's job kind: hook:/alerts
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 405: "Method Not Allowed", 411: "Length Required",
            413: "Content Too Large", 503: "Service Unavailable"}


def _hooks(runtime: Any) -> dict[str, Webhook]:
    return {hook.path: hook for group in runtime.groups for hook in group.webhooks}


class WebhookIntake:
    def __init__(self, runtime: Any, queue: WorkQueue):
        self.runtime = runtime
        self.queue = queue
        self.hooks = _hooks(runtime)

    def serves(self, environ: dict) -> bool:
        return environ.get("PATH_INFO") in self.hooks

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ["PATH_INFO"]

        def counted(status: str, headers: list) -> Any:
            self.runtime.metrics.webhooks.labels(path=path, status=status.split(" ", 1)[0]).inc()
            return start_response(status, headers)

        return self._take(self.hooks[path], environ, counted)

    def _take(self, hook: Webhook, environ: dict, start_response: Callable) -> Iterable[bytes]:
        settings = self.runtime.settings
        if environ.get("REQUEST_METHOD") != "POST":
            return _answer(start_response, 405, "POST a JSON body")
        if not _authorized(environ.get("HTTP_AUTHORIZATION", ""), *hook.credentials(settings)):
            log.warning("refused a request to %s: missing or wrong credentials", hook.path)
            return _answer(start_response, 401, "missing or wrong credentials")
        limit = hook.max_bytes(settings)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _answer(start_response, 400, "bad Content-Length")
        if length > limit:
            return _answer(start_response, 413, f"the body is over {limit} bytes")
        raw = environ["wsgi.input"].read(min(length, limit + 1)) if length else b""
        if len(raw) > limit:
            return _answer(start_response, 413, f"the body is over {limit} bytes")
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            return _answer(start_response, 400, "the body is not JSON")
        if not isinstance(body, dict):
            return _answer(start_response, 400, "the body is not a JSON object")
        problem = hook.check(body)
        if problem:
            return _answer(start_response, 400, problem)
        try:
            self.queue.push(KIND + hook.path, {"body": body, "received_at": time.time()})
        except Exception as exc:
            log.error("could not queue a %s body (the sender will retry): %s", hook.path, exc)
            return _answer(start_response, 503, "the work queue is unavailable; retry")
        return _answer(start_response, 200, None)


def _authorized(header: str, token: str | None, basic: tuple[str, str] | None) -> bool:
    """Whether ``header`` carries ``token`` as a bearer or ``basic`` as basic auth; constant time per comparison."""
    scheme, _, given = header.partition(" ")
    given = given.strip()
    if scheme.lower() == "bearer" and token:
        return hmac.compare_digest(given.encode(), token.encode())
    if scheme.lower() == "basic" and basic and basic[0] and basic[1]:
        try:
            decoded = base64.b64decode(given, validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        user_ok = hmac.compare_digest(user, basic[0].encode())
        password_ok = hmac.compare_digest(password, basic[1].encode())
        return bool(sep) and user_ok and password_ok
    return False


def _answer(start_response: Callable, status: int, error: str | None) -> list[bytes]:
    payload = json.dumps({"ok": True} if error is None else {"ok": False, "error": error}).encode()
    start_response(f"{status} {_REASONS[status]}", [("Content-Type", "application/json"),
                                                    ("Content-Length", str(len(payload)))])
    return [payload]


def run_webhook(runtime: Any, job: Job, queue: WorkQueue) -> None:
    """Handle one queued webhook body; never raises. A handler that fails (Slack or Redis down) gets the body again
    later, up to ``ATTEMPTS`` times, so an accepted body is not dropped on the first outage."""
    path = job.kind.removeprefix(KIND)
    hook = _hooks(runtime).get(path)
    if hook is None:
        log.error("no group handles webhook %s any more; dropping a body queued at %.0f", path, job.enqueued_at)
        return
    attempt = int(job.body.get("attempt", 1))
    try:
        hook.handle(runtime, job.body["body"])
    except Exception as exc:
        if attempt >= ATTEMPTS:
            log.exception("giving up on a %s body after %d attempts: %s", path, attempt, exc)
            return
        log.error("handling a %s body failed (attempt %d of %d, it is queued again): %s", path, attempt, ATTEMPTS,
                  runtime.redactor.text(str(exc)))
        time.sleep(min(2.0 * attempt, 10.0))  # this worker thread backs off; the others carry on
        try:
            queue.push(job.kind, {**job.body, "attempt": attempt + 1})
        except Exception as again:
            log.error("could not queue the %s body again: %s", path, again)
            raise


ATTEMPTS = 5

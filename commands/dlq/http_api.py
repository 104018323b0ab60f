"""The ``http`` dead-letter backend: a service's admin API (docs/conventions.md).

Usage::

    queue = HttpDeadLetters(find_queue(settings, "exports"))
    entries = list(queue.entries())               # every dead letter, page by page
    summary = queue.scan(Filters(type="export"), samples=3)
    result = queue.replay("job-17", key="task1")  # ReplayResult(id="job-17", ok=True, status=200, detail="")

Contract (documented in the README):
``GET {url}/v1/admin/export-dead-letter?limit=N[&cursor=C]`` answers
``{"items": [entry, ...], "next_cursor": "..."|null}`` (a bare list is accepted too), and
``POST {url}/v1/admin/export-dead-letter/{id}/replay`` replays one. The token comes
from the environment and is sent as a bearer token. 5xx answers and timeouts are
retried with exponential backoff. Replays carry an ``Idempotency-Key``, and a 409
("already replayed") counts as success, so running a replay again is harmless.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, ClassVar, TYPE_CHECKING
from urllib.parse import quote

from commands.dlq.settings import QueueSettings
from bot.core.httpretry import request
from bot.core.invocation import CommandError
from commands.dlq.backend import (CANCEL, RATE, READY_DEPTH, REPLAY, REQUEUE, RESUME, TRIM, Capabilities, Depth,
                                  Refusing, ReplayResult, ScanSummary)
from commands.dlq.entries import DeadEntry, Filters

if TYPE_CHECKING:
    import httpx

__all__ = ["HttpDeadLetters", "ReplayResult"]

LIST_PATH = "/v1/admin/export-dead-letter"


class HttpDeadLetters(Refusing):
    """A :class:`~commands.dlq.backend.DeadLetterBackend` that lists and replays; no tasks, no trims."""

    backend: ClassVar[str] = "http"
    capabilities: ClassVar[Capabilities] = Capabilities(frozenset({REQUEUE, REPLAY, RATE}), {
        RESUME: "queue {queue!r} replays dead letters one by one through the service's API (http backend); "
                "there is no requeue task to resume",
        TRIM: "queue {queue!r} uses the http backend; trim works on redis-list queues",
        CANCEL: "queue {queue!r} has no requeue task to cancel (http backend)",
        READY_DEPTH: "queue {queue!r} is a service's admin API (http backend): it counts dead letters only",
    })

    @classmethod
    def open(cls, settings: QueueSettings, targets: Any, app: Any) -> "HttpDeadLetters":
        """The factory's constructor: everything it needs is in the queue's settings."""
        return cls(settings)

    def __init__(self, settings: QueueSettings, *, transport: httpx.BaseTransport | None = None,
                 sleep=time.sleep):
        import httpx

        if not settings.url:
            raise CommandError(f"queue {settings.name!r} uses the http backend but has no url")
        self.settings = settings
        self.name = settings.name
        self.sleep = sleep
        headers = {"Accept": "application/json"}
        if settings.token is not None:
            headers["Authorization"] = f"Bearer {settings.token.get_secret_value()}"
        self.http = httpx.Client(base_url=settings.url.rstrip("/"), headers=headers, timeout=settings.timeout,
                                 transport=transport)

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        return request(self.http, method, path, retries=self.settings.retries, sleep=self.sleep, **kw)

    def where(self) -> str:
        return self.settings.url

    def destination(self) -> str:
        return f"replay via {self.settings.url}"

    def probe(self) -> str:
        return f"ok, {self.dead_count()} dead letters at {self.settings.url}"

    def depth(self) -> Depth:
        summary = self.scan(Filters(), 0)
        return Depth(None, summary.total, summary.oldest)

    def dead_count(self) -> int:
        return sum(1 for _ in self.entries())

    def oldest(self, count: int) -> list[DeadEntry]:
        oldest = sorted((e for e in self.entries() if e.failed_at is not None), key=lambda e: e.failed_at)
        return oldest[:count]

    def scan(self, filters: Filters, samples: int = 10) -> ScanSummary:
        summary = ScanSummary()
        now = time.time()
        for entry in self.entries():
            summary.total += 1
            summary.scanned += 1
            if filters.matches(entry, now):
                summary.count(entry, samples)
        return summary

    def entries(self, filters: Filters | None = None) -> Iterator[DeadEntry]:
        """Every dead letter (matching ``filters``), page by page, in the API's order."""
        now = time.time()
        for entry in self._pages():
            if filters is None or filters.matches(entry, now):
                yield entry

    def _pages(self) -> Iterator[DeadEntry]:
        cursor: str | None = None
        while True:
            params = {"limit": self.settings.page_size, **({"cursor": cursor} if cursor else {})}
            response = self._request("GET", LIST_PATH, params=params)
            if response.status_code in (401, 403):
                raise CommandError(f"{self.settings.url} refused the token (HTTP {response.status_code})")
            if response.status_code >= 400:
                raise CommandError(f"listing dead letters failed: HTTP {response.status_code}")
            try:
                body = response.json()
            except ValueError:
                raise CommandError(f"{self.settings.url}{LIST_PATH} did not answer JSON") from None
            items = body if isinstance(body, list) else body.get("items", [])
            for item in items:
                yield DeadEntry(json.dumps(item).encode(), item if isinstance(item, dict) else None)
            cursor = None if isinstance(body, list) else body.get("next_cursor")
            if not cursor or not items:
                return

    def replay(self, entry_id: str, *, key: str) -> ReplayResult:
        path = f"{LIST_PATH}/{quote(entry_id, safe='')}/replay"
        try:
            response = self._request("POST", path, headers={"Idempotency-Key": f"{key}:{entry_id}"})
        except CommandError as exc:
            return ReplayResult(entry_id, False, None, str(exc))
        if response.status_code < 300 or response.status_code == 409:
            return ReplayResult(entry_id, True, response.status_code)
        return ReplayResult(entry_id, False, response.status_code, response.text[:200])

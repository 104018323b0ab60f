"""One HTTP request with bounded retries: 5xx answers and timeouts are retried with exponential backoff.

Usage::

    response = request(client, "GET", "/v1/deploys", retries=3)        # httpx.Response (any status < 500)

A 5xx on the last attempt is returned for the caller to explain; a timeout or a
refused connection on the last attempt becomes a CommandError naming the URL,
never the token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bot.core.invocation import CommandError

if TYPE_CHECKING:
    import httpx

__all__ = ["request"]


def request(client: httpx.Client, method: str, url: str, *, retries: int = 3, first_delay: float = 0.2,
            sleep: Callable[[float], None] = time.sleep, **kw) -> httpx.Response:
    import httpx

    delay = first_delay
    for attempt in range(retries + 1):
        try:
            response = client.request(method, url, **kw)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            if attempt == retries:
                where = str(client.base_url).rstrip("/") + url if not url.startswith("http") else url
                raise CommandError(f"{where} did not answer: {type(exc).__name__}") from None
        else:
            if response.status_code < 500 or attempt == retries:
                return response
        sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")

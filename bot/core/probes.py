"""Health, readiness and metrics of the configured services, checked concurrently.

Usage::

    checks = check_services(settings.services)               # every liveness/readiness URL at once
    figures = scrape_all(settings.services)                  # {"worker": ServiceMetrics(...)}

The total time is the slowest single check, and each check is bounded by its
service's timeout. A 5xx answer or a refused connection is tried once more after a
short pause, inside the same timeout; a check that passed only on that retry says so
(``Check.retried``), so a flapping service is visible rather than hidden. Metrics are
read with prometheus-client's text-format parser.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, TYPE_CHECKING

from bot.config.settings import ServiceSettings

if TYPE_CHECKING:
    import httpx

__all__ = ["Check", "ServiceMetrics", "as_dict", "check_services", "scrape_all"]

BODY_CHARS = 500


@dataclass(frozen=True)
class Check:
    service: str
    kind: str
    url: str
    ok: bool
    status: int | None
    ms: float
    detail: str = ""
    body: str = ""
    retried: str = ""  # what the first attempt got, when only the retry passed


@dataclass
class ServiceMetrics:
    service: str
    ok: bool
    values: dict[str, float] = field(default_factory=dict)
    detail: str = ""

    @property
    def error_rate(self) -> float | None:
        requests, errors = self.values.get("requests"), self.values.get("errors")
        if not requests or errors is None:
            return None
        return errors / requests


def _headers(service: ServiceSettings) -> dict[str, str]:
    if service.auth_header and service.auth_token is not None:
        return {service.auth_header: service.auth_token.get_secret_value()}
    return {}


RETRY_PAUSE = 0.1


async def _get(client: httpx.AsyncClient, url: str, service: ServiceSettings) -> tuple[httpx.Response, str]:
    """GET with one retry on 5xx or a transport error, all within the service's timeout.

    Returns the response and, when it came from the retry, what the first attempt got.
    Raises the last httpx error when no response came at all.
    """
    import asyncio
    import httpx

    deadline = time.perf_counter() + service.timeout
    first = ""
    for attempt in (1, 2):
        remaining = deadline - time.perf_counter()
        try:
            response = await client.get(url, headers=_headers(service), timeout=max(remaining, 0.001))
        except httpx.TimeoutException:
            raise
        except httpx.HTTPError as exc:
            if attempt == 2 or deadline - time.perf_counter() <= RETRY_PAUSE * 2:
                raise
            first = f"{type(exc).__name__}"
        else:
            if response.status_code < 500 or attempt == 2 or deadline - time.perf_counter() <= RETRY_PAUSE * 2:
                return response, first
            first = f"HTTP {response.status_code}"
        await asyncio.sleep(RETRY_PAUSE)
    raise AssertionError("unreachable")


async def _check(client: httpx.AsyncClient, name: str, kind: str, url: str, service: ServiceSettings) -> Check:
    import httpx

    started = time.perf_counter()
    try:
        response, retried = await _get(client, url, service)
    except httpx.TimeoutException:
        return Check(name, kind, url, False, None, (time.perf_counter() - started) * 1000,
                     f"no answer within {service.timeout:g}s")
    except httpx.HTTPError as exc:
        return Check(name, kind, url, False, None, (time.perf_counter() - started) * 1000,
                     f"{type(exc).__name__}: {exc}")
    ms = (time.perf_counter() - started) * 1000
    body = response.text[:BODY_CHARS]
    if response.status_code >= 400:
        return Check(name, kind, url, False, response.status_code, ms, f"HTTP {response.status_code}", body)
    if service.expect:
        try:
            document = response.json()
        except ValueError:
            return Check(name, kind, url, False, response.status_code, ms,
                         f"expected JSON containing {json.dumps(service.expect)}", body)
        wrong = {k: document.get(k) if isinstance(document, dict) else None
                 for k, v in service.expect.items() if not isinstance(document, dict) or document.get(k) != v}
        if wrong:
            return Check(name, kind, url, False, response.status_code, ms,
                         f"expected {json.dumps(service.expect)}, got {json.dumps(wrong)}", body)
    return Check(name, kind, url, True, response.status_code, ms,
                 f"ok on a retry (first: {retried})" if retried else "", retried=retried)


def check_services(services: dict[str, ServiceSettings], only: str | None = None) -> list[Check]:
    import asyncio
    import httpx

    targets = [(name, kind, url, service) for name, service in services.items() if only in (None, name)
               for kind, url in (("liveness", service.liveness), ("readiness", service.readiness)) if url]

    async def run() -> list[Check]:
        async with httpx.AsyncClient(follow_redirects=False) as client:
            return await asyncio.gather(*(_check(client, *target) for target in targets))

    return list(asyncio.run(run())) if targets else []


def _histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] == 0:
        return None
    rank, previous_bound, previous_count = q * ordered[-1][1], 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            span = count - previous_count
            return previous_bound + (bound - previous_bound) * ((rank - previous_count) / span if span else 1)
        previous_bound, previous_count = bound, count
    return None


def parse_metrics(text: str, names: dict[str, str | None]) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    buckets: dict[float, float] = {}
    wanted = {name: key for key, name in names.items() if name and key != "latency"}
    latency = names.get("latency")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                key = wanted[sample.name]
                sums[key] = sums.get(key, 0.0) + sample.value
            elif latency and sample.name == f"{latency}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    p95 = _histogram_quantile(buckets, 0.95)
    if p95 is not None:
        sums["latency_p95_seconds"] = p95
    return sums


def scrape_all(services: dict[str, ServiceSettings], only: str | None = None) -> dict[str, ServiceMetrics]:
    import asyncio
    import httpx

    targets = {name: service for name, service in services.items() if service.metrics and only in (None, name)}

    async def one(client: httpx.AsyncClient, name: str, service: ServiceSettings) -> ServiceMetrics:
        try:
            response, _ = await _get(client, service.metrics, service)
            response.raise_for_status()
            return ServiceMetrics(name, True, parse_metrics(response.text, service.metric_names.model_dump()))
        except (httpx.HTTPError, ValueError) as exc:
            return ServiceMetrics(name, False, detail=f"{type(exc).__name__}: {str(exc)[:200]}")

    async def run() -> list[ServiceMetrics]:
        async with httpx.AsyncClient() as client:
            return await asyncio.gather(*(one(client, name, service) for name, service in targets.items()))

    return {m.service: m for m in asyncio.run(run())} if targets else {}


def as_dict(check: Check) -> dict[str, Any]:
    return {"service": check.service, "kind": check.kind, "url": check.url, "ok": check.ok, "status": check.status,
            "ms": round(check.ms, 1), "detail": check.detail, "body": check.body if not check.ok else "",
            "retried": check.retried}

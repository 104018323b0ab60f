"""Slack clients that survive Slack's bad moments.

Usage::

    client = web_client(settings, metrics)            # WebClient, or None without a bot token
    webhook(response_url, metrics).send_dict(message)

429 answers are retried after Slack's ``Retry-After``; 5xx answers and connection errors
are retried with backoff (slack_sdk's retry handlers). Every wait and failure is counted.
"""

from __future__ import annotations

from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.webhook import WebhookClient

from bot.config import Settings
from bot.metrics import Metrics

__all__ = ["web_client", "webhook", "retry_handlers"]


class _CountedRateLimit(RateLimitErrorRetryHandler):
    def __init__(self, metrics: Metrics | None, **kw):
        super().__init__(**kw)
        self.metrics = metrics

    def prepare_for_next_attempt(self, **kw) -> None:
        if self.metrics is not None:
            self.metrics.slack_rate_limit_waits.inc()
        super().prepare_for_next_attempt(**kw)


class _CountedServerError(ServerErrorRetryHandler):
    def __init__(self, metrics: Metrics | None, **kw):
        super().__init__(**kw)
        self.metrics = metrics

    def prepare_for_next_attempt(self, **kw) -> None:
        if self.metrics is not None:
            self.metrics.slack_errors.labels(kind="server_error").inc()
        super().prepare_for_next_attempt(**kw)


def retry_handlers(metrics: Metrics | None = None) -> list:
    return [
        ConnectionErrorRetryHandler(max_retry_count=2),
        _CountedRateLimit(metrics, max_retry_count=3),
        _CountedServerError(metrics, max_retry_count=3),
    ]


def web_client(settings: Settings, metrics: Metrics | None = None, timeout: int = 10) -> WebClient | None:
    """A Web API client for ``slack.api_url`` (``$SLACK_API_URL``), or None without a bot token."""
    token = settings.slack.bot_token.get_secret_value() if settings.slack.bot_token else None
    if not token:
        return None
    base_url = settings.slack.api_url if settings.slack.api_url.endswith("/") else settings.slack.api_url + "/"
    return WebClient(token=token, base_url=base_url, timeout=timeout, retry_handlers=retry_handlers(metrics))


def webhook(url: str, metrics: Metrics | None = None, timeout: int = 10) -> WebhookClient:
    return WebhookClient(url, timeout=timeout, retry_handlers=retry_handlers(metrics))

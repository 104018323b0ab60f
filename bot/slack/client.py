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
from bot.config.settings import Settings
from bot.runtime.metrics import Metrics
from bot.core.result import Attachment
from bot.slack.keepalive import KeepAliveWebhookClient

__all__ = ["retry_handlers", "upload_attachment", "web_client", "webhook"]


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


def webhook(url: str, metrics: Metrics | None = None, timeout: int = 10) -> KeepAliveWebhookClient:
    """A response_url client whose connection stays open for the thread's next reply (:mod:`bot.slack.keepalive`)."""
    return KeepAliveWebhookClient(url, timeout=timeout, retry_handlers=retry_handlers(metrics))


def upload_attachment(client: WebClient, attachment: Attachment, *, channel: str, thread_ts: str | None = None,
                      timeout: float = 300.0) -> str:
    """Upload a file of any size from disk, streamed (``files_upload_v2`` reads it into memory).

    Slack's three steps: ``files.getUploadURLExternal``, a POST of the bytes to the URL it
    hands out, ``files.completeUploadExternal`` into the channel (and thread). Returns the file id.
    """
    import httpx

    size = attachment.size()
    target = client.files_getUploadURLExternal(filename=attachment.filename, length=size)
    headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
    if attachment.path is not None:
        with open(attachment.path, "rb") as handle:
            response = httpx.post(target["upload_url"], content=handle, headers=headers, timeout=timeout)
    else:
        response = httpx.post(target["upload_url"], content=attachment.content or b"", headers=headers,
                              timeout=timeout)
    if response.status_code >= 400:
        raise RuntimeError(f"the file upload answered HTTP {response.status_code}")
    client.files_completeUploadExternal(files=[{"id": target["file_id"], "title": attachment.title or
                                                attachment.filename}], channel_id=channel, thread_ts=thread_ts)
    return target["file_id"]

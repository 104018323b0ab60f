"""Replies to Slack's response_urls over kept-alive connections, one set per thread.

Usage::

    KeepAliveWebhookClient(url, timeout=10, retry_handlers=[...]).send_dict(message)

slack_sdk's ``WebhookClient`` posts with ``urllib``, which opens a new connection (a new
TLS handshake on hooks.slack.com) for every reply and closes it after. This client posts
the same request over a connection kept open in the calling thread for the next reply to
the same host, and answers as ``urllib`` does: a non-2xx status is an ``HTTPError`` (so
slack_sdk's retry handlers see 429s and 5xxs as before), a failure to send is a
``URLError``. A connection the server has closed meanwhile is not reused, nor one idle for
more than ``MAX_IDLE`` seconds, nor one opened with another timeout or TLS context; one it
closes just as a reply goes (before answering it) is replaced at once for that reply, not
after slack_sdk's backoff. A proxy from the environment goes through ``urllib`` as before,
and so does a redirect, from the answer received (the reply is not posted twice).
"""

from __future__ import annotations

import http.client
import io
import select
import threading
import time
import urllib.request
from collections import OrderedDict
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from slack_sdk.webhook import WebhookClient, WebhookResponse

__all__ = ["KeepAliveWebhookClient"]

KEEP = 4  # connections kept per thread (response_urls all go to hooks.slack.com)
# A connection idle longer is not reused: a NAT or firewall on the way may have forgotten it without a word
# (AWS's NAT gateway after 350 s, Azure's load balancer after 4 min), and a reply sent on it would wait its
# whole timeout. Replies come in bursts (a command's progress, its outcome), which this still covers.
MAX_IDLE = 30.0

_local = threading.local()
_proxies: dict[str, str] | None = None


class KeepAliveWebhookClient(WebhookClient):
    def _perform_http_request_internal(self, url: str, req: urllib.request.Request):
        parts = urlsplit(url)
        if self.proxy is not None or parts.scheme not in ("http", "https") or _proxied(parts):
            return super()._perform_http_request_internal(url, req)
        # Reused only by a client that would have opened the same connection (its timeout, its TLS context).
        key = (parts.scheme, parts.hostname, parts.port, self.timeout, self.ssl)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        headers = {name.title(): value for name, value in req.header_items()}
        conn = _take(key)
        if conn is not None:
            try:
                response, body = _exchange(conn, path, req.data, headers, kept=True)
            except _HungUp:  # closed as this reply went, before any answer to it: it goes again at once, on a new one
                conn = None
        if conn is None:
            conn = (http.client.HTTPSConnection(parts.netloc, timeout=self.timeout, context=self.ssl)
                    if parts.scheme == "https" else http.client.HTTPConnection(parts.netloc, timeout=self.timeout))
            response, body = _exchange(conn, path, req.data, headers, kept=False)
        if 300 <= response.status < 400:  # a redirect: urllib follows it from this answer (posting again would repeat it)
            conn.close()
            req.timeout = self.timeout  # as urllib's open() sets it; its redirect handler reads it
            opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=self.ssl))
            followed = opener.error("http", req, io.BytesIO(body), response.status, response.reason, response.headers)
            return _answer(url, followed.status, followed.headers, followed.read())
        if response.will_close:
            conn.close()
        else:
            _keep(key, conn)
        if not 200 <= response.status < 300:
            raise HTTPError(url, response.status, response.reason, response.headers, io.BytesIO(body))
        return _answer(url, response.status, response.headers, body)


class _HungUp(Exception):
    """A kept connection the server closed (or reset) as the reply went, before answering it."""


def _exchange(conn: http.client.HTTPConnection, path: str, body: bytes | None, headers: dict, *,
              kept: bool) -> tuple[http.client.HTTPResponse, bytes]:
    """The answer to one POST and its whole body; the connection closed if that failed."""
    try:
        conn.request("POST", path, body=body, headers=headers)
    except OSError as exc:  # as urllib: a request that could not be sent is a URLError
        conn.close()
        raise (_HungUp() if kept and isinstance(exc, ConnectionError) else URLError(exc)) from exc
    try:
        response = conn.getresponse()
    except BaseException as exc:
        conn.close()
        if kept and isinstance(exc, ConnectionError):  # RemoteDisconnected is one
            raise _HungUp() from exc
        raise
    try:
        return response, response.read()
    except BaseException:
        conn.close()
        raise


def _answer(url: str, status: int, headers, body: bytes) -> WebhookResponse:
    charset = headers.get_content_charset() or "utf-8"
    return WebhookResponse(url=url, status_code=status, body=body.decode(charset), headers=headers)


def _proxied(parts) -> bool:
    """Whether urllib would go through a proxy from the environment (read once, as urllib's own opener does)."""
    global _proxies
    if _proxies is None:
        _proxies = urllib.request.getproxies()
    return parts.scheme in _proxies and not urllib.request.proxy_bypass(parts.hostname or "")


def _take(key: tuple) -> http.client.HTTPConnection | None:
    """This thread's open connection to ``key``'s host, unless the server closed it meanwhile or it sat idle."""
    kept: OrderedDict = getattr(_local, "conns", None) or OrderedDict()
    _local.conns = kept
    conn, since = kept.pop(key, (None, 0.0))
    if conn is None:
        return None
    if time.monotonic() - since > MAX_IDLE:
        conn.close()
        return None
    sock = conn.sock
    try:
        readable = sock is None or bool(select.select([sock], [], [], 0)[0])  # EOF (or stray bytes): not reusable
    except (OSError, ValueError):
        readable = True
    if readable:
        conn.close()
        return None
    return conn


def _keep(key: tuple, conn: http.client.HTTPConnection) -> None:
    kept: OrderedDict = _local.conns
    kept[key] = (conn, time.monotonic())
    while len(kept) > KEEP:
        kept.popitem(last=False)[1][0].close()

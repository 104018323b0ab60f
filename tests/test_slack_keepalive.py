"""Replies to response_urls reuse one connection per thread, and still go when Slack closed it meanwhile."""

from __future__ import annotations

import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.error import URLError

import pytest

from bot.slack.client import webhook
from bot.slack.keepalive import KeepAliveWebhookClient
from tests.support.redisplus import TestCertificates


class CountingSlack:
    """A response_url endpoint on loopback that counts the connections it accepts and the replies it takes."""

    def __init__(self, answers: list[int] | None = None, close_after_each: bool = False,
                 delays: list[float] | None = None, forgets_idle: bool = False):
        self.connections = 0
        self.replies: list[bytes] = []
        self.followed: list[str] = []  # GETs of where a 303 sent the reply
        self.answers = list(answers or [])
        self.delays = list(delays or [])  # seconds to think before answering each reply
        slack = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def setup(self):
                slack.connections += 1
                super().setup()

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                self.served = getattr(self, "served", 0) + 1
                if forgets_idle and self.served > 1:  # a NAT that forgot the connection: nothing comes back
                    time.sleep(10)
                    self.close_connection = True
                    return
                slack.replies.append(body)
                time.sleep(slack.delays.pop(0) if slack.delays else 0)
                status = slack.answers.pop(0) if slack.answers else 200
                if status == 0:  # hang up without answering, as a server closing an idle connection just then
                    self.close_connection = True
                    return
                payload = b"ok" if status == 200 else b"invalid_blocks"
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                if status == 303:
                    self.send_header("Location", "/response/done")
                if close_after_each:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                slack.followed.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/response/T1/1/abc"

    def __enter__(self) -> CountingSlack:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_replies_from_one_worker_thread_share_one_connection():
    with CountingSlack() as slack:
        for n in range(5):
            assert webhook(slack.url).send_dict({"text": f"reply {n}"}).status_code == 200
    assert slack.connections == 1
    assert [b'{"text": "reply %d"}' % n for n in range(5)] == slack.replies


def test_a_connection_slack_closed_is_not_reused_and_the_reply_still_goes():
    with CountingSlack(close_after_each=True) as slack:
        for n in range(3):
            assert webhook(slack.url).send_dict({"text": f"reply {n}"}).status_code == 200
    assert slack.connections == 3
    assert len(slack.replies) == 3


def test_a_429_is_retried_and_a_refusal_answers_with_slacks_status_and_body():
    with CountingSlack(answers=[429, 200, 400]) as slack:
        assert webhook(slack.url).send_dict({"text": "once"}).status_code == 200  # retried after Retry-After
        refused = webhook(slack.url).send_dict({"text": "bad blocks"})
    assert (refused.status_code, refused.body) == (400, "invalid_blocks")
    assert len(slack.replies) == 3
    assert slack.connections == 1


def test_a_connection_idle_too_long_is_not_trusted_with_the_next_reply(monkeypatch):
    """A NAT on the way may drop an idle connection without telling either end; a reply on it would wait its whole
    timeout. After MAX_IDLE the next reply goes on a new connection (and a burst still shares one)."""
    monkeypatch.setattr("bot.slack.keepalive.MAX_IDLE", 0.3)
    with CountingSlack(forgets_idle=True) as slack:
        assert KeepAliveWebhookClient(slack.url, timeout=3).send_dict({"text": "first"}).status_code == 200
        time.sleep(0.5)
        started = time.monotonic()
        assert KeepAliveWebhookClient(slack.url, timeout=3).send_dict({"text": "after a pause"}).status_code == 200
        assert time.monotonic() - started < 2  # not the timeout, then a retry
    assert slack.connections == 2 and len(slack.replies) == 2
    with CountingSlack() as slack:
        for n in range(3):
            assert webhook(slack.url).send_dict({"text": f"burst {n}"}).status_code == 200
    assert slack.connections == 1


def test_a_reply_to_a_server_that_is_gone_fails_as_before():
    with CountingSlack() as slack:
        url = slack.url
    with pytest.raises((URLError, ConnectionError)):  # as urllib raised it, so SafeRespond keeps the reply for later
        webhook(url, timeout=2).send_dict({"text": "lost"})


def test_a_reply_with_a_short_timeout_gives_up_in_time_after_one_with_a_longer_timeout():
    with CountingSlack(delays=[0, 3]) as slack:
        assert webhook(slack.url, timeout=10).send_dict({"text": "first"}).status_code == 200
        started = time.monotonic()
        with pytest.raises(TimeoutError):  # not 3 s later, on the first reply's connection and its 10 s timeout
            webhook(slack.url, timeout=1).send_dict({"text": "stuck"})
        assert time.monotonic() - started < 2.5


def test_a_reply_answered_with_a_redirect_is_posted_once_and_followed_as_urllib_does():
    with CountingSlack(answers=[303]) as slack:
        response = webhook(slack.url).send_dict({"text": "once"})
    assert (response.status_code, response.body) == (200, "ok")
    assert slack.replies == [b'{"text": "once"}']  # a server that acts on the POST and then redirects acts once
    assert slack.followed == ["/response/done"]


def test_a_kept_connection_slack_hangs_up_on_as_the_next_reply_goes_is_replaced_at_once():
    with CountingSlack(answers=[200, 0]) as slack:
        client = KeepAliveWebhookClient(slack.url, retry_handlers=[])  # not slack_sdk's retry: it waits 0.5-1.5 s first
        assert client.send_dict({"text": "first"}).status_code == 200
        assert client.send_dict({"text": "second"}).status_code == 200
    assert slack.connections == 2
    assert slack.replies[-1] == b'{"text": "second"}'


def test_a_kept_tls_connection_is_not_reused_by_a_client_that_does_not_trust_the_server(tmp_path):
    certs = TestCertificates(tmp_path)
    slack = CountingSlack()
    served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    served.load_cert_chain(certs.server, certs.server_key)
    slack.server.socket = served.wrap_socket(slack.server.socket, server_side=True)
    url = slack.url.replace("http:", "https:")
    with slack:
        trusting = ssl.create_default_context(cafile=certs.ca)
        assert KeepAliveWebhookClient(url, ssl=trusting).send_dict({"text": "first"}).status_code == 200
        with pytest.raises(URLError, match="CERTIFICATE_VERIFY_FAILED"):  # the system's CAs do not know this one
            KeepAliveWebhookClient(url, retry_handlers=[]).send_dict({"text": "second"})
    assert slack.replies == [b'{"text": "first"}']

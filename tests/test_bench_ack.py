"""The instrument of ``bench/ack.py``: wrk sends each pre-signed request, and its latencies and errors come back.

Nothing here is timed; this checks that the benchmark measures what it says it does (every request signed
as Slack signs it, each sent, every latency kept, refusals counted as errors).
"""

from __future__ import annotations

import importlib.util
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
from slack_sdk.signature import SignatureVerifier

from tests.conftest import REPO
from tests.support.packages import debian_binary


@pytest.fixture(scope="module")
def bench():
    debian_binary("wrk", "wrk")
    spec = importlib.util.spec_from_file_location("bench_ack", REPO / "bench" / "ack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Receiver:
    """A Slack endpoint that checks each request's signature: 200 when good, 401 when not (or always 401)."""

    def __init__(self, secret: str, refuse: bool = False, slow: dict[int, float] | None = None):
        self.verifier, self.refuse, self.slow = SignatureVerifier(secret), refuse, slow or {}
        self.triggers: list[str] = []
        self.peers: set[tuple] = set()  # the client's connections
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                good = receiver.verifier.is_valid(body, self.headers["X-Slack-Request-Timestamp"],
                                                  self.headers["X-Slack-Signature"])
                receiver.peers.add(self.client_address)
                if good:
                    trigger = parse_qs(body.decode())["trigger_id"][0]
                    receiver.triggers.append(trigger)
                    time.sleep(receiver.slow.get(int(trigger.rsplit("-", 1)[1]), 0))
                status = 401 if receiver.refuse or not good else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # socketserver's 5 drops the SYNs of a burst of connections (1 s retries)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/slack/events"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_every_signed_request_is_sent_and_every_latency_kept(bench):
    receivers = [Receiver(bench.SECRET), Receiver(bench.SECRET)]  # two replicas behind the "load balancer"
    try:
        latencies, errors = bench.load_wrk([r.url for r in receivers], "http://slack.test/response/x", 301, 10)
    finally:
        for receiver in receivers:
            receiver.close()
    assert errors == 0
    assert sorted(int(t.rsplit("-", 1)[1]) for r in receivers for t in r.triggers) == list(range(301))  # once each
    assert {int(t.rsplit("-", 1)[1]) % 2 for t in receivers[1].triggers} == {1}  # odd ones to the second replica
    assert len(latencies) == 301 and all(0 < latency < 10 for latency in latencies)


def test_refused_requests_are_counted_as_errors(bench):
    receiver = Receiver(bench.SECRET, refuse=True)
    try:
        latencies, errors = bench.load_wrk([receiver.url], "http://slack.test/response/x", 50, 5)
    finally:
        receiver.close()
    assert errors >= 50 and len(receiver.triggers) >= 50


def test_the_slowest_requests_at_the_end_of_a_run_are_measured_too(bench):
    """The last requests sent are still in flight when the others are done; their latencies are the run's
    tail and must be kept, not cut off by answers to requests sent again in the meantime."""
    receiver = Receiver(bench.SECRET, slow={index: 0.5 for index in range(195, 200)})
    try:
        latencies, errors = bench.load_wrk([receiver.url], "http://slack.test/response/x", 200, 10)
    finally:
        receiver.close()
    assert errors == 0
    assert len(latencies) == 200  # each request measured once
    assert len([latency for latency in latencies if latency >= 0.5]) == 5


def test_a_server_that_stops_answering_is_reported_not_measured_around(bench):
    """Requests that never got an answer (the server died, wrk's run ended) count as errors."""
    receiver = Receiver(bench.SECRET)
    receiver.close()  # nothing listens: every connection is refused
    latencies, errors = bench.load_wrk([receiver.url], "http://slack.test/response/x", 20, 2, duration=2)
    assert errors >= 20 and latencies == []


def test_requests_left_unanswered_when_the_run_ends_are_errors(bench):
    """A server too slow to answer them all within wrk's run: the ones it never answered are not just absent."""
    receiver = Receiver(bench.SECRET, slow={index: 1.5 for index in range(20)})
    try:
        latencies, errors = bench.load_wrk([receiver.url], "http://slack.test/response/x", 20, 2, duration=2)
    finally:
        receiver.close()
    assert len(latencies) + errors >= 20 and errors >= 14


def test_the_bare_app_acks_as_soon_as_its_listener_returns(bench):
    """The baseline is Bolt acking as fast as Bolt can, as opsbot's app does (process_before_response): with
    Bolt's default the request's thread polls for the ack every 10 ms, which added ~10 ms to each bare ack and
    made opsbot's ratio look better than it is."""
    import statistics
    import subprocess
    import sys

    from tests.support.fakeslack import FakeSlack

    port = bench.free_port()
    with FakeSlack(token=bench.TOKEN) as slack:
        server = subprocess.Popen([sys.executable, str(REPO / "bench" / "ack.py"), "--serve-bare", str(port),
                                   "--api-url", slack.api_url], cwd=REPO, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().startswith("ready")
            url = f"http://127.0.0.1:{port}/slack/events"
            bench.load_wrk([url], slack.response_url("warm"), 5, 1)
            latencies, errors = bench.load_wrk([url], slack.response_url("x"), 40, 1)  # one at a time
        finally:
            server.terminate()
            server.wait(10)
    assert errors == 0 and len(latencies) == 40
    assert statistics.median(latencies) < 0.008  # Bolt's ack poll alone is 10 ms


def test_the_concurrency_is_split_over_replicas_without_losing_connections(bench):
    receivers = [Receiver(bench.SECRET, slow={index: 0.05 for index in range(120)}) for _ in range(3)]  # all busy
    try:
        latencies, errors = bench.load_wrk([r.url for r in receivers], "http://slack.test/response/x", 120, 20)
    finally:
        for receiver in receivers:
            receiver.close()
    assert errors == 0 and len(latencies) == 120
    assert sorted(len(r.peers) for r in receivers) == [6, 7, 7]  # 20 in all, not 3 x 6


def test_the_checkout_measured_as_before_gets_its_own_action_log_schema_and_redis_keys(bench, tmp_path):
    from bot.config.settings import load_settings

    now = load_settings(bench.bench_config(REPO, tmp_path / "now", "opsbot serve", keep_limits=False), env={})
    before = load_settings(bench.bench_config(REPO, tmp_path / "before", bench.BEFORE, keep_limits=False), env={})

    assert (now.state.db_schema, now.state.prefix) == ("opsbot", "opsbot:")
    assert (before.state.db_schema, before.state.prefix) == ("opsbot_before", "opsbot-before:")
    for settings in (now, before):  # every request runs `help` in full
        assert (settings.limits.per_user, settings.limits.guarded_per_user, settings.limits.per_command) == ("0", "0", "0")

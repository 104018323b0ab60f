"""``opsbot socket``: Slack over Socket Mode, against a real WebSocket server standing in for Slack."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading

import pytest
from websockets.sync.server import serve

from tests.conftest import BOT_TOKEN, write_config


class FakeSocketModeEndpoint:
    """Says hello, then delivers the envelopes it is given; records what the bot sends back."""

    def __init__(self):
        self.to_send: queue.Queue = queue.Queue()
        self.received: queue.Queue = queue.Queue()
        self.server = serve(self._session, "127.0.0.1", 0)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}/link"

    def _session(self, websocket):
        websocket.send(json.dumps({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A1"}}))
        while True:
            try:
                envelope = self.to_send.get(timeout=0.2)
                websocket.send(json.dumps(envelope))
            except queue.Empty:
                pass
            try:
                self.received.put(json.loads(websocket.recv(timeout=0.2)))
            except TimeoutError:
                continue
            except Exception:
                return

    def close(self):
        self.server.shutdown()


@pytest.fixture
def endpoint():
    fake = FakeSocketModeEndpoint()
    yield fake
    fake.close()


def slash(fake_slack, text, key, envelope_id):
    return {
        "envelope_id": envelope_id, "type": "slash_commands", "accepts_response_payload": True,
        "payload": {"team_id": "T1", "channel_id": "C-ops", "channel_name": "ops", "user_id": "UALICE",
                    "command": "/ops", "text": text, "response_url": fake_slack.response_url(key),
                    "trigger_id": f"trig-{key}"},
    }


def test_slash_command_over_socket_mode(tmp_path, database_url, redis_client, fake_slack, endpoint):
    fake_slack.answers["apps.connections.open"] = {"ok": True, "url": endpoint.url}
    config = write_config(tmp_path / "app.yaml", database_url, api_url=fake_slack.api_url)
    config.write_text(config.read_text().replace("slack:\n", "slack:\n  app_token: ${TEST_SLACK_APP_TOKEN:-}\n", 1))
    env = {**os.environ, "TEST_SLACK_BOT_TOKEN": BOT_TOKEN, "TEST_SLACK_APP_TOKEN": "xapp-test",
           "RUN_MIGRATIONS": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "bot", "--config", str(config), "socket"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        endpoint.to_send.put(slash(fake_slack, "help", "sock1", "env-1"))
        endpoint.to_send.put(slash(fake_slack, "nope --x", "sock2", "env-2"))

        acks = {}
        while len(acks) < 2:
            message = endpoint.received.get(timeout=30)
            acks[message["envelope_id"]] = message
        reply = fake_slack.wait(lambda s: s.responses("sock1"), timeout=30)[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)

    assert acks["env-1"] == {"envelope_id": "env-1"}
    assert "Unknown command `nope`" in acks["env-2"]["payload"]["text"]
    assert "commands" in reply.body["text"]
    assert fake_slack.calls("apps.connections.open")[0].headers["Authorization"] == "Bearer xapp-test"
    assert proc.returncode == 0, err

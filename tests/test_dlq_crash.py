"""SIGKILL at any instant loses no dead letter and duplicates none; running it again resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

from tests.conftest import write_config
from tests.support.dlq import dead_letter, everything, kill, oldest_first


def test_requeue_killed_three_times_then_resumed(tmp_path, database_url, redis_client):
    path = write_config(tmp_path / "app.yaml", database_url)
    path.write_text(path.read_text().replace(
        '  - {name: jobs, redis: main, ready: jobs, dead: "jobs:dead"}',
        '  - {name: jobs, redis: main, ready: jobs, dead: "jobs:dead", batch: 50, lease_ttl: 1s}'))
    entries = [dead_letter(i) for i in range(3000)] + [b"\x00binary\xff"]
    kill(redis_client, entries)
    original = Counter(entries)
    env = {**os.environ, "RUN_MIGRATIONS": "true"}
    command = [sys.executable, "-m", "bot.cli", "--config", str(path), "run", "--yes", "dlq requeue --type send_email --rate 200"]

    for delay in (0.9, 1.3, 0.7):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not redis_client.exists("opsbot:dlq:lease:jobs") and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # At the instant of death: every entry is somewhere, exactly once.
        assert everything(redis_client, "jobs", "jobs:dead") == original
        task = redis_client.hgetall("opsbot:dlq:task:jobs")
        assert task[b"status"] == b"running" and 0 < int(task[b"moved"]) < 1000
        time.sleep(1.1)  # the dead process's lease runs out

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "Requeued" in finished.stdout

    emails = [e for e in entries if b'"send_email"' in e]
    assert list(reversed(redis_client.lrange("jobs", 0, -1))) == emails          # each exactly once, in order
    assert oldest_first(redis_client, "jobs:dead") == [e for e in entries if e not in set(emails)]
    assert redis_client.keys("opsbot:dlq:held:*") == []
    assert redis_client.hget("opsbot:dlq:task:jobs", "status") == b"done"

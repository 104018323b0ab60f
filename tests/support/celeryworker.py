"""A real Celery worker (``celery -A tasks worker --pool=solo``) on a test's own Redis, with opsbot's hook.

Usage::

    with CeleryWorker(redis_url, folder) as worker:          # writes folder/tasks.py, starts the worker
        ids = send(redis_url, folder, "tasks.flaky", 9)       # real apply_async from another process
        wait_until(lambda: client.llen("celery.dead") == 9)

``tasks.flaky`` and ``tasks.other`` fail while the Redis key ``failing`` is "1" (ValueError, or
KeyError for every third argument); ``flaky`` retries once first (autoretry, max_retries=1), so
only its final failure reaches the dead list. A run that succeeds RPUSHes its task id onto ``ran``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["CeleryWorker", "send"]

TASKS = r'''
import os

import redis
from celery import Celery

from commands.dlq.celery_hook import keep_dead_letters

app = Celery("tasks", broker=os.environ["REDIS_URL"])
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
keep_dead_letters(app, dead="celery.dead")
store = redis.Redis.from_url(os.environ["REDIS_URL"])


def work(request, n):
    if store.get("failing") == b"1":
        if n % 3 == 0:
            raise KeyError(f"missing {n}")
        raise ValueError(f"bad input {n} <b>&amp; *bold*")
    store.rpush("ran", request.id)


@app.task(bind=True, autoretry_for=(ValueError, KeyError), max_retries=1, default_retry_delay=0)
def flaky(self, n, big):
    work(self.request, n)


@app.task(bind=True)
def other(self, n, big):
    work(self.request, n)
'''


def write_tasks(folder: Path) -> Path:
    path = folder / "tasks.py"
    path.write_text(TASKS)
    return path


def _env(redis_url: str, folder: Path) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url,
            "PYTHONPATH": os.pathsep.join([str(folder), str(Path(__file__).resolve().parents[2])])}


def send(redis_url: str, folder: Path, task: str, count: int) -> list[str]:
    """``count`` messages sent by Celery's own apply_async, from another process; their ids in order."""
    write_tasks(folder)
    script = (f"import tasks\nfor i in range({count}):\n"
              f"    print(tasks.app.send_task({task!r}, args=[i, 2 ** 70]).id)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=folder, env=_env(redis_url, folder),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


class CeleryWorker:
    def __init__(self, redis_url: str, folder: Path):
        self.redis_url = redis_url
        self.folder = folder
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> CeleryWorker:
        write_tasks(self.folder)
        self.log = open(self.folder / "worker.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool=solo", "-Q", "celery",
             "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "info"],
            cwd=self.folder, env=_env(self.redis_url, self.folder), stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()

    def alive(self) -> bool:
        assert self.process is not None and self.process.poll() is None, \
            (self.folder / "worker.log").read_text()[-3000:]
        return True

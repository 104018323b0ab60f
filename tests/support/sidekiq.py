"""A real Sidekiq (Debian's ruby-sidekiq) on a test's own Redis: a worker class, jobs, the process.

Usage::

    with SidekiqProcess(redis_url, folder) as sidekiq:       # `sidekiq -r worker.rb -q mail -q other`
        enqueue(redis_url, folder, "FlakyJob", 12)            # real Sidekiq::Client pushes; returns jids
        sidekiq.wait(lambda: client.zcard("dead") == 12)

FlakyJob and OtherJob (``retry: 0``: a failure goes straight to the dead set) and RetryJob
(``retry: 5``, an hour apart: a failure waits in the retry set) fail while the
Redis key ``failing`` is "1", with ArgumentError, or IOError for every third argument; a run
that succeeds RPUSHes its jid onto ``ran``, so a test sees exactly which jobs ran again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.packages import debian_binary

__all__ = ["SidekiqProcess", "enqueue", "write_worker", "wait_until"]

WORKER = r'''
require "sidekiq"

module Flaky
  def perform(n, big, note = "")
    r = Redis.new(url: ENV["REDIS_URL"])
    if r.get("failing") == "1"
      raise IOError, "disk full on #{n}" if n % 3 == 0
      raise ArgumentError, "boom #{n} <b>&amp; *bold* #{note}"
    end
    r.rpush("ran", jid)
  ensure
    r&.close
  end
end

class FlakyJob
  include Sidekiq::Worker
  include Flaky
  sidekiq_options retry: 0, queue: "mail"
end

class OtherJob
  include Sidekiq::Worker
  include Flaky
  sidekiq_options retry: 0, queue: "other"
end

class RetryJob
  include Sidekiq::Worker
  include Flaky
  sidekiq_options retry: 5, queue: "mail"
  sidekiq_retry_in { |count, exception| 3600 }
end
'''


def write_worker(folder: Path) -> Path:
    path = folder / "worker.rb"
    path.write_text(WORKER)
    return path


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.05)


def enqueue(redis_url: str, folder: Path, job: str, count: int, start: int = 0, note: str = "") -> list[str]:
    """``count`` jobs pushed by Sidekiq::Client itself (``perform_async``); their jids in order."""
    write_worker(folder)
    script = (f'require "./worker"; ({start}...{start + count}).each {{ |i| '
              f'puts {job}.perform_async(i, 12345678901234567890123, {note!r}) }}')
    done = subprocess.run([debian_binary("ruby-sidekiq", "ruby"), "-I.", "-e", script], cwd=folder,
                          env={**os.environ, "REDIS_URL": redis_url}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


class SidekiqProcess:
    """``sidekiq -r worker.rb`` on the given Redis, processing queues mail and other; stopped by its PID."""

    def __init__(self, redis_url: str, folder: Path):
        self.redis_url = redis_url
        self.folder = folder
        self.worker = write_worker(folder)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> SidekiqProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> SidekiqProcess:
        self.log = open(self.folder / "sidekiq.log", "ab")
        self.process = subprocess.Popen(
            [debian_binary("ruby-sidekiq", "sidekiq"), "-r", str(self.worker), "-q", "mail", "-q", "other",
             "-c", "2", "-t", "5"], cwd=self.folder, env={**os.environ, "REDIS_URL": self.redis_url},
            stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        self.log.close()

    def alive(self) -> bool:
        assert self.process is not None and self.process.poll() is None, \
            (self.folder / "sidekiq.log").read_text()[-2000:]
        return True

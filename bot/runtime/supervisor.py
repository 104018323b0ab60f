"""Worker processes started and kept alive by ``opsbot serve``.

Usage::

    workers = WorkerProcesses(Path("app.yaml"), count=2, threads=8, nice=10).start()
    ...
    workers.stop(deadline=30)      # SIGTERM each; they finish running work and hand back the rest

A worker that exits unexpectedly is started again; its unfinished jobs are
recovered from its processing list by the others.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["WorkerProcesses"]

log = logging.getLogger("opsbot.supervisor")


class WorkerProcesses:
    def __init__(self, config: Path, *, count: int, threads: int, nice: int):
        self.command = [sys.executable, "-m", "bot", "--config", str(Path(config).resolve()), "worker",
                        "--threads", str(threads), "--nice", str(nice)]
        self.count = count
        self.procs: list[subprocess.Popen] = []
        self._stopping = threading.Event()
        self._watch = threading.Thread(target=self._watchdog, name="opsbot-supervisor", daemon=True)

    def start(self) -> "WorkerProcesses":
        self.procs = [subprocess.Popen(self.command) for _ in range(self.count)]
        self._watch.start()
        return self

    def _watchdog(self) -> None:
        while not self._stopping.wait(1.0):
            for index, proc in enumerate(self.procs):
                if proc.poll() is not None and not self._stopping.is_set():
                    log.error("worker %d exited with %s; starting it again", proc.pid, proc.returncode)
                    self.procs[index] = subprocess.Popen(self.command)

    def stop(self, deadline: float = 30.0) -> None:
        self._stopping.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        ends = time.monotonic() + deadline
        for proc in self.procs:
            try:
                proc.wait(max(ends - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop within %.0fs; killing it", proc.pid, deadline)
                proc.kill()
                proc.wait()

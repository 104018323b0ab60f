"""Run opsbot as a user does, a whole process, and read what it cost.

Usage::

    run = opsbot(config, "run", "--yes", "--json", "dlq requeue jobs")
    run.seconds, run.rss_mb, run.body          # wall time, the child's own peak RSS, its JSON result

``tree`` runs another checkout's code (``git worktree add /tmp/before <commit>``) with this
interpreter, for before/after figures measured in one run.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ProcessRun", "opsbot"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ProcessRun:
    seconds: float
    rss_mb: float
    exit_code: int
    body: Any  # the parsed JSON it printed (``--json``), or its stdout as text
    stderr: str  # what it said there (progress lines, errors), for a failure's message
    cpu: float = 0.0  # the child's own CPU seconds, user + system (all its threads)


def opsbot(config: Path, *args: str, env: dict[str, str] | None = None, tree: Path | None = None) -> ProcessRun:
    """``python -m bot --config CONFIG ARGS...``, forked and reaped here with wait4, so the child's own
    peak RSS is read, not this process's; stdout is read whole, stderr kept for ``ProcessRun.stderr``.
    Bytecode is written: run a command once before timing, as an installed package has it."""
    where = tree or ROOT
    # As an installed package runs: its bytecode cached (this environment may say not to write it).
    inherited = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    environment = {**inherited, **(env or {}), "PYTHONPATH": str(where)}
    command = [sys.executable, "-m", "bot", "--config", str(config), *args]
    started = time.perf_counter()
    errors = tempfile.TemporaryFile()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: becomes opsbot
        try:
            os.dup2(write_end, 1)
            os.dup2(errors.fileno(), 2)
            os.close(read_end)
            os.chdir(where)
            os.execve(sys.executable, command, environment)
        finally:
            os._exit(127)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as stream:
        out = stream.read()
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    text = out.decode("utf-8", "replace")
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    errors.seek(0)
    said = errors.read().decode("utf-8", "replace")
    errors.close()
    return ProcessRun(seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), body, said,
                      usage.ru_utime + usage.ru_stime)

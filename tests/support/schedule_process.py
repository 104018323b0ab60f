"""A replica's scheduler in a process of its own, on a clock the test controls (for tests/test_schedule_replicas.py).

Usage::

    python -m tests.support.schedule_process CONFIG CLOCK_FILE OWNER

Builds a runtime from CONFIG and sweeps for due schedules until it is killed, reading "now"
from CLOCK_FILE (an ISO timestamp the test rewrites) at every look. After each sweep it bumps
``test:sweeps:<OWNER>`` in the bot's Redis, so the test can tell it has looked since it moved the clock.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from pathlib import Path

from bot.config.settings import load_settings
from bot.runtime.factory import Runtime


def main(config: str, clock_file: str, owner: str) -> None:
    runtime = Runtime.connect(load_settings(config, env=os.environ))
    runtime.state.migrate()
    from commands.schedule.runner import ScheduleRunner

    runner = runtime.services.get(ScheduleRunner)
    runner.clock = lambda: datetime.fromisoformat(Path(clock_file).read_text())
    runner.owner = owner
    while True:
        runner.sweep(wait=True)
        runtime.state.redis.incr(f"test:sweeps:{owner}")
        time.sleep(0.01)  # a polling pace, not a timing assumption: the test waits on recorded state


if __name__ == "__main__":
    main(*sys.argv[1:4])

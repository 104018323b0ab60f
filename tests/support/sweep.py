"""Sweep incident reminders at a given moment, as a separate bot process would (for the two-replica test).

    python -m tests.support.sweep APP_YAML 2026-11-22T10:31:00+00:00 ROUNDS

Prints how many reminders this process sent.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime

from bot.config.settings import load_settings
from bot.runtime.factory import Runtime
from commands.incident.desk import IncidentDesk


def main(config: str, at: str, rounds: str) -> None:
    runtime = Runtime.connect(load_settings(config, env=os.environ))
    try:
        desk = runtime.services.get(IncidentDesk)
        moment = datetime.fromisoformat(at)
        print(sum(desk.sweep(moment) for _ in range(int(rounds))))
    finally:
        runtime.close()


if __name__ == "__main__":
    main(*sys.argv[1:])

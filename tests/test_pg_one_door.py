"""Every PostgreSQL connection goes through bot/store/postgres.py, and no code takes a session-scoped setting or
lock, which a transaction-mode pooler would hand to another client (or lose) at the next transaction."""

from __future__ import annotations

import re

from tests.conftest import REPO

SOURCES = [path for folder in ("bot", "commands") for path in (REPO / folder).rglob("*.py")
           if "demo" not in path.relative_to(REPO).parts]
DOOR = REPO / "bot" / "store" / "postgres.py"


def _offenders(pattern: str, allowed=()) -> list[str]:
    found = []
    for path in SOURCES:
        if path in allowed:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(pattern, line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    return found


def test_connections_are_opened_in_one_place():
    assert _offenders(r"psycopg\.connect\(|ConnectionPool\(|AsyncConnectionPool\(", allowed=(DOOR,)) == []


def test_no_session_scoped_setting_or_lock():
    assert _offenders(r"""["'](SET|RESET|DISCARD)\s(?!LOCAL\b|TRANSACTION\b)""") == []
    assert _offenders(r"set_config\([^)]*,\s*(false|False)\s*\)") == []
    assert _offenders(r"pg_(try_)?advisory_lock(_shared)?\s*\(") == []
    assert _offenders(r"\bLISTEN\s|\bWITH HOLD\b|\bCREATE TEMP") == []

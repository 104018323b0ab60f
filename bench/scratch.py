"""What a benchmark that needs the bot's own state gets to itself, and leaves nothing of behind.

Usage::

    with scratch("actionlog") as place:
        place.url       # a PostgreSQL database of its own, on $BENCH_DATABASE_URL's server
        place.prefix    # a Redis key prefix of its own, on $REDIS_URL (database 3 by default)
        place.folder    # a temporary folder for its app.yaml

The database is dropped, the prefix's keys deleted and the folder removed on the way out,
whatever happened inside.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["ADMIN_URL", "REDIS_URL", "Scratch", "scratch"]

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/3")


@dataclass(frozen=True)
class Scratch:
    url: str
    prefix: str
    folder: Path


@contextmanager
def scratch(kind: str) -> Iterator[Scratch]:
    name = f"opsbot_bench_{kind}_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    folder = Path(tempfile.mkdtemp(prefix="opsbot-bench-"))
    place = Scratch(make_conninfo(**{**conninfo_to_dict(ADMIN_URL), "dbname": name}),
                    f"opsbot-bench-{secrets.token_hex(3)}:", folder)
    try:
        yield place
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{place.prefix}*"):
            client.delete(key)
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

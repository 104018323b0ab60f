"""A PgBouncer of the test's own, in front of the test PostgreSQL, on a free loopback port; stopped by PID.

Usage::

    with PgBouncer(database_url, pool_mode="transaction", pool_size=2) as bouncer:
        bouncer.url                 # database_url's database and user, through the pooler
        bouncer.kill(); bouncer.start()

It runs the Debian package's ``pgbouncer`` (installed on demand by
:func:`tests.support.packages.debian_binary`) in the foreground so that its PID is ours;
as root it drops to the ``postgres`` user (``-u postgres``), as PgBouncer refuses to run
as root. ``auth_type = trust`` (``scram-sha-256`` given a ``password``) with a userlist naming the user: the pooler
logs in to PostgreSQL as that user, as the test's own connections do. A pooler that cannot
start raises: the test fails, it never skips.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.support.packages import debian_binary
from tests.support.servers import free_port, wait_for_port

__all__ = ["PgBouncer"]


class PgBouncer:
    def __init__(self, database_url: str, *, pool_mode: str = "transaction", pool_size: int = 2,
                 password: str | None = None) -> None:
        self.server = conninfo_to_dict(database_url)
        self.password = password  # clients must give it (SCRAM); the pooler itself logs in to PostgreSQL as before
        self.pool_mode, self.pool_size = pool_mode, pool_size
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="opsbot-pgbouncer-", dir="/tmp" if os.geteuid() == 0 else None))
        self.process: subprocess.Popen | None = None
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """The test database through the pooler, as a URL (the form applications put in DATABASE_URL)."""
        user = self.server.get("user") or "postgres"
        return f"postgresql://{user}@127.0.0.1:{self.port}/{self.server.get('dbname') or 'postgres'}"

    def conninfo(self, **extra) -> str:
        return make_conninfo(self.url, **extra)

    def _write_config(self) -> Path:
        host = self.server.get("host") or "127.0.0.1"
        user = self.server.get("user") or "postgres"
        secret = (self.password or "").replace('"', '""')
        (self.folder / "userlist.txt").write_text(f'"{user}" "{secret}"\n')
        ini = self.folder / "pgbouncer.ini"
        ini.write_text(textwrap.dedent(f"""\
            [databases]
            * = host={host} port={self.server.get('port') or 5432}
            [pgbouncer]
            listen_addr = 127.0.0.1
            listen_port = {self.port}
            unix_socket_dir =
            auth_type = {"scram-sha-256" if self.password else "trust"}
            auth_file = {self.folder}/userlist.txt
            pool_mode = {self.pool_mode}
            default_pool_size = {self.pool_size}
            max_client_conn = 500
            server_reset_query =
            ignore_startup_parameters = extra_float_digits
            logfile = {self.folder}/pgbouncer.log
            pidfile = {self.folder}/pgbouncer.pid
            """))
        if self._user is not None:
            for path in (self.folder, *self.folder.iterdir()):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        return ini

    def start(self) -> PgBouncer:
        ini = self._write_config()
        command = [debian_binary("pgbouncer", "pgbouncer")]
        if self._user is not None:
            command += ["-u", "postgres"]
        # Its log goes to the logfile; stderr is a file too: a pipe nobody reads fills up and stalls the pooler.
        with (self.folder / "stderr.log").open("ab") as stderr:
            self.process = subprocess.Popen([*command, "-q", str(ini)], stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_for_port(self.port, up=True, timeout=15)
        except TimeoutError:
            self.kill()
            raise RuntimeError(f"pgbouncer did not start: {self.log()[-2000:]}") from None
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def log(self) -> str:
        try:
            return (self.folder / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """This pgbouncer only, by the PID we started (SIGKILL: every client connection drops at once)."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=30)
        self.process = None
        wait_for_port(self.port, up=False)

    def close(self) -> None:
        try:
            self.kill()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

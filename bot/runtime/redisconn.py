"""Redis clients for app.yaml's ``redis:`` targets: one server or a Redis Cluster, credentials and TLS as options.

Usage::

    client = connect("main", settings.redis["main"], base_dir)  # redis.Redis, or redis.RedisCluster (cluster: true)
    hash_tag("{jobs}:dead")          # "jobs" (None without one; "{}" is no tag)
    key_slot("{jobs}:dead")          # the cluster slot the key lives in, 0..16383
    where(client)                    # "127.0.0.1:6379", never a password
    server_version(client)           # "7.0.15"

``username``, ``password`` and the TLS files go to redis-py as connection keyword arguments,
never into the URL, so a password may hold any character. A single-server client that reaches
a Redis Cluster node says so (set ``cluster: true``) instead of surfacing a bare ``MOVED 1234``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot as _crc_slot
from redis.exceptions import AskError, ClusterDownError, RedisClusterException

from bot.config.settings import RedisTarget
from bot.core.invocation import CommandError

__all__ = ["NotACluster", "connect", "connection_options", "hash_tag", "key_slot", "server_version", "where"]

CONNECT_TIMEOUT = 2  # seconds: a Redis that does not answer by then is reported, not waited for
SOCKET_TIMEOUT = 10


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes when it has one: between the first ``{`` and the next ``}``."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    return key[start + 1:end] if end > start + 1 else None


def key_slot(key: str) -> int:
    return _crc_slot(key.encode("utf-8", "surrogateescape"))


class NotACluster(redis.ResponseError):
    """A single-server client was answered MOVED/ASK/CLUSTERDOWN: the server is a Redis Cluster node."""


class StandaloneRedis(redis.Redis):
    """``redis.Redis`` that turns a cluster node's redirection into advice naming the target."""

    target_name = "?"

    def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return super().execute_command(*args, **options)
        except (AskError, ClusterDownError) as exc:  # MovedError is an AskError
            answer = f"{type(exc).__name__.removesuffix('Error').upper()} {exc}".strip()
            raise NotACluster(
                f"redis {self.target_name!r} is a Redis Cluster node (it answered {answer}): "
                "set `cluster: true` on it in app.yaml") from None


def _path(value: str | None, base_dir: str) -> str | None:
    return None if value is None else str(Path(base_dir, value).expanduser())


def connection_options(target: RedisTarget, base_dir: str = ".") -> dict[str, Any]:
    """The keyword arguments redis-py gets besides the URL: timeouts, credentials, TLS."""
    options: dict[str, Any] = {"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT}
    if target.username is not None:
        options["username"] = target.username
    if target.password is not None:
        options["password"] = target.password.get_secret_value()
    if target.uses_tls:
        options.update(ssl_cert_reqs="required", ssl_ca_certs=_path(target.ca_file, base_dir),
                       ssl_certfile=_path(target.cert_file, base_dir), ssl_keyfile=_path(target.key_file, base_dir))
    return options


def connect(name: str, target: RedisTarget, base_dir: str = ".") -> redis.Redis | RedisCluster:
    """A client for the target; a cluster client asks a node for the slot map now (CommandError if it cannot)."""
    options = connection_options(target, base_dir)
    if target.uses_tls:  # not ssl=True: a client made from a URL builds its connections from connection_class
        options["connection_class"] = redis.SSLConnection
    if not target.cluster:
        client = StandaloneRedis.from_url(target.url, **options)
        client.target_name = name
        return client
    try:
        return RedisCluster.from_url(target.url, **options)
    except (RedisClusterException, redis.RedisError, OSError) as exc:
        raise CommandError(f"Redis Cluster {name!r}: no node answered ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def where(client: Any) -> str:
    """``host:port`` (or the socket path) a client talks to; for a cluster, its first node."""
    if isinstance(client, RedisCluster):
        nodes = client.get_nodes()
        return f"{nodes[0].host}:{nodes[0].port} (cluster of {len(nodes)})" if nodes else "(a cluster)"
    kwargs = client.connection_pool.connection_kwargs
    return kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def server_version(client: Any) -> str:
    if isinstance(client, RedisCluster):
        node = client.get_default_node()
        return str(client.info("server", target_nodes=node).get("redis_version", "?"))
    return str(client.info("server").get("redis_version", "?"))

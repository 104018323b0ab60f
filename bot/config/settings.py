"""Typed settings loaded from ``app.yaml``: the framework's own sections, and each group's.

Usage::

    settings = load_settings("app.yaml", groups=GROUPS)   # raises ConfigError
    settings.state.redis_url, settings.queues              # a core section, a group's section
    settings.secret_values()                               # every secret it holds, to redact by value

The framework owns the sections every group shares (``slack``, ``state``, ``guard``,
``limits``, ``roles``, ``permissions``, ``redis``, ``databases``, ``services``, ``status``
...). Each group contributes its own sections and the fields it adds to shared ones
(:class:`bot.core.group.Group`); :func:`settings_class` assembles the whole model.

Every scalar in the file may reference the environment (``${VAR}``,
``${VAR:-default}``). Secrets (keys named like password/token/secret/key,
SecretStr settings, passwords and secret query parameters inside URLs) must be
such references: a literal secret in the file is refused. Every problem is
reported at once, one ``file:line: key: message`` line each. Reading the YAML
safely is :mod:`bot.config.yamlload`'s job, expanding and checking it
:mod:`bot.config.load`'s.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, create_model, field_validator, model_validator

from bot.config.load import ConfigError, load_model, secret_values
from bot.config.types import ConfigModel as _Model
from bot.config.types import Duration, IdList, Identifier, Name, PostgresUrl, RedisUrl
from bot.core.durations import parse_duration
from bot.config.secretnames import is_secret_key

if TYPE_CHECKING:
    from bot.core.group import Group

__all__ = [
    "ConfigError",
    "DatabaseTarget",
    "LimitSettings",
    "RedisTarget",
    "RoleSettings",
    "ServiceSettings",
    "Settings",
    "StatusThresholds",
    "default_config_path",
    "installed_groups",
    "is_secret_key",
    "load_settings",
    "settings_class",
]


class SlackSettings(_Model):
    bot_token: SecretStr | None = None
    signing_secret: SecretStr | None = None
    app_token: SecretStr | None = None
    api_url: str = "https://slack.com/api/"
    incident_channel: str = "#incidents"
    command: str = "/ops"
    app_name: str = "opsbot"
    request_url: str | None = None


class StateSettings(_Model):
    """Where the bot keeps its own state: pending actions, caches (Redis) and the action log (PostgreSQL)."""

    redis_url: RedisUrl
    database_url: PostgresUrl
    db_schema: Identifier = Field("opsbot", alias="schema")
    prefix: Name = "opsbot:"
    run_migrations: bool = True  # the bot owns its schema: apply pending migrations on first use
    log_secret: SecretStr | None = None  # HMAC key anchoring the action log's head (bot/loganchor.py)
    database_pooler: Literal["transaction", "session", "none"] | None = None  # as databases.<name>.pooler


class RoleSettings(_Model):
    """Slack user ids (``U…``) and user-group ids (``S…``) holding a role; ``includes`` grants other roles too."""

    users: IdList = []
    groups: IdList = []
    includes: IdList = []


class GuardSettings(_Model):
    confirm_ttl: Duration = 300.0
    group_cache_ttl: Duration = 300.0
    dedupe_ttl: Duration = 3600.0
    executor_timeout: Duration = 15.0  # a confirmed action whose executor is silent this long was interrupted


class MetricsSettings(_Model):
    token: SecretStr | None = None


class LimitSettings(_Model):
    """Rate limits held in Redis, shared by every replica: ``N/period`` (``30/1m``), or 0 for none."""

    per_user: str = "30/1m"
    guarded_per_user: str = "6/1m"
    per_command: str = "120/1m"

    @field_validator("per_user", "guarded_per_user", "per_command", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        """``per_user: 0`` (a YAML number, as the comment in app.yaml suggests) means no limit, like ``"0"``; a
        float is read as text too, so that it is refused as a rate rather than as "not a string"."""
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    def parsed(self, name: str) -> tuple[int, float]:
        return parse_rate(getattr(self, name))


def parse_rate(text: str) -> tuple[int, float]:
    """``'30/1m'`` → (30, 60.0); ``'0'`` → (0, 0.0), no limit."""
    if str(text).strip() == "0":
        return 0, 0.0
    count, _, period = str(text).partition("/")
    try:
        number, seconds = int(count), parse_duration(period or "1m")
    except ValueError:
        raise ValueError(f"{text!r} is not a rate; write e.g. 30/1m") from None
    if number < 0:  # would refuse every command: "limited to -1 per 1m"
        raise ValueError(f"{text!r} is not a rate: the count must be 0 or more (0 for no limit); write e.g. 30/1m")
    if number and seconds <= 0:  # the limiter buckets time by the period: it would divide by zero
        raise ValueError(f"{text!r} is not a rate: the period must be longer than 0; write e.g. 30/1m")
    return number, seconds


class RedisTarget(_Model):
    """A Redis the commands act on: one server, or a Redis Cluster (``cluster: true``).

    Credentials and TLS go to redis-py as connection options, never into the URL, so a
    password may hold any character (``/``, ``#``, ``?``, ``@``). ``ca_file``, ``cert_file`` and
    ``key_file`` are paths, relative to app.yaml's folder; any of them implies ``tls``.
    """

    url: RedisUrl
    cluster: bool = False
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RedisTarget:
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        if self.password is not None and parts.password:
            raise ValueError("password: the url holds a password too; keep it in one place (the password setting)")
        if self.username is not None and parts.username:
            raise ValueError("username: the url names a user too; keep it in one place (the username setting)")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file: a client certificate needs both")
        if self.cluster and parts.scheme == "unix":
            raise ValueError("cluster: a Redis Cluster is reached over TCP (redis:// or rediss://), not a unix socket")
        if self.cluster and parts.path.strip("/") not in ("", "0"):
            raise ValueError("cluster: a Redis Cluster has database 0 only; drop the database number from the url")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.url.startswith("rediss://") or any((self.ca_file, self.cert_file, self.key_file))


Pooler = Literal["transaction", "session", "none"]


class DatabaseTarget(_Model):
    """A PostgreSQL the commands act on (groups may add fields, e.g. ``migrations``).

    ``pooler: transaction`` (or ``?pgbouncer=true`` in the URL) is for PgBouncer/Supavisor/RDS Proxy in
    transaction mode: no prepared statements, only transaction-scoped settings and locks. ``username``,
    ``password``, ``sslmode``/``tls``, ``ca_file``, ``cert_file``, ``key_file`` override the URL's.
    """

    url: PostgresUrl
    statement_timeout: Duration = 10.0
    pooler: Pooler | None = None
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False  # sslmode require (verify-full with ca_file) unless sslmode is set
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class MetricNames(_Model):
    """Prometheus metric names read from a service's /metrics (sums over all label sets)."""

    queue_depth: str | None = "queue_depth"
    retries: str | None = "job_retries_total"
    failures: str | None = "job_failures_total"
    requests: str | None = "http_requests_total"
    errors: str | None = "http_requests_errors_total"
    latency: str | None = "http_request_duration_seconds"


class ServiceSettings(_Model):
    """A service: its health checks and metrics (groups may add fields, e.g. ``deploy`` and ``rollback``)."""

    liveness: str | None = None
    readiness: str | None = None
    expect: dict[str, Any] | None = None
    metrics: str | None = None
    metric_names: MetricNames = MetricNames()
    auth_header: str | None = None
    auth_token: SecretStr | None = None
    timeout: Duration = 5.0


class StatusThresholds(_Model):
    """When `status` turns a line amber or red: each group adds its thresholds (docs/conventions.md)."""


class Settings(_Model):
    """The framework's sections; :func:`settings_class` adds every group's."""

    slack: SlackSettings = SlackSettings()
    state: StateSettings
    guard: GuardSettings = GuardSettings()
    limits: LimitSettings = LimitSettings()
    metrics: MetricsSettings = MetricsSettings()
    roles: dict[Name, RoleSettings] = {}
    permissions: dict[str, str] = {}  # a command (or "group *", "dlq requeue jobs") → a role, or "anyone"
    channels: dict[str, IdList] = {}  # "*" or a command → the channels (ids or #names) where it may run
    redis: dict[Name, RedisTarget] = {}
    databases: dict[Name, DatabaseTarget] = {}
    services: dict[Name, ServiceSettings] = {}
    status: StatusThresholds = StatusThresholds()
    runbooks_dir: str = "runbooks"
    base_dir: str = Field(".", exclude=True)
    _env_secrets: tuple[str, ...] = PrivateAttr(default=())  # secret-named variables the file referenced
    _group_checks: ClassVar[tuple[Callable[[Any], None], ...]] = ()
    _groups: ClassVar[tuple[Group, ...]] = ()  # the groups this model was assembled from (their validate reads it)

    @model_validator(mode="after")
    def _references_resolve(self) -> Settings:
        for name in ("per_user", "guarded_per_user", "per_command"):
            try:
                self.limits.parsed(name)
            except ValueError as exc:
                raise ValueError(f"limits.{name}: {exc}") from None
        for role_name, role in self.roles.items():
            for included in role.includes:
                if included not in self.roles:
                    raise ValueError(f"roles.{role_name}.includes: unknown role {included!r}")
        for check in type(self)._group_checks:
            check(self)
        return self

    def secret_values(self) -> list[str]:
        """Every secret value the configuration holds, each also percent-encoded when that differs.

        The value of every SecretStr setting (a webhook URL whole) and of every key
        :func:`is_secret_key` matches, the password and secret query parameters of every URL
        (and ``password=`` of a connection string), and the value of every secret-named
        environment variable the file referenced. For redacting by value: nothing else is in it.
        """
        return secret_values(self, list(self._env_secrets))

    @property
    def runbooks_path(self) -> Path:
        return Path(self.base_dir, self.runbooks_dir)


def default_config_path(explicit: str | None = None) -> Path:
    """``--config``, else ``$OPSBOT_CONFIG``, else ``./app.yaml``."""
    return Path(explicit or os.environ.get("OPSBOT_CONFIG") or "app.yaml")


_SHARED = {"databases": DatabaseTarget, "services": ServiceSettings, "status": StatusThresholds}
_ASSEMBLED: dict[tuple[str, ...], type[Settings]] = {}


def settings_class(groups: Sequence[Group] | None = None) -> type[Settings]:
    """The whole settings model: the framework's sections, each group's, and what groups add to shared ones."""
    groups = installed_groups() if groups is None else list(groups)
    key = tuple(group.name for group in groups)
    if key not in _ASSEMBLED:
        _ASSEMBLED[key] = _assemble(groups)
    return _ASSEMBLED[key]


def _assemble(groups: Sequence[Group]) -> type[Settings]:
    shared: dict[str, type[BaseModel]] = {}
    for section, base in _SHARED.items():
        added: dict[str, tuple[Any, Any]] = {}
        for group in groups:
            for name, spec in group.extends.get(section, {}).items():
                if name in added or name in base.model_fields:
                    raise TypeError(f"group {group.name!r} adds {section}.{name}, which another part owns")
                added[name] = spec
        shared[section] = create_model(base.__name__, __base__=base, **added) if added else base
    database, service, status = shared["databases"], shared["services"], shared["status"]
    fields: dict[str, Any] = {
        "databases": (dict[Name, database], {}),
        "services": (dict[Name, service], {}),
        "status": (status, Field(default_factory=status)),
    }
    for group in groups:
        for key, (kind, default) in group.settings.items():
            if key in Settings.model_fields or key in fields:
                raise TypeError(f"group {group.name!r} declares setting {key!r}, which another part owns")
            fields[key] = (kind, Field(default_factory=lambda d=default: copy.deepcopy(d))
                           if isinstance(default, (list, dict, BaseModel)) else default)
    model = create_model("Settings", __base__=Settings, **fields)
    model._group_checks = tuple(group.validate for group in groups if group.validate)
    model._groups = tuple(groups)
    return model


def installed_groups() -> list[Group]:
    """The command groups of this installation (the ``commands`` package collects them)."""
    import commands

    return list(commands.GROUPS)


def load_settings(path: str | os.PathLike, env: Mapping[str, str] | None = None,
                  groups: Sequence[Group] | None = None) -> Settings:
    """Read, expand and validate ``path`` against the assembled model; every problem is in the one ConfigError."""
    path = Path(path)
    settings, env_secrets = load_model(path, settings_class(groups), os.environ if env is None else env,
                                       extra={"base_dir": str(path.resolve().parent)}, postgres_at=_postgres_at)
    settings._env_secrets = tuple(env_secrets)
    return settings


def _postgres_at(loc: tuple) -> bool:
    """Settings holding a PostgreSQL URL, which may also be a key=value connection string."""
    return loc == ("state", "database_url") or (len(loc) == 3 and loc[0] == "databases" and loc[2] == "url")

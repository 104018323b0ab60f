"""Typed settings loaded from ``app.yaml``.

Usage::

    settings = load_settings("app.yaml")          # raises ConfigError
    settings.queue("jobs").dead                   # 'jobs:dead'

Every scalar in the file may reference the environment (``${VAR}``,
``${VAR:-default}``). Secrets (keys named like password/token/secret/key, and
credentials inside URLs) must be such references: a literal secret in the file
is refused. Errors name the file, line and key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from bot.durations import parse_duration
from bot.envsubst import UnsetVariable, expand

__all__ = [
    "ConfigError",
    "Settings",
    "default_config_path",
    "is_secret_key",
    "load_settings",
]

Duration = Annotated[float, BeforeValidator(parse_duration)]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")]


def _split_ids(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


IdList = Annotated[list[str], BeforeValidator(_split_ids)]

_SECRET_WORDS = {"password", "passwd", "pass", "token", "secret", "key", "apikey"}
_URL_CREDENTIALS = re.compile(r"://[^/@\s:]*:[^/@\s]+@")


def is_secret_key(key: str) -> bool:
    """True when a setting or data key names a secret (``signing_secret``, ``smtp_password``)."""
    words = re.split(r"[^A-Za-z0-9]+|(?<=[a-z])(?=[A-Z])", key)
    return any(word.lower() in _SECRET_WORDS for word in words if word)


class ConfigError(Exception):
    """app.yaml is missing or invalid; the message is meant for the operator as is."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    redis_url: str
    database_url: str
    db_schema: Identifier = Field("opsbot", alias="schema")
    prefix: Name = "opsbot:"
    run_migrations: bool = False


class RoleSettings(_Model):
    """Slack user ids (``U…``) and user-group ids (``S…``) holding a role; ``includes`` grants other roles too."""

    users: IdList = []
    groups: IdList = []
    includes: IdList = []


class GuardSettings(_Model):
    confirm_ttl: Duration = 300.0
    group_cache_ttl: Duration = 300.0
    dedupe_ttl: Duration = 3600.0


class MetricsSettings(_Model):
    token: SecretStr | None = None


class LimitSettings(_Model):
    """Rate limits held in Redis, shared by every replica: ``N/period`` (``30/1m``), or 0 for none."""

    per_user: str = "30/1m"
    guarded_per_user: str = "6/1m"
    per_command: str = "120/1m"

    def parsed(self, name: str) -> tuple[int, float]:
        return parse_rate(getattr(self, name))


def parse_rate(text: str) -> tuple[int, float]:
    """``'30/1m'`` → (30, 60.0); ``'0'`` → (0, 0.0), no limit."""
    if str(text).strip() == "0":
        return 0, 0.0
    count, _, period = str(text).partition("/")
    try:
        return int(count), parse_duration(period or "1m")
    except ValueError:
        raise ValueError(f"{text!r} is not a rate; write e.g. 30/1m") from None


class RedisTarget(_Model):
    url: str


class MigrationSource(_Model):
    """Where a database's expected migrations come from, for ``drift``.

    ``source`` is a folder (relative to app.yaml) — Prisma's ``prisma/migrations`` or
    Alembic's versions folder — or an http(s) URL answering the list as JSON.
    """

    tool: Literal["prisma", "alembic"]
    source: str
    table: Identifier | None = None  # _prisma_migrations / alembic_version
    db_schema: Identifier | None = Field(None, alias="schema")
    token: SecretStr | None = None  # bearer token for an http(s) source
    timeout: Duration = 10.0


class DatabaseTarget(_Model):
    url: str
    statement_timeout: Duration = 10.0
    migrations: MigrationSource | None = None


class QueueSettings(_Model):
    """A dead-letter queue: Redis lists (``redis-list``) or a service's admin API (``http``)."""

    name: Name
    backend: Literal["redis-list", "http"] = "redis-list"
    # redis-list
    redis: str = "main"
    ready: str = "jobs"
    dead: str = "jobs:dead"
    keep: int = Field(1000, ge=0)
    batch: int = Field(1000, ge=1, le=10000)
    # http
    url: str | None = None
    token: SecretStr | None = None
    page_size: int = Field(100, ge=1, le=10000)
    timeout: Duration = 10.0
    retries: int = Field(3, ge=0, le=10)
    # both
    requeue_growth: float = Field(0.10, ge=0)
    lease_ttl: Duration = 15.0


class CommunicationColumns(_Model):
    id: str = "id"
    tenant: str = "tenantId"
    status: str = "status"
    created: str = "createdAt"
    updated: str = "updatedAt"
    attempts: str = "attempts"
    last_error: str = "lastError"


class CaseEventColumns(_Model):
    id: str = "id"
    case: str = "caseId"
    tenant: str = "tenantId"
    type: str = "type"
    created: str = "createdAt"
    data: str = "data"


class SmtpSettings(_Model):
    host: str | None = None
    port: int = 587
    username: str | None = None
    password: SecretStr | None = None
    security: Literal["starttls", "ssl", "none"] = "starttls"
    ca_file: str | None = None
    timeout: Duration = 10.0


class DryRunSource(_Model):
    """Where the sending service's DRY_RUN_EMAILS is read: its config/health JSON, or an environment variable."""

    url: str | None = None
    field: str = "DRY_RUN_EMAILS"  # dotted for nested JSON
    env: str | None = "DRY_RUN_EMAILS"


class EmailSettings(_Model):
    database: str = "main"
    communications: str = "Communication"
    communication_columns: CommunicationColumns = CommunicationColumns()
    case_events: str = "CaseEvent"
    case_event_columns: CaseEventColumns = CaseEventColumns()
    stuck_after: Duration = 900.0
    environment: str = "production"
    dry_run: DryRunSource = DryRunSource()
    smtp: SmtpSettings = SmtpSettings()
    daily_cap: int | None = Field(None, ge=0)
    auto_reminders_cap: int | None = Field(None, ge=0)
    reminder_recipient: str | None = None
    reminder_reply_to: str | None = None
    retry_growth: float = Field(0.10, ge=0)


class MetricNames(_Model):
    """Prometheus metric names read from a service's /metrics (sums over all label sets)."""

    queue_depth: str | None = "queue_depth"
    retries: str | None = "job_retries_total"
    failures: str | None = "job_failures_total"
    requests: str | None = "http_requests_total"
    errors: str | None = "http_requests_errors_total"
    latency: str | None = "http_request_duration_seconds"


class DeploySettings(_Model):
    """Where ``rollback`` lists and rolls back a service's deploys: a generic HTTP API or Render."""

    provider: Literal["http", "render"]
    url: str | None = None  # http: the deploy API's base URL; render: https://api.render.com/v1
    service_id: str | None = None  # render: srv-...
    token: SecretStr | None = None
    timeout: Duration = 10.0
    retries: int = Field(3, ge=0, le=10)
    compare_url: str | None = None  # e.g. https://github.com/acme/api/compare/{from}...{to}

    @model_validator(mode="after")
    def _complete(self) -> "DeploySettings":
        if self.provider == "http" and not self.url:
            raise ValueError("url: the http deploy provider needs the deploy API's base url")
        if self.provider == "render" and not self.service_id:
            raise ValueError("service_id: the render provider needs the service id (srv-...)")
        return self


class RollbackSettings(_Model):
    """How ``rollback`` judges a rollback: the schema it must respect, and the verification after it."""

    database: str | None = None  # whose migrations constrain which code may run (see `drift`)
    deploy_timeout: Duration = 600.0
    verify_window: Duration = 300.0
    verify_interval: Duration = 15.0
    error_rate: float = Field(0.10, ge=0)  # seed 002: roll back when the error rate is above 10%
    latency_baseline: Duration | None = None  # p95 in normal operation; > 1.5x is "performance degraded"
    runbook: str = "safe-rollback"


class ServiceSettings(_Model):
    liveness: str | None = None
    readiness: str | None = None
    expect: dict[str, Any] | None = None
    metrics: str | None = None
    metric_names: MetricNames = MetricNames()
    auth_header: str | None = None
    auth_token: SecretStr | None = None
    timeout: Duration = 5.0
    deploy: DeploySettings | None = None
    rollback: RollbackSettings = RollbackSettings()


class StatusThresholds(_Model):
    """When `status` turns a line amber or red (defaults from seed 002's alerts)."""

    queue_depth: int = Field(1000, ge=0)
    dead_letters: int = Field(0, ge=0)
    error_rate: float = Field(0.05, ge=0)
    stuck_email: int = Field(0, ge=0)


AUDIT_FIELDS = ("prev_hash", "id", "tenant", "created", "actor", "action", "payload", "writer")
AuditField = Literal["prev_hash", "id", "tenant", "created", "actor", "action", "payload", "writer"]


class AuditColumns(_Model):
    """Column names of the audit table; ``writer`` (the node that wrote a row) is optional."""

    id: str = "id"
    tenant: str = "tenantId"
    created: str = "createdAt"
    actor: str = "actor"
    action: str = "action"
    payload: str = "payload"
    prev_hash: str = "prevHash"
    hash: str = "hash"
    writer: str | None = None


class HashScheme(_Model):
    """How one row's hash is computed. The default is SPEC §7's v1."""

    fields: list[AuditField] = ["prev_hash", "id", "tenant", "created", "actor", "action", "payload"]
    algorithm: str = "sha256"
    framing: Literal["length-prefixed", "separator"] = "length-prefixed"
    separator: str = "|"
    null: str = "-1:"
    created_format: Literal["iso-ms", "iso-us", "epoch-ms"] = "iso-ms"
    digest: Literal["hex", "base64"] = "hex"
    function: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

    @model_validator(mode="after")
    def _known_algorithm(self) -> HashScheme:
        import hashlib

        if self.algorithm not in hashlib.algorithms_available:
            raise ValueError(f"algorithm: unknown hash algorithm {self.algorithm!r}")
        if not self.fields and not self.function:
            raise ValueError("fields: name at least one field, or a function")
        return self


class AuditSettings(_Model):
    """The application's hash-chained audit table (seed 004) and how ``audit`` checks it."""

    database: str = "main"
    table: str = "AuditLog"
    columns: AuditColumns = AuditColumns()
    scheme: HashScheme = HashScheme()
    snapshot_secret: SecretStr | None = None
    failure_limit: int = Field(20, ge=1, le=1000)
    window: int = Field(4096, ge=16, le=1_000_000)
    fork_window: Duration = 2.0
    timeout: Duration = 1800.0
    full_rescan_every: Duration = 7 * 86400.0
    stale_after: Duration = 86400.0


class SeveritySettings(_Model):
    """One severity level (seed 003's table by default)."""

    description: str = ""
    response: Duration | None = None  # update at least this often, or be reminded; None: backlog, no reminders
    page: bool = False  # page the notify groups the moment it is declared
    notify: IdList = []  # Slack user-group ids (S...) mentioned in reminders and pages
    color: str = "#888888"


def _default_severities() -> dict[str, SeveritySettings]:
    return {
        "sev1": SeveritySettings(description="Full outage / data loss risk", response=900.0, page=True,
                                 color="#E01E5A"),
        "sev2": SeveritySettings(description="Major functionality degraded", response=1800.0, color="#ECB22E"),
        "sev3": SeveritySettings(description="Minor feature degraded / work-around", response=4 * 3600.0,
                                 color="#36C5F0"),
        "sev4": SeveritySettings(description="Cosmetic / low impact", response=None, color="#888888"),
    }


class IncidentSettings(_Model):
    """Incidents (seed 003): where their threads live, severities, response targets and the postmortem."""

    channel: str | None = None  # default: slack.incident_channel
    severities: dict[Name, SeveritySettings] = Field(default_factory=_default_severities)
    postmortem_within: Duration = 48 * 3600.0
    postmortem_template: str = "postmortem.md.j2"  # in runbooks_dir
    page_url: str | None = None  # optional webhook POSTed {incident, severity, title, url} when paging
    sweep_every: Duration = 15.0


class Settings(_Model):
    slack: SlackSettings = SlackSettings()
    state: StateSettings
    guard: GuardSettings = GuardSettings()
    limits: LimitSettings = LimitSettings()
    metrics: MetricsSettings = MetricsSettings()
    roles: dict[Name, RoleSettings] = {}
    redis: dict[Name, RedisTarget] = {}
    databases: dict[Name, DatabaseTarget] = {}
    queues: list[QueueSettings] = []
    services: dict[Name, ServiceSettings] = {}
    email: EmailSettings = EmailSettings()
    status: StatusThresholds = StatusThresholds()
    audit: AuditSettings = AuditSettings()
    incidents: IncidentSettings = IncidentSettings()
    runbooks_dir: str = "runbooks"
    base_dir: str = Field(".", exclude=True)

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
        seen: set[str] = set()
        for index, queue in enumerate(self.queues):
            if queue.name in seen:
                raise ValueError(f"queues[{index}].name: duplicate queue name {queue.name!r}")
            seen.add(queue.name)
            if queue.backend == "http":
                if not queue.url:
                    raise ValueError(f"queues[{index}].url: the http backend needs the service's base url")
                continue
            if queue.redis not in self.redis:
                known = ", ".join(self.redis) or "none configured"
                raise ValueError(f"queues[{index}].redis: unknown redis connection {queue.redis!r} (known: {known})")
        return self

    def queue(self, name: str | None) -> QueueSettings:
        """The named queue, or the first one when ``name`` is None; KeyError names the known ones."""
        if not self.queues:
            raise KeyError("no queues are configured in app.yaml")
        if name is None:
            return self.queues[0]
        for queue in self.queues:
            if queue.name == name:
                return queue
        raise KeyError(f"unknown queue {name!r}; configured: {', '.join(q.name for q in self.queues)}")

    @property
    def runbooks_path(self) -> Path:
        return Path(self.base_dir, self.runbooks_dir)


def default_config_path(explicit: str | None = None) -> Path:
    """``--config``, else ``$OPSBOT_CONFIG``, else ``./app.yaml``."""
    return Path(explicit or os.environ.get("OPSBOT_CONFIG") or "app.yaml")


def load_settings(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> Settings:
    """Read, expand and validate ``path``; every problem becomes one ConfigError."""
    env = os.environ if env is None else env
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror or exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if node is None or not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    lines: dict[tuple, int] = {}
    data = _to_python(node, (), lines, env, path)
    data["base_dir"] = str(path.resolve().parent)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, lines, path)) from None


def _to_python(node: yaml.Node, loc: tuple, lines: dict, env: Mapping[str, str], path: Path) -> Any:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = key_node.value
            out[key] = _to_python(value_node, loc + (key,), lines, env, path)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, loc + (index,), lines, env, path) for index, item in enumerate(node.value)]
    raw = node.value
    where = f"{path}:{lines[loc]}: {_dotted(loc)}"
    key = next((part for part in reversed(loc) if isinstance(part, str)), "")
    if raw and is_secret_key(key) and not re.fullmatch(r"\$\{[^}]*\}", raw.strip()):
        raise ConfigError(f"{where}: secrets must come from the environment; write ${{VARIABLE}} instead of a value")
    if _URL_CREDENTIALS.search(raw) and "${" not in raw.split("@")[0]:
        raise ConfigError(f"{where}: credentials inside a URL must come from the environment (${{VARIABLE}})")
    if "$" not in raw:
        # No reference: plain scalars keep YAML's own typing (numbers, booleans, null).
        return yaml.safe_load(raw) if node.style is None else raw
    try:
        value = expand(raw, env)
    except UnsetVariable as exc:
        raise ConfigError(f"{where}: {exc} (write ${{{exc.name}:-}} if it is optional)") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return value if value != "" else None


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _parse_dotted(key: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.findall(r"[^.\[\]]+", key))


def _describe(exc: ValidationError, lines: dict, path: Path) -> str:
    messages = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling)"
        elif error["type"] == "missing":
            message = "required setting is missing"
        elif not loc and re.match(r"^[\w.\[\]]+: ", message):
            key, _, message = message.partition(": ")
            loc = _parse_dotted(key)
        probe = loc
        while probe and probe not in lines:
            probe = probe[:-1]
        messages.append(f"{path}:{lines.get(probe, 1)}: {_dotted(loc)}: {message}")
    return "\n".join(messages)

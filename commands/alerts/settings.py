"""``alerts:``: who may post alerts to ``POST /alerts``, where their threads go, escalation and silences."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from bot.config.types import ConfigModel as _Model
from bot.config.types import Duration, Name

__all__ = ["AlertSettings", "DIAGNOSIS"]

# commands a runbook step may start with to run on its own when an alert arrives: they only read
DIAGNOSIS = ("status", "health", "dlq status", "dlq peek", "drift", "audit verify", "email triage", "reminders",
             "log verify")


class AlertSettings(_Model):
    """Alert intake (Alertmanager and Grafana webhooks) and what opsbot does with an alert group."""

    token: SecretStr | None = None  # Authorization: Bearer <token> (${OPSBOT_ALERTS_TOKEN})
    username: str | None = None  # basic auth instead of (or besides) the token
    password: SecretStr | None = None
    channel: str | None = None  # default: slack.incident_channel
    declare: dict[Name, Name] = Field(default_factory=dict)  # alert severity label value → incident severity
    severity_label: Name = "severity"
    alertmanager_url: str | None = None  # Alertmanager's base URL, for silences (API v2)
    silence_for: list[Duration] = Field(default_factory=lambda: [3600.0, 4 * 3600.0, 24 * 3600.0])
    diagnose: bool = True  # run the matched runbook's read-only steps and post their results in the thread
    diagnosis: list[str] = Field(default_factory=lambda: list(DIAGNOSIS))  # commands that count as read-only
    max_diagnosis: int = Field(5, ge=0, le=20)
    max_body: int = Field(2_000_000, ge=1024)  # bytes: a bigger webhook body is refused with 413
    max_shown: int = Field(10, ge=1, le=40)  # alerts listed in the root message; the rest are counted
    lock_timeout: Duration = 60.0  # how long one worker may hold an alert group while posting it

    @field_validator("silence_for")
    @classmethod
    def _some(cls, value: list[float]) -> list[float]:
        if not value or len(value) > 5 or any(v < 60 for v in value):
            raise ValueError("give 1 to 5 durations of at least 1m, e.g. [1h, 4h, 24h]")
        return value

    @field_validator("declare")
    @classmethod
    def _lower(cls, value: dict[str, str]) -> dict[str, str]:
        return {label.lower(): severity.lower() for label, severity in value.items()}

    @field_validator("alertmanager_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. http://alertmanager:9093")
        return value.rstrip("/") if value else value

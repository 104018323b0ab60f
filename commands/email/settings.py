"""``email:``: the sending service's tables, its SMTP provider, caps and the dry-run switch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from bot.config.types import ConfigModel as _Model
from bot.config.types import Duration

__all__ = ["CaseEventColumns", "CommunicationColumns", "DryRunSource", "EmailSettings", "SmtpSettings"]


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

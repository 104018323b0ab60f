"""``incidents:``: where incident threads live, the severities with their response targets, the postmortem."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator

from bot.config.types import ConfigModel as _Model
from bot.config.types import Duration, IdList, Name

__all__ = ["IncidentSettings", "SeveritySettings"]


class SeveritySettings(_Model):
    """One severity level (SEV1–SEV4 by default, docs/conventions.md)."""

    description: str = ""
    response: Duration | None = None  # update at least this often, or be reminded; None: backlog, no reminders
    page: bool = False  # page the notify groups the moment it is declared
    notify: IdList = []  # Slack user-group ids (S...) mentioned in reminders and pages
    color: str = "#888888"

    @field_validator("notify")
    @classmethod
    def _group_ids(cls, value: list[str]) -> list[str]:
        for group in value:
            if not re.fullmatch(r"S[A-Z0-9]{1,30}", group):
                raise ValueError(f"{group!r} is not a Slack user-group id (they look like S0123ABCD)")
        return value


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
    """Incidents: where their threads live, severities, response targets and the postmortem."""

    channel: str | None = None  # default: slack.incident_channel
    severities: dict[Name, SeveritySettings] = Field(default_factory=_default_severities)
    postmortem_within: Duration = 48 * 3600.0
    postmortem_template: str = "postmortem.md.j2"  # in runbooks_dir
    page_url: SecretStr | None = None  # webhook POSTed {incident, severity, title, summary, commander}: a secret URL
    sweep_every: Duration = 15.0

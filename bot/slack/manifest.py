"""The Slack app manifest, generated from the command registry.

Usage::

    print(yaml.safe_dump(build_manifest(settings, registry)))

Paste it at api.slack.com/apps → Create New App → From an app manifest.
"""

from __future__ import annotations

from bot.config.settings import Settings
from bot.core.registry import Registry

__all__ = ["build_manifest", "BOT_SCOPES"]

BOT_SCOPES = [
    "commands",            # the /ops slash command
    "chat:write",          # results and announcements
    "chat:write.public",   # post to the incident channel without being invited first
    "usergroups:read",     # role membership through user groups
    "files:write",         # exports and postmortems attached to threads
]


def build_manifest(settings: Settings, registry: Registry, *, socket_mode: bool = False) -> dict:
    name = settings.slack.app_name
    command = settings.slack.command
    groups = registry.groups()
    url = (settings.slack.request_url or "https://opsbot.example.com").rstrip("/") + "/slack/events"
    lines = [f"{command} {c.name}: {c.summary}" + (" (guarded)" if c.guarded else "") for c in registry]
    slash = {
        "command": command,
        "description": "Run an incident-response runbook action",
        "usage_hint": _fit(" | ".join(groups), 1000),
        "should_escape": False,
    }
    settings_block: dict = {
        "interactivity": {"is_enabled": True},
        "org_deploy_enabled": False,
        "socket_mode_enabled": socket_mode,
        "token_rotation_enabled": False,
    }
    if not socket_mode:
        slash["url"] = url
        settings_block["interactivity"]["request_url"] = url
    return {
        "_metadata": {"major_version": 1, "minor_version": 1},
        "display_information": {
            "name": name,
            "description": "Incident-response runbook actions with preview, confirmation and an audit trail",
            "long_description": _fit(
                "opsbot runs runbook actions against production from Slack. Anything that changes production "
                "shows a preview and waits for Confirm from someone with the right role.\n\n" + "\n".join(lines),
                4000,
            ),
            "background_color": "#2c2d30",
        },
        "features": {
            "bot_user": {"display_name": name, "always_online": True},
            "slash_commands": [slash],
        },
        "oauth_config": {"scopes": {"bot": list(BOT_SCOPES)}},
        "settings": settings_block,
    }


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

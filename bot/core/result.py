"""The one result model every command returns.

Usage::

    Result.ok("2 queues, 14 dead letters", data={"queues": [...]},
              sections=[Section("jobs", fields=[("ready", "3"), ("dead", "14")])])

A result renders to Block Kit (:mod:`bot.render.blocks`), plain text
(:mod:`bot.render.text`) and JSON (:func:`to_json`). Guarded commands return a
:class:`Plan` first; its fingerprint binds the confirmation to what was shown.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = ["Attachment", "Button", "Form", "Plan", "Result", "Section", "Status", "fingerprint_of", "to_json"]

Status = Literal["ok", "warn", "fail", "error"]


@dataclass(frozen=True)
class Section:
    """A titled part of a result: free text (Slack mrkdwn subset), key/value fields, or a preformatted block."""

    title: str | None = None
    text: str = ""
    fields: tuple[tuple[str, str], ...] = ()
    code: str | None = None
    button: Button | None = None


@dataclass(frozen=True)
class Form:
    """A one-field form a button opens; submitting it runs ``command`` as the person who wrote it.

    ``command`` has ``{text}`` (what they wrote) and ``{value}`` (the button's value) filled in,
    each shell-quoted: ``Form("deploy_reason", "Why?", "Why this deploy?", "deploy note {text}
    --deploy {value}")``. Groups declare their forms (``Group.forms``); buttons name them.
    """

    name: str
    title: str
    label: str
    command: str
    field: str = "text"


@dataclass(frozen=True)
class Button:
    """A button under a result.

    ``action``: confirm or cancel (``value`` is the pending action), run (``value`` is command
    text), or form (``form`` names a :class:`Form`; ``value`` goes into its command).
    """

    label: str
    action: Literal["confirm", "cancel", "run", "form"]
    value: str
    style: Literal["primary", "danger"] | None = None
    confirm: str | None = None
    form: str | None = None


@dataclass(frozen=True)
class Attachment:
    """A file that goes with a result: uploaded to the thread in Slack, written to a path by the CLI.

    Small files carry ``content``; large ones live at ``path`` (a temporary file the
    transport moves or streams to Slack and then removes).
    """

    filename: str
    content: bytes | None = None
    path: str | None = None
    title: str = ""

    def size(self) -> int:
        return len(self.content) if self.content is not None else os.path.getsize(self.path or "")

    def discard(self) -> None:
        if self.path and os.path.exists(self.path):
            os.unlink(self.path)


@dataclass(frozen=True)
class Result:
    status: Status
    summary: str
    data: dict[str, Any] = field(default_factory=dict)
    sections: tuple[Section, ...] = ()
    buttons: tuple[Button, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    command: str = ""

    @classmethod
    def ok(cls, summary: str, **kw: Any) -> Result:
        return cls("ok", summary, **_tuples(kw))

    @classmethod
    def warn(cls, summary: str, **kw: Any) -> Result:
        return cls("warn", summary, **_tuples(kw))

    @classmethod
    def fail(cls, summary: str, **kw: Any) -> Result:
        return cls("fail", summary, **_tuples(kw))

    @classmethod
    def error(cls, summary: str, **kw: Any) -> Result:
        return cls("error", summary, **_tuples(kw))

    def with_(self, **changes: Any) -> Result:
        return replace(self, **_tuples(changes))


def _tuples(kw: dict[str, Any]) -> dict[str, Any]:
    for key in ("sections", "buttons", "attachments"):
        if key in kw:
            kw[key] = tuple(kw[key])
    return kw


@dataclass(frozen=True)
class Plan:
    """What a guarded command would change. ``data`` is compared on confirm."""

    summary: str
    data: dict[str, Any] = field(default_factory=dict)
    sections: tuple[Section, ...] = ()
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", fingerprint_of(self.data))
        object.__setattr__(self, "sections", tuple(self.sections))


def fingerprint_of(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def to_json(result: Result) -> str:
    """``{"command", "status", "summary", "data"}`` (redact first); markup spelled out."""
    from bot.core.markup import plain

    body = {"command": result.command, "status": result.status, "summary": plain(result.summary),
            "data": result.data}
    return json.dumps(body, default=str, ensure_ascii=False)

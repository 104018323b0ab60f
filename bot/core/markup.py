"""Slack mrkdwn the bot composes, kept apart from the values it shows.

Usage::

    md("{} requested {}: {}", mention("U123"), code(text), summary)   # values escaped, the mention kept
    Mrkdwn("*bold*") + user_text                                        # user_text is escaped
    plain(md("{} paged", subteam("S1")))                                # '@S1 paged' (terminal, JSON)

Text reaches Slack in two kinds. *Markup* is what the bot means: mentions,
channel and group references, links, formatting. *Values* are what someone else
supplied: a user's note, a job's error, a row from a database, an upstream's
answer. A plain ``str`` is always a value: the renderers escape ``&``, ``<`` and
``>`` in it, so ``<!here>`` typed by a user stays text. :class:`Mrkdwn` is markup:
it is sent as is. Combining the two escapes the value (``+``, :meth:`Mrkdwn.format`,
:meth:`Mrkdwn.join`), so the wrong mix is hard to write: an f-string gives a plain
``str``, whose mentions would show as text, never a live ``@here``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from typing import Any

__all__ = ["Mrkdwn", "md", "escape", "plain", "mention", "channel", "subteam", "here", "link", "code", "bold",
           "is_user_id"]

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_USER = re.compile(r"^[UW][A-Z0-9]{1,30}$")
_CHANNEL = re.compile(r"^[CGD][A-Z0-9-]{1,30}$")
_GROUP = re.compile(r"^S[A-Z0-9]{1,30}$")


def escape(value: object) -> str:
    """A value as mrkdwn: ``&``, ``<`` and ``>`` escaped, as Slack asks for every text field."""
    text = str(value)
    if "&" in text or "<" in text or ">" in text:
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text


class _Formatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, Mrkdwn):
            return str(value) if not format_spec else format(str(value), format_spec)
        return escape(format(value, format_spec))


_FORMATTER = _Formatter()


class Mrkdwn(str):
    """Markup the bot composed; anything combined with it is escaped as a value."""

    __slots__ = ()

    @classmethod
    def of(cls, value: object) -> Mrkdwn:
        """``value`` as markup: itself when it is markup already, else escaped."""
        return value if isinstance(value, Mrkdwn) else cls(escape(value))

    def __add__(self, other: object) -> Mrkdwn:
        return Mrkdwn(str(self) + str(Mrkdwn.of(other)))

    def __radd__(self, other: object) -> Mrkdwn:
        return Mrkdwn(str(Mrkdwn.of(other)) + str(self))

    def format(self, *args: Any, **kwargs: Any) -> Mrkdwn:
        return Mrkdwn(_FORMATTER.vformat(str(self), args, kwargs))

    def join(self, items: Iterable[object]) -> Mrkdwn:
        return Mrkdwn(str(self).join(str(Mrkdwn.of(item)) for item in items))

    def __repr__(self) -> str:
        return f"Mrkdwn({str(self)!r})"


def md(template: str, *args: Any, **kwargs: Any) -> Mrkdwn:
    """The template is markup; every argument is a value (escaped) unless it is :class:`Mrkdwn` itself."""
    return Mrkdwn(template).format(*args, **kwargs)


def is_user_id(text: str) -> bool:
    return bool(_USER.match(text))


def mention(user: str) -> Mrkdwn:
    """``<@U123>`` for a Slack user id; anything else (``cli:alice``, ``opsbot``) is shown as a name."""
    return Mrkdwn(f"<@{user}>") if _USER.match(user) else Mrkdwn.of(user)


def channel(channel_id: str) -> Mrkdwn:
    """``<#C123>`` for a channel id; a name (``#incidents``) is shown as text."""
    return Mrkdwn(f"<#{channel_id}>") if _CHANNEL.match(channel_id) else Mrkdwn.of(channel_id)


def subteam(group: str) -> Mrkdwn:
    """``<!subteam^S123>``: mentions a user group (pages its members)."""
    if not _GROUP.match(group):
        raise ValueError(f"{group!r} is not a Slack user-group id (S...)")
    return Mrkdwn(f"<!subteam^{group}>")


def here() -> Mrkdwn:
    return Mrkdwn("<!here>")


def link(url: str, label: object | None = None) -> Mrkdwn:
    """``<url|label>``; the URL must be http(s), and neither part can break out of the link."""
    if not re.match(r"^https?://[^\s<>|]+$", url):
        return Mrkdwn.of(url if label is None else f"{label} ({url})")
    target = url.replace("&", "&amp;")
    return Mrkdwn(f"<{target}>") if label is None else Mrkdwn(f"<{target}|{escape(label).replace('|', '¦')}>")


def code(value: object) -> Mrkdwn:
    """An inline code span; a backtick in the value cannot end it early."""
    return Mrkdwn("`" + escape(value).replace("`", "ˋ") + "`")


def bold(value: object) -> Mrkdwn:
    return Mrkdwn("*" + escape(value) + "*")


_PLAIN_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)\|([^>]+)>")
_BARE_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)>")
_USER_REF = re.compile(r"<@([A-Z0-9]+)>")
_CHANNEL_REF = re.compile(r"<#([A-Z0-9-]+)(?:\|([^>]*))?>")
_SPECIAL = re.compile(r"<!(subteam\^)?([A-Za-z0-9]+)(?:\|([^>]*))?>")


def plain(text: str) -> str:
    """What a terminal or a JSON reader should see: markup spelled out, values as they were given.

    A plain ``str`` is a value and comes back unchanged.
    """
    if not isinstance(text, Mrkdwn):
        return str(text)
    out = _PLAIN_LINK.sub(r"\2 (\1)", str(text))
    out = _BARE_LINK.sub(r"\1", out)
    out = _USER_REF.sub(r"@\1", out)
    out = _CHANNEL_REF.sub(lambda m: "#" + (m.group(2) or m.group(1)), out)
    out = _SPECIAL.sub(lambda m: "@" + (m.group(3) or m.group(2)), out)
    return out.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")

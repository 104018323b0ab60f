"""Plain-text rendering of a result for the terminal.

Usage::

    print(to_text(result))
"""

from __future__ import annotations

import re
import textwrap

from bot.redact import Redactor
from bot.result import Result

__all__ = ["to_text"]

_LABEL = {"ok": "OK", "warn": "WARN", "fail": "FAIL", "error": "ERROR"}
_SLACK_LINK = re.compile(r"<([^|>]+)\|([^>]+)>")
_MENTION = re.compile(r"<@([A-Z0-9:._-]+)>", re.I)
_EMOJI = re.compile(r":([a-z0-9_+-]+):")
_EMOJI_WORDS = {
    "lock": "[guarded]",
    "busts_in_silhouette": "[two-person]",
    "white_check_mark": "[ok]",
    "x": "[FAIL]",
    "warning": "[!]",
    "large_green_circle": "[ok]",
    "large_orange_circle": "[warn]",
    "red_circle": "[FAIL]",
    "white_circle": "[?]",
    "rotating_light": "[!!]",
}
_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")


def to_text(result: Result, redactor: Redactor | None = None) -> str:
    result = (redactor or Redactor()).result(result)
    lines = [f"[{_LABEL[result.status]}] {_plain(result.summary)}"]
    for section in result.sections:
        lines.append("")
        if section.title:
            lines.append(f"== {section.title}")
        if section.text:
            lines.append(_plain(section.text))
        width = max((len(key) for key, _ in section.fields), default=0)
        for key, value in section.fields:
            lines.append(f"  {key.ljust(width)}  {_plain(value)}")
        if section.code is not None:
            lines.append(textwrap.indent(section.code, "  "))
        if section.button:
            lines.append(f"  -> {section.button.value}")
    runs = [button for button in result.buttons if button.action == "run"]
    if runs:
        lines.append("")
        lines.extend(f"  -> {button.value}" for button in runs)
    return "\n".join(lines)


def _plain(text: str) -> str:
    text = _SLACK_LINK.sub(r"\2 (\1)", text)
    text = _MENTION.sub(r"@\1", text)
    text = _BOLD.sub(r"\1", text)
    return _EMOJI.sub(lambda m: _EMOJI_WORDS.get(m.group(1), m.group(0)), text)

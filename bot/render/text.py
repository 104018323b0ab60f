"""Plain-text rendering of a result for the terminal.

Usage::

    print(to_text(result))
"""

from __future__ import annotations

import re
import textwrap

from bot.core.markup import plain
from bot.core.redact import Redactor
from bot.core.result import Result

__all__ = ["to_text"]

_LABEL = {"ok": "OK", "warn": "WARN", "fail": "FAIL", "error": "ERROR"}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # a value must not drive the terminal (ANSI escapes)
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
            lines.append(f"== {_plain(section.title)}")
        if section.text:
            lines.append(_plain(section.text))
        width = max((len(key) for key, _ in section.fields), default=0)
        for key, value in section.fields:
            continued = "\n" + " " * (width + 4)  # a value's further lines line up under its first
            lines.append(f"  {_plain(key).ljust(width)}  {_plain(value).replace(chr(10), continued)}")
        if section.code is not None:
            lines.append(textwrap.indent(_safe(section.code), "  "))
        if section.button:
            lines.append(f"  -> {_safe(section.button.value)}")
    runs = [button for button in result.buttons if button.action == "run"]
    if runs:
        lines.append("")
        lines.extend(f"  -> {_safe(button.value)}" for button in runs)
    return "\n".join(lines)


def _plain(text: str) -> str:
    """Markup spelled out (mentions, links), formatting and emoji in words; values as they were given."""
    text = _BOLD.sub(r"\1", _safe(plain(text)))
    return _EMOJI.sub(lambda m: _EMOJI_WORDS.get(m.group(1), m.group(0)), text)


def _safe(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)

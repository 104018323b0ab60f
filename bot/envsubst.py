"""Expand ``${VAR}`` and ``${VAR:-default}`` references from the environment.

Usage::

    >>> expand("${HOST:-localhost}:${PORT:-6379}", {"PORT": "6380"})
    'localhost:6380'

Defaults may themselves hold references (``${A:-${B:-x}}``); ``$$`` is a
literal ``$``. A reference to an unset variable without a default raises
:class:`UnsetVariable` naming it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["UnsetVariable", "expand", "references"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class UnsetVariable(ValueError):
    def __init__(self, name: str):
        super().__init__(f"environment variable {name} is not set")
        self.name = name


def expand(text: str, env: Mapping[str, str]) -> str:
    out, pos = _expand(text, 0, env, nested=False)
    return out


def references(text: str) -> list[str]:
    """Names of every variable referenced in ``text``, defaults included."""
    names: list[str] = []
    _expand(text, 0, _Recorder(names), nested=False)
    return names


class _Recorder(dict):
    def __init__(self, names: list[str]):
        super().__init__()
        self.names = names

    def get(self, key, default=None):  # noqa: D401 - mapping protocol
        self.names.append(key)
        return ""


def _expand(text: str, pos: int, env: Mapping[str, str], nested: bool) -> tuple[str, int]:
    out: list[str] = []
    while pos < len(text):
        ch = text[pos]
        if nested and ch == "}":
            return "".join(out), pos
        if ch == "$" and text.startswith("$$", pos):
            out.append("$")
            pos += 2
        elif ch == "$" and text.startswith("${", pos):
            value, pos = _reference(text, pos + 2, env)
            out.append(value)
        else:
            out.append(ch)
            pos += 1
    if nested:
        raise ValueError(f"unclosed '${{' in {text!r}")
    return "".join(out), pos


def _reference(text: str, pos: int, env: Mapping[str, str]) -> tuple[str, int]:
    match = _NAME.match(text, pos)
    if not match:
        raise ValueError(f"bad variable reference in {text!r}: expected a name after '${{'")
    name, pos = match.group(), match.end()
    if text.startswith(":-", pos):
        default, pos = _expand(text, pos + 2, env, nested=True)
        value = env.get(name)
        return (value if value else default), pos + 1
    if text.startswith("}", pos):
        value = env.get(name)
        if value is None:
            raise UnsetVariable(name)
        return value, pos + 1
    raise ValueError(f"bad variable reference in {text!r}: use ${{{name}}} or ${{{name}:-default}}")

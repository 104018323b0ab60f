"""Expand ``${VAR}`` and ``${VAR:-default}`` references from the environment.

Usage::

    >>> expand("${HOST:-localhost}:${PORT:-6379}", {"PORT": "6380"})
    'localhost:6380'

Defaults may themselves hold references (``${A:-${B:-x}}``, at most
:data:`MAX_NESTING` deep); ``$$`` is a literal ``$``. References to unset
variables without a default raise :class:`UnsetVariable` naming all of them.
A value taken from the environment is inserted as it is: a ``${OTHER}`` inside
it is text, never expanded again.

:func:`parse` gives the template itself, so a caller can see where each
reference lands (:func:`render` with ``encoders`` percent-encodes a value that
lands in a URL's password, for instance).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Union

__all__ = ["MAX_NESTING", "Reference", "Template", "UnsetVariable", "expand", "literal_text", "parse",
           "references", "render"]

MAX_NESTING = 8
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPECIAL = re.compile(r"\$\$|\$\{")
_SPECIAL_NESTED = re.compile(r"\$\$|\$\{|\}")


@dataclass(frozen=True)
class Reference:
    """``${name}`` (``default`` None) or ``${name:-default}``."""

    name: str
    default: "Template | None" = None


Template = tuple[Union[str, Reference], ...]
# Given a template, the encoder of each top-level part index whose value needs one.
Encoders = Callable[[Template], Mapping[int, Callable[[str], str]]]


class UnsetVariable(ValueError):
    def __init__(self, name: str, *others: str):
        self.names = [name, *others]
        self.name = name
        if others:
            super().__init__(f"environment variables {', '.join(self.names)} are not set")
        else:
            super().__init__(f"environment variable {name} is not set")


def parse(text: str) -> Template:
    """The literal text and references of ``text``; ValueError for a malformed reference."""
    parts, _ = _parse(text, 0, depth=0)
    return parts


def render(template: Template, env: Mapping[str, str], encoders: Encoders | None = None) -> str:
    """The template with every reference replaced; UnsetVariable names every unset one."""
    unset: list[str] = []
    out = _render(template, env, encoders, unset)
    if unset:
        raise UnsetVariable(*dict.fromkeys(unset))
    return out


def expand(text: str, env: Mapping[str, str]) -> str:
    return render(parse(text), env)


def references(text: str) -> list[str]:
    """Names of every variable referenced in ``text``, defaults included."""
    names: list[str] = []

    def walk(template: Template) -> None:
        for part in template:
            if isinstance(part, Reference):
                names.append(part.name)
                walk(part.default or ())

    walk(parse(text))
    return names


def literal_text(template: Template) -> str:
    """Every character written literally, defaults included (``a${X:-b}c`` → ``'abc'``)."""
    return "".join(part if isinstance(part, str) else literal_text(part.default or ()) for part in template)


def _render(template: Template, env: Mapping[str, str], encoders: Encoders | None, unset: list[str]) -> str:
    encode = encoders(template) if encoders else {}
    out = []
    for index, part in enumerate(template):
        if isinstance(part, str):
            out.append(part)
            continue
        value = env.get(part.name)
        if part.default is not None and not value:
            value = _render(part.default, env, encoders, unset)
        elif value is None:
            unset.append(part.name)
            value = ""
        out.append(encode[index](value) if index in encode else value)
    return "".join(out)


def _parse(text: str, pos: int, depth: int) -> tuple[Template, int]:
    """Parse from ``pos``; inside a default (depth > 0) stop at the closing ``}``."""
    if depth > MAX_NESTING:
        raise ValueError(f"references nested more than {MAX_NESTING} deep")
    parts: list[str | Reference] = []
    literal: list[str] = []
    special = _SPECIAL_NESTED if depth else _SPECIAL
    while True:
        match = special.search(text, pos)
        if match is None:
            if depth:
                raise ValueError("unclosed '${' (a '}' is missing)")
            literal.append(text[pos:])
            pos = len(text)
            break
        literal.append(text[pos:match.start()])
        pos = match.end()
        if match.group() == "}":
            pos -= 1
            break
        if match.group() == "$$":
            literal.append("$")
            continue
        if "".join(literal):
            parts.append("".join(literal))
        literal = []
        reference, pos = _reference(text, pos, depth)
        parts.append(reference)
    if "".join(literal):
        parts.append("".join(literal))
    return tuple(parts), pos


def _reference(text: str, pos: int, depth: int) -> tuple[Reference, int]:
    match = _NAME.match(text, pos)
    if not match:
        raise ValueError("bad variable reference: expected a name after '${'")
    name, pos = match.group(), match.end()
    if text.startswith(":-", pos):
        default, pos = _parse(text, pos + 2, depth + 1)
        return Reference(name, default), pos + 1
    if text.startswith("}", pos):
        return Reference(name), pos + 1
    raise ValueError(f"bad variable reference: use ${{{name}}} or ${{{name}:-default}}")

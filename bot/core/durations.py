"""Human durations: ``90s``, ``15m``, ``1h30m``, ``2d``, or plain seconds.

Usage::

    >>> parse_duration("1h30m")
    5400.0
    >>> format_duration(5400)
    '1h30m'
"""

from __future__ import annotations

import re

__all__ = ["parse_duration", "format_duration"]

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value``; raises ValueError with an example when it is not a duration."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 15m, 1h or 2d")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    text = value.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    while pos < len(text):
        match = _PART.match(text, pos)
        if not match:
            raise ValueError(f"{value!r} is not a duration; use e.g. 30s, 15m, 1h, 2d")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not text:
        raise ValueError("empty duration; use e.g. 30s, 15m, 1h, 2d")
    return total


def format_duration(seconds: float) -> str:
    """Compact form of ``seconds`` with at most two units (``3d4h``, ``12m5s``, ``0.4s``)."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    remaining = int(round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if remaining >= size or (unit == "s" and not parts):
            count, remaining = divmod(remaining, size)
            parts.append(f"{count}{unit}")
        if len(parts) == 2:
            break
    return "".join(parts)

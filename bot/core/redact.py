"""Keep secrets out of every rendering, log line and action-log entry.

Usage::

    redactor = Redactor(known=[settings.slack.bot_token.get_secret_value()])
    redactor.text("postgresql://app:s3cret@db/app")   # 'postgresql://app:[redacted]@db/app'
    redactor.data({"password": "x", "rows": 3})       # {'password': '[redacted]', 'rows': 3}

Values are redacted by key name (password|token|secret|key ...), by pattern
(credentials in URLs/DSNs, ``token=...`` pairs, Slack tokens, bearer tokens),
and by exact match with known secret values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from bot.config.secretnames import is_secret_key
from bot.core.markup import Mrkdwn
from bot.core.result import Button, Result, Section

__all__ = ["Redactor", "MASK", "PATTERNS", "QUICK_CHECK", "CLEAN_TEXTS"]

MASK = "[redacted]"
# The secret patterns masked in free text, each with its replacement.
PATTERNS = [
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*):[^\s@/]+@", re.I), r"\1:" + MASK + "@"),
    (re.compile(r"\bxox[abposre]-[A-Za-z0-9-]+"), MASK),
    (re.compile(r"\bxapp-[A-Za-z0-9-]+"), MASK),
    (re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]+", re.I), r"\1" + MASK),
    (
        re.compile(
            r"(\b[\w.-]*?(?:password|passwd|pwd|pass|token|secret|api[_-]?key|private[_-]?key|access[_-]?key)"
            r"[\"']?[ \t]*[=:][ \t]*[\"']?)([^\s\"',;&]+)",  # on one line: "pass\n:emoji:" is no secret
            re.I,
        ),
        lambda m: m.group(1) + MASK if _secretish(m.group(1), m.group(2)) else m.group(0),
    ),
]

# Every pattern above needs one of these in the text; without any, none can match (checked once, not five times).
# The last pattern's keywords, not its "=" or ":": most text has a colon (":warning:", "usage: ..."), few a keyword.
QUICK_CHECK = re.compile(r"://|xox[abposre]-|xapp-|bearer\s|pass|pwd|token|secret|key", re.I)

# Texts found to hold no secret are remembered, so the same text (a command's help, a usage line) is not
# searched again on every reply. Only texts that came out unchanged: no secret is ever kept here.
CLEAN_TEXTS = 2048
CLEAN_TEXT_CHARS = 16_384


def _secretish(key: str, value: str) -> bool:
    """``token=...`` always is; after ``password: `` in prose, a plain word ("set", "the") is not."""
    if "=" in key or not key.rstrip(" \t\"'").endswith(":") or not key.endswith((" ", "\t")):
        return True
    return any(ch.isdigit() for ch in value) or not value.isalpha() or len(value) >= 16


class Redactor:
    def __init__(self, known: Iterable[str | None] = ()):
        self.known = sorted({value for value in known if value and len(value) >= 4}, key=len, reverse=True)
        self._clean: dict[str, None] = {}

    def text(self, value: str) -> str:
        """``value`` with secrets masked; markup stays markup (a mask never opens or closes any)."""
        out = given = str(value)
        if given in self._clean:
            return Mrkdwn(given) if isinstance(value, Mrkdwn) else given
        for secret in self.known:
            out = out.replace(secret, MASK)
        if QUICK_CHECK.search(out):
            for pattern, replacement in PATTERNS:
                out = pattern.sub(replacement, out)
        if out == given and len(given) <= CLEAN_TEXT_CHARS:
            if len(self._clean) >= CLEAN_TEXTS:
                self._clean.clear()  # forget them all rather than track which is oldest: they come back once
            self._clean[given] = None
        return Mrkdwn(out) if isinstance(value, Mrkdwn) else out

    def data(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                key: (MASK if isinstance(key, str) and is_secret_key(key) and value[key] not in (None, "") else self.data(item))
                for key, item in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self.data(item) for item in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def result(self, result: Result, *, data: bool = True) -> Result:
        """``result`` with secrets masked; ``data=False``: its data left as is, for a rendering that shows none."""
        return replace(
            result,
            summary=self.text(result.summary),
            data=self.data(result.data) if data else result.data,
            sections=tuple(self._section(section) for section in result.sections),
            buttons=tuple(self._button(button) for button in result.buttons),
        )

    def _section(self, section: Section) -> Section:
        return replace(
            section,
            title=self.text(section.title) if section.title else section.title,
            text=self.text(section.text),
            fields=tuple((self.text(k), MASK if is_secret_key(k) else self.text(v)) for k, v in section.fields),
            code=self.text(section.code) if section.code else section.code,
            button=self._button(section.button) if section.button else None,
        )

    def _button(self, button: Button) -> Button:
        return replace(button, label=self.text(button.label))

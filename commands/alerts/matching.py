"""Which runbook answers an alert: the runbooks' ``alerts:`` front matter against the alert's labels.

Usage::

    found = match_runbook(library, labels)         # Match or None
    found.book.name, found.params, found.rendered.steps, found.notes

A matcher is a set of labels (a bare name is ``{alertname: name}``); it matches when the
alert has every one of them with that value. The most specific match wins (most labels;
ties go to the runbook named first). The alert's labels that name a runbook parameter fill
it (``queue=step`` renders the runbook for ``step``). A value fills a parameter only when it is
one plain word (it ends up in the text of the steps' commands, where a space or a leading ``-``
could add options); any other value, or one the runbook refuses, leaves the parameter's
default, with a note saying so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bot.core.runbooks import RenderedRunbook, Runbook, RunbookError, RunbookLibrary

__all__ = ["Match", "match_runbook"]

_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/@-]{0,99}")  # a label value that may fill a parameter


@dataclass(frozen=True)
class Match:
    book: Runbook
    rendered: RenderedRunbook
    params: dict[str, str]
    notes: tuple[str, ...] = field(default_factory=tuple)


def match_runbook(library: RunbookLibrary, labels: dict[str, str]) -> Match | None:
    best: tuple[int, Runbook] | None = None
    for book in library.all():
        for matcher in book.alerts:
            if all(labels.get(key) == value for key, value in matcher.items()):
                if best is None or len(matcher) > best[0]:
                    best = (len(matcher), book)
    if best is None:
        return None
    book = best[1]
    notes: list[str] = []
    params = {}
    for name in book.params:
        if name in labels:
            if _SAFE.fullmatch(labels[name]):
                params[name] = labels[name]
            else:  # a label becomes part of command text: one plain word, or it could add options to a step
                notes.append(f"the label {name} is not one plain word; the runbook's default is used")
    try:
        rendered = library.render(book.name, params)
    except RunbookError as exc:
        notes.append(f"the alert's labels could not fill the runbook's parameters ({exc}); defaults used")
        params = {}
        rendered = library.render(book.name)
    return Match(book, rendered, params, tuple(notes))

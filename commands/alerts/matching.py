"""Which runbook answers an alert: the runbooks' ``alerts:`` front matter against the alert's labels.

Usage::

    found = match_runbook(library, labels)         # Match or None
    found.book.name, found.params, found.rendered.steps, found.notes

A matcher is a set of labels (a bare name is ``{alertname: name}``); it matches when the
alert has every one of them with that value. The most specific match wins (most labels;
ties go to the runbook named first). The alert's labels that name a runbook parameter fill
it (``queue=step`` renders the runbook for ``step``); a value the runbook refuses (too long,
control characters) falls back to the parameter's default, with a note saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.core.runbooks import RenderedRunbook, Runbook, RunbookError, RunbookLibrary

__all__ = ["Match", "match_runbook"]


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
    params = {name: labels[name] for name in book.params if name in labels}
    notes: list[str] = []
    try:
        rendered = library.render(book.name, params)
    except RunbookError as exc:
        notes.append(f"the alert's labels could not fill the runbook's parameters ({exc}); defaults used")
        params = {}
        rendered = library.render(book.name)
    return Match(book, rendered, params, tuple(notes))

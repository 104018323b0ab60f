"""The redactor's quick check (``QUICK_CHECK``) never changes what it masks.

``Redactor.text`` runs its secret patterns only when the text holds something one of them needs
(``://``, a Slack token prefix, ``bearer``, or a keyword of the last pattern: ``pass``, ``pwd``,
``token``, ``secret``, ``key``). A new pattern that needs something else would then be skipped silently; here every pattern's own matches, alone and mixed with prose, are
redacted exactly as running every pattern unconditionally would.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from bot.core.markup import Mrkdwn
from bot.core.redact import CLEAN_TEXTS, QUICK_CHECK, PATTERNS, Redactor


def every_pattern(value: str) -> str:
    for pattern, replacement in PATTERNS:
        value = pattern.sub(replacement, value)
    return value


PROSE = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@pytest.mark.parametrize("pattern", [p for p, _ in PATTERNS], ids=lambda p: p.pattern[:40])
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_whatever_a_pattern_matches_passes_the_quick_check(pattern, data):
    match = data.draw(st.from_regex(pattern, fullmatch=True))
    text = data.draw(PROSE) + match + data.draw(PROSE)
    assert QUICK_CHECK.search(text), f"{pattern.pattern!r} matches {match!r}, which the quick check lets through"
    assert Redactor().text(text) == every_pattern(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(PROSE, *[st.from_regex(p, fullmatch=True) for p, _ in PATTERNS]), max_size=6))
def test_mixed_text_is_redacted_as_without_the_quick_check(parts):
    text = " ".join(parts)
    assert Redactor().text(text) == every_pattern(text)


SHARED = Redactor(known=["hunter2-known-secret"])  # one redactor for every example: its memory of clean texts fills


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(PROSE, st.just("hunter2-known-secret"),
                          *[st.from_regex(p, fullmatch=True) for p, _ in PATTERNS]), max_size=6))
def test_a_redactor_that_remembers_clean_texts_answers_every_text_as_a_new_one_would(parts):
    text = " ".join(parts)
    fresh = Redactor(known=["hunter2-known-secret"]).text(text)
    assert SHARED.text(text) == fresh and SHARED.text(text) == fresh  # first time, and remembered
    assert "hunter2-known-secret" not in SHARED.text(text)


def test_remembered_texts_keep_their_type_and_many_texts_do_not_stop_it_working():
    redactor = Redactor()
    marked = Mrkdwn("*deploy* finished")
    for _ in range(2):
        assert type(redactor.text(marked)) is Mrkdwn and redactor.text(marked) == marked
        assert redactor.text(3) == "3"  # not a string: its text, as before
    for n in range(CLEAN_TEXTS * 2 + 5):  # more texts than it remembers
        assert redactor.text(f"line {n}") == f"line {n}"
    assert redactor.text("password: s3cr3t-value") == "password: [redacted]"
    assert redactor.text("password: s3cr3t-value") == "password: [redacted]"

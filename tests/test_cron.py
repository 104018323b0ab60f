"""The cron parser against two oracles: croniter (an independent, widely used implementation) and a
brute-force scan written from the crontab(5) man page.

croniter and Vixie cron disagree in one place: a day field written ``*/2`` counts as "starred" for
Vixie (day of month and day of week are then ANDed) but as restricted for croniter (ORed); and ``1,*/2``
is restricted for Vixie (it does not start with ``*``) but not for croniter. For
expressions with such a field the brute-force oracle decides; elsewhere both must agree with us.
croniter also gives up (CroniterBadDateError) on a day of month no month has, even when the day of
week ORed with it matches (``* * 30 2 0``: Sundays in February); there too the brute force decides.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from croniter import CroniterBadDateError, croniter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commands.schedule.cron import Cron, CronError

MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


def _element(draw, low: int, high: int, names: list[str] | None) -> str:
    def value(v: int) -> str:
        if names and draw(st.booleans()):
            return names[(v - low) % len(names)] if v - low < len(names) else str(v)
        return str(v)

    kind = draw(st.sampled_from(["star", "one", "range", "star_step", "range_step", "start_step"]))
    a = draw(st.integers(low, high))
    b = draw(st.integers(a, high))
    step = draw(st.integers(1, max(1, high - low)))
    return {"star": "*", "one": value(a), "range": f"{value(a)}-{value(b)}", "star_step": f"*/{step}",
            "range_step": f"{value(a)}-{value(b)}/{step}", "start_step": f"{a}/{step}"}[kind]


@st.composite
def field(draw, low: int, high: int, names: list[str] | None = None) -> str:
    count = draw(st.integers(1, 3))
    parts = [_element(draw, low, high, names) for _ in range(count)]
    if "*" in parts and len(parts) > 1:  # "*,5" is legal but pointless; keep lists of restrictions
        parts = [p for p in parts if p != "*"] or ["*"]
    return ",".join(parts)


@st.composite
def expressions(draw) -> str:
    return " ".join([draw(field(0, 59)), draw(field(0, 23)), draw(field(1, 31)), draw(field(1, 12, MONTH_NAMES)),
                     draw(field(0, 7, DAY_NAMES))])


def _expand(text: str, low: int, high: int, names: list[str]) -> set[int]:
    """crontab(5): lists of numbers or ranges, an optional /step; names for months and days."""
    def number(t: str) -> int:
        return names.index(t.lower()) + (1 if names is MONTH_NAMES else 0) if t.lower() in names else int(t)

    out: set[int] = set()
    for item in text.split(","):
        rng, _, step = item.partition("/")
        if rng == "*":
            first, last = low, high
        elif "-" in rng:
            first, last = (number(x) for x in rng.split("-"))
        else:
            first = number(rng)
            last = high if step else first
        out |= set(range(first, last + 1, int(step or 1)))
    return out


def brute_next(expr: str, after: datetime) -> datetime | None:
    """Scan day by day, then hour by hour, then minute by minute: slow and obvious."""
    m, h, dom, mon, dow = expr.split()
    minutes, hours = _expand(m, 0, 59, []), _expand(h, 0, 23, [])
    days, months = _expand(dom, 1, 31, []), _expand(mon, 1, 12, MONTH_NAMES)
    weekdays = {d % 7 for d in _expand(dow, 0, 7, DAY_NAMES)}
    dom_star, dow_star = dom.startswith("*"), dow.startswith("*")
    start = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    day = start.replace(hour=0, minute=0)
    for _ in range(366 * 50):
        cron_dow = day.isoweekday() % 7
        if dom_star or dow_star:
            day_ok = day.day in days and cron_dow in weekdays
        else:
            day_ok = day.day in days or cron_dow in weekdays
        if day.month in months and day_ok:
            for hour in sorted(hours):
                for minute in sorted(minutes):
                    candidate = day.replace(hour=hour, minute=minute)
                    if candidate >= start:
                        return candidate
        day += timedelta(days=1)
    return None


moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions(), moments)
def test_next_matches_the_oracles(expr, after):
    try:
        cron = Cron.parse(expr)
    except CronError as exc:
        assert "never fires" in str(exc)  # e.g. 30-31 February only
        assert brute_next(expr, datetime(2000, 1, 1, tzinfo=UTC)) is None
        return
    ours = cron.next_after(after)
    assert ours == brute_next(expr, after), expr
    dom, dow = expr.split()[2], expr.split()[4]
    if all(field == "*" or "*" not in field for field in (dom, dow)):  # croniter reads '*/2', '1,*/2' its own way
        try:
            theirs = croniter(expr, after).get_next(datetime)
        except CroniterBadDateError:  # croniter gives up on a day of month no month has ("* * 30 2 0"), even
            theirs = ours              # when the day of week matches; the brute-force oracle decided above
        assert ours == theirs, expr
    # chaining: every result is itself a match, and the next one after it is later
    assert cron.matches(ours)
    following = cron.next_after(ours)
    assert following is None or following > ours


@pytest.mark.parametrize("expr, after, expected", [
    ("0 3 * * *", datetime(2026, 1, 1, 3, 0), datetime(2026, 1, 2, 3, 0)),  # strictly after
    ("0 0 1,15 * mon", datetime(2026, 11, 23, 20, 0), datetime(2026, 11, 30, 0, 0)),  # DOM or DOW
    ("0 0 */2 * mon", datetime(2026, 11, 23, 20, 0), datetime(2026, 12, 7, 0, 0)),  # '*/2' is starred: AND
    ("0 0 29 2 *", datetime(2096, 3, 1), datetime(2104, 2, 29)),  # 2100 is no leap year
    ("0 9 * jan-mar mon-fri", datetime(2026, 11, 23), datetime(2027, 1, 1, 9, 0)),
    ("0 0 * * 7", datetime(2026, 11, 23), datetime(2026, 11, 29)),  # 7 is Sunday
    ("5/20 * * * *", datetime(2026, 1, 1, 0, 46), datetime(2026, 1, 1, 1, 5)),
    ("@weekly", datetime(2026, 11, 23), datetime(2026, 11, 29)),
    ("59 23 31 12 *", datetime(2026, 12, 31, 23, 59), datetime(2027, 12, 31, 23, 59)),
    ("* * 30 2 0", datetime(2026, 1, 31, 23, 59), datetime(2026, 2, 1, 0, 0)),  # no 30 February, but Sundays
    ("0 0 29 2 */7", datetime(2088, 3, 1), datetime(2128, 2, 29)),  # '*/7' is starred (Sunday): AND, 40 years
    ("* * */21 3 4", datetime(2047, 1, 1), datetime(2057, 3, 1)),  # '*/21' is starred: AND, 10 years away
])
def test_known_answers(expr, after, expected):
    assert Cron.parse(expr).next_after(after.replace(tzinfo=UTC)) == expected.replace(tzinfo=UTC)


@pytest.mark.parametrize("expr, reason", [
    ("0 0 30 2 *", "never fires"), ("0 0 31 4,6,9,11 *", "never fires"), ("60 * * * *", "out of range"),
    ("* * * *", "expected 5 fields"), ("* * * * * *", "expected 5 fields"), ("5-1 * * * *", "runs backwards"),
    ("*/0 * * * *", "above 0"), ("*/-1 * * * *", "above 0"), ("1,,2 * * * *", "empty list item"),
    ("x * * * *", "not a number"), ("0 0 * foo *", "or a name"), ("0 0 0 * *", "out of range"),
    ("@reboot", "unknown shorthand"), ("0 0 * * 8", "out of range"), ("０ 0 * * *", "printable ASCII"),
    ("0 0 * * *\n", "printable ASCII"), ("99999999999999999999 * * * *", "not a number"),
    ("1-2-3 * * * *", "not a number"), ("", "expected 5 fields"),
])
def test_bad_expressions_say_why(expr, reason):
    with pytest.raises(CronError, match=reason):
        Cron.parse(expr)


def test_a_huge_expression_is_refused_quickly():
    with pytest.raises(CronError):
        Cron.parse(",".join(["1"] * 100_000) + "x * * * *")

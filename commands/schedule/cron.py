"""Five-field cron expressions, read as Vixie cron reads them, in UTC.

Usage::

    cron = Cron.parse("0 3 * * *")            # CronError with a short reason if it is not valid
    cron.next_after(datetime(2026, 1, 1, 3, 0, tzinfo=UTC))   # 2026-01-02 03:00 UTC: strictly after

Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or jan-dec), day of week
(0-7 or sun-sat; 0 and 7 are Sunday). Each is a comma-separated list of ``*``, ``N``, ``N-M``,
each optionally ``/step``; ``N/step`` means ``N-max/step`` (as cronie reads it). Names are
case-insensitive and work in ranges (``mon-fri``). ``@hourly``, ``@daily`` (``@midnight``),
``@weekly``, ``@monthly`` and ``@yearly`` (``@annually``) are shorthands.

Day of month and day of week: when both are restricted (neither starts with ``*``) a day
matches if *either* does (``0 0 1,15 * mon``: the 1st, the 15th and every Monday), as in
Vixie cron; when one starts with ``*`` only the other restricts. An expression that can never
fire (``0 0 30 2 *``) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["Cron", "CronError"]

MONTHS = {name: n for n, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
DAYS = {name: n for n, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
          "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
# (label, low, high, names)
FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}), ("month", 1, 12, MONTHS),
          ("day of week", 0, 7, DAYS))
SEARCH_YEARS = 50  # a date on a given weekday recurs within 40 years (29 February on a Monday, across 2100)


class CronError(ValueError):
    """The expression is not valid cron; the message says which field and why."""


def _number(text: str, label: str, low: int, high: int, names: dict[str, int]) -> int:
    value = names.get(text.lower()) if names else None
    if value is None:
        if not text.isdigit() or len(text) > 4:  # isdigit: no sign, no spaces; ASCII checked by the caller
            raise CronError(f"{label}: {text!r} is not a number" + (f" or a name ({', '.join(names)})" if names
                                                                       else ""))
        value = int(text)
    if not low <= value <= high:
        raise CronError(f"{label}: {value} is out of range {low}-{high}")
    return value


def _field(text: str, label: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{label}: empty list item in {text!r}")
        body, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0 or len(step_text) > 4:
                raise CronError(f"{label}: step {step_text!r} must be a whole number above 0")
            step = int(step_text)
        if body == "*":
            start, end = low, high
        elif "-" in body:
            first, _, last = body.partition("-")
            start, end = _number(first, label, low, high, names), _number(last, label, low, high, names)
            if start > end:
                raise CronError(f"{label}: range {body!r} runs backwards")
        else:
            start = _number(body, label, low, high, names)
            end = high if slash else start
        values.update(range(start, end + 1, step))
    return values


@dataclass(frozen=True)
class Cron:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool  # the day-of-month field does not start with '*'
    weekdays_restricted: bool

    @classmethod
    def parse(cls, text: str) -> "Cron":
        if not isinstance(text, str) or not text.isascii() or not text.isprintable():
            raise CronError("a cron expression is printable ASCII, e.g. \"0 3 * * *\"")
        spec = MACROS.get(text.strip().lower(), text) if text.strip().startswith("@") else text
        if spec.strip().startswith("@"):
            raise CronError(f"unknown shorthand {text.strip()!r} (known: {', '.join(MACROS)})")
        parts = spec.split()
        if len(parts) != 5:
            raise CronError(f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}")
        minutes, hours, days, months, weekdays = (
            _field(part, *spec_of) for part, spec_of in zip(parts, FIELDS))
        weekdays = {0 if day == 7 else day for day in weekdays}
        cron = cls(text.strip(), frozenset(minutes), frozenset(hours), frozenset(days), frozenset(months),
                   frozenset(weekdays), not parts[2].startswith("*"), not parts[4].startswith("*"))
        if cron.next_after(datetime(2000, 1, 1, tzinfo=UTC)) is None:
            raise CronError(f"{text.strip()!r} never fires (no such day)")
        return cron

    def day_matches(self, when: datetime) -> bool:
        in_month = when.day in self.days
        in_week = (when.weekday() + 1) % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_month or in_week
        return in_month and in_week

    def matches(self, when: datetime) -> bool:
        return (when.minute in self.minutes and when.hour in self.hours and when.month in self.months
                and self.day_matches(when))

    def next_after(self, when: datetime) -> datetime | None:
        """The first minute strictly after ``when`` (aware, any zone; answered in UTC) that matches; None if none."""
        t = when.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = t.replace(year=min(t.year + SEARCH_YEARS, 9999), month=1, day=1, hour=0, minute=0)
        while t < limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
            elif not self.day_matches(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t += timedelta(minutes=1)
            else:
                return t
        return None

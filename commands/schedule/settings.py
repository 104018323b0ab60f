"""``schedules:``: read-only commands run on a timer, and the checks that keep them read-only.

Usage (app.yaml)::

    schedules:
      - {name: dead letters, every: 5m, run: dlq status}
      - {cron: "0 3 * * *", run: audit verify --all --since-snapshot, post: always}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from bot.config.types import ConfigModel, Duration
from commands.schedule.cron import Cron

__all__ = ["MIN_EVERY", "ScheduleSettings", "check_schedules", "schedule_actor_where"]

MIN_EVERY = 10.0  # workers look for due schedules every 5 s; anything tighter would only skip runs


def _cron(text: str) -> str:
    Cron.parse(text)  # CronError is a ValueError: reported at the `cron` key's line
    return text.strip()


def _printable(text: str) -> str:
    if not text.strip() or not text.isprintable():
        raise ValueError("must be printable text on one line")
    return text.strip()


class ScheduleSettings(ConfigModel):
    """One scheduled check: ``every`` or ``cron`` (UTC), the command it runs, and when its result is posted."""

    name: Annotated[str, Field(max_length=80), AfterValidator(_printable)] | None = None
    every: Duration | None = None
    cron: Annotated[str, AfterValidator(_cron)] | None = None
    run: Annotated[str, Field(max_length=500), AfterValidator(_printable)]
    post: Literal["on_change", "always", "never"] = "on_change"

    @model_validator(mode="after")
    def _one_timer(self) -> "ScheduleSettings":
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of `every` (a duration, e.g. 5m) or `cron` (e.g. \"0 3 * * *\")")
        if self.every is not None and self.every < MIN_EVERY:
            raise ValueError(f"every: at least {MIN_EVERY:.0f}s")
        return self

    @property
    def key(self) -> str:
        """What names it on /metrics, in `schedule list` and in the state tables: ``name``, else the command."""
        return self.name or self.run

    @property
    def spec(self) -> str:
        """Its timing and command: when this changes, the next run is computed afresh."""
        return f"every {self.every:g}s: {self.run}" if self.every is not None else f"cron {self.cron}: {self.run}"


def schedule_actor_where(settings):
    """Who a schedule runs as (a system actor holding no role) and where (the incident channel)."""
    from bot.core.invocation import Actor, Where

    channel = (settings.slack.incident_channel or "schedule").lstrip("#")
    return Actor("opsbot:schedule", team="opsbot", system=True), Where(channel=channel, channel_name=channel)


def check_schedules(settings) -> None:
    """Names are unique; each command exists, parses, and is read-only: neither guarded nor in need of a role."""
    if not settings.schedules:
        return
    from bot.core.parser import UsageError, parse
    from bot.runtime.factory import policy_for
    from bot.core.group import registry_of
    from commands import GROUPS

    groups = type(settings)._groups or tuple(GROUPS)  # the groups this configuration was loaded with
    registry = registry_of(groups)
    try:
        policy = policy_for(settings, registry, groups)
    except Exception:  # a bad permissions section is reported on its own
        policy = None
    seen: set[str] = set()
    for index, schedule in enumerate(settings.schedules):
        where = f"schedules[{index}]"
        if schedule.key in seen:
            raise ValueError(f"{where}.name: two schedules are named {schedule.key!r} (give one a `name`)")
        seen.add(schedule.key)
        try:
            parsed = parse(schedule.run, registry, settings.slack.command)
        except UsageError as exc:
            raise ValueError(f"{where}.run: {str(exc).splitlines()[0]}") from None
        command = parsed.command
        if command.guarded:
            raise ValueError(f"{where}.run: `{command.name}` is guarded (it changes production): a schedule runs"
                             " read-only commands only; run it by hand, with its preview and Confirm")
        if policy is not None:
            channels, _ = policy.channels_for(parsed)
            _, where_run = schedule_actor_where(settings)
            if channels is not None and not any(where_run.is_channel(c) for c in channels):
                raise ValueError(f"{where}.run: `{command.name}` may only run in {', '.join(channels)} (channels:),"
                                 f" and a schedule runs in the incident channel ({settings.slack.incident_channel})")
        role = policy.role_for(parsed)[0] if policy is not None else command.role
        if role is not None:
            raise ValueError(f"{where}.run: `{command.name}` needs the {role!r} role (it changes state or moves data"
                             " out): a schedule runs as opsbot:schedule, which holds no role")

"""Rate limits held in Redis, so every replica counts together.

Usage::

    limiter = RateLimiter(redis_client, "opsbot:", settings.limits)
    reason = limiter.check(actor, command)      # None, or the reply to show ("Slow down: ...")

Fixed windows per user (every command), per user for guarded commands (tighter),
and per command for everyone together. The terminal's local administrator is not
limited: the CLI is the way in when Slack is down.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import redis

from bot.config.settings import LimitSettings
from bot.core.durations import format_duration
from bot.core.invocation import Actor
from bot.core.registry import Command

__all__ = ["RateLimiter"]

log = logging.getLogger("opsbot.ratelimit")

# Every rule's window in one round trip, in order: each counts the command until one is over its limit
# (that one answers; the rules after it do not count it).
_HIT = """
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, ARGV[2 * i - 1]) end
  if n > tonumber(ARGV[2 * i]) then return {i, redis.call('PTTL', key)} end
end
return {0, 0}
"""


class RateLimiter:
    def __init__(self, client: redis.Redis, prefix: str, limits: LimitSettings,
                 clock: Callable[[], float] = time.time):
        self.client = client
        self.prefix = prefix
        self.limits = limits
        self.clock = clock
        self._hit = client.register_script(_HIT)

    def check(self, actor: Actor, command: Command) -> str | None:
        if actor.local_admin or actor.system:  # the terminal's operator; the bot's own schedules (bounded by config)
            return None
        rules = [("per_user", f"user:{actor.user_id}", "your commands"),
                 ("per_command", f"command:{command.name}", f"`{command.name}` for everyone")]
        if command.guarded:
            rules.insert(1, ("guarded_per_user", f"guarded:{actor.user_id}", "your guarded commands"))
        now = self.clock()
        keys, args, limited = [], [], []
        for rule, scope, what in rules:
            count, period = self.limits.parsed(rule)
            if count == 0:
                continue
            keys.append(f"{self.prefix}rate:{rule}:{scope}:{int(now // period)}")
            args += [int(period * 1000), count]
            limited.append((what, count, period))
        if not keys:
            return None
        try:
            over, ttl_ms = self._hit(keys=keys, args=args)
        except redis.RedisError as exc:  # counting is down: do not block on-call for it
            log.warning("rate limits unavailable: %s", exc)
            return None
        if not over:
            return None
        what, count, period = limited[over - 1]
        wait = max(math.ceil(ttl_ms / 1000), 1)
        return f"Slow down: {what} are limited to {count} per {format_duration(period)}. Try again in {wait}s."

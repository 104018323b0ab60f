"""Guarded commands registered by the tests, to exercise the guard with a real side effect in Redis.

``test bump [--by N]`` adds N to ``test:counter`` (plan: the counter's current
value). ``test bump2`` is the same, two-person. Every execution also increments
``test:executions``, so "executed exactly once" is a number to assert.
"""

from __future__ import annotations

import time

from bot.core.invocation import Invocation
from bot.core.registry import Arg, Command, Guard, positive_int
from bot.core.result import Plan, Result, Section

COUNTER, EXECUTIONS = "test:counter", "test:executions"


def executions(client) -> int:
    """How many times a test command has executed (``client``: the Redis holding the counter)."""
    return int(client.get(EXECUTIONS) or 0)


def plan_bump(inv: Invocation) -> Plan:
    current = int(inv.targets.redis("main").get(COUNTER) or 0)
    by = inv.args["by"]
    return Plan(f"add {by} to the counter ({current} → {current + by})", data={"from": current, "by": by},
                sections=[Section(fields=(("counter now", str(current)), ("after", str(current + by))))])


def execute_bump(inv: Invocation, plan: Plan) -> Result:
    client = inv.targets.redis("main")
    executions = client.incr(EXECUTIONS)
    time.sleep(inv.args["slow"])
    value = client.incrby(COUNTER, plan.data["by"])
    return Result.ok(f"counter is now {value}", data={"counter": value, "executions": executions})


ARGS = (
    Arg("by", "how much to add", type=positive_int, default=1),
    Arg("slow", "seconds to take executing", type=float, default=0.0),
)

COMMANDS = [
    Command("test bump", "Add to the test counter", args=ARGS, role="oncall",
            guard=Guard(plan=plan_bump, execute=execute_bump)),
    Command("test bump2", "Add to the test counter, two-person", args=ARGS, role="oncall",
            guard=Guard(plan=plan_bump, execute=execute_bump, two_person=True)),
]

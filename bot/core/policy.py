"""Who may run which command, and where: configuration with safe defaults.

Usage::

    policy = Policy(registry, permissions={"audit export": "admin"}, channels={"audit export": ["G0SEC"]},
                    defaults={"dlq requeue jobs": "oncall"})
    policy.role_for(parsed)            # ('admin', Rule(...)): the role this request needs, and the rule that says so
    policy.channels_for(parsed)        # ['G0SEC'], or None: anywhere
    policy.describe(command)           # ['role `admin` (app.yaml: permissions "audit export")', ...] for help

A rule names a command by its words, optionally followed by the values of its
positional arguments (``dlq requeue jobs``); a last word ``*`` matches
anything (``dlq *``). A rule in ``app.yaml`` beats every default; among rules of
one source the most specific decides (more words named, then no ``*``). The
defaults come from the command declarations (every command that changes
something, pages people or moves data out names a role) and from the groups
(a command whose argument pages people). ``anyone`` lets everyone in the
workspace run it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bot.core.parser import Parsed
from bot.core.registry import Command, Registry

__all__ = ["ANYONE", "Policy", "PolicyError", "Rule"]

ANYONE = "anyone"


class PolicyError(ValueError):
    """A rule names no command, or a role that does not exist."""


@dataclass(frozen=True)
class Rule:
    words: tuple[str, ...]
    value: object
    source: str  # "app.yaml" or "default"

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def matches(self, words: tuple[str, ...]) -> bool:
        if self.words and self.words[-1] == "*":
            head = self.words[:-1]
            return words[: len(head)] == head
        return words[: len(self.words)] == self.words

    @property
    def rank(self) -> tuple[bool, int, bool]:
        wild = self.words[-1:] == ("*",)
        return self.source == "app.yaml", len(self.words) - wild, not wild


def words_of(parsed: Parsed) -> tuple[str, ...]:
    """The command's words and then its positional values, as a rule sees them."""
    words = list(parsed.command.words)
    for arg in parsed.command.args:
        value = parsed.args.get(arg.name)
        if arg.positional and value not in (None, ""):
            words += str(value).split()
    return tuple(words)


class Policy:
    def __init__(self, registry: Registry, *, permissions: Mapping[str, str] | None = None,
                 channels: Mapping[str, Iterable[str]] | None = None, defaults: Mapping[str, str] | None = None,
                 roles: Iterable[str] = ()):
        known_roles = set(roles) | {ANYONE}
        self.registry = registry
        self.roles = self._rules(registry, {c.name: c.role or ANYONE for c in registry}, "default", None)
        self.roles += self._rules(registry, defaults or {}, "default", None)
        self.roles += self._rules(registry, permissions or {}, "app.yaml", known_roles)
        self.channels = self._rules(registry, {k: list(v) for k, v in (channels or {}).items()}, "app.yaml", None)

    @staticmethod
    def _rules(registry: Registry, table: Mapping[str, object], source: str, known_roles: set[str] | None) -> list[Rule]:
        rules = []
        for pattern, value in table.items():
            words = tuple(pattern.split())
            if not words:
                raise PolicyError(f"{pattern!r}: an empty rule")
            if "*" in words[:-1]:
                raise PolicyError(f"{pattern!r}: `*` may only be the last word")
            group_only = words[0] in registry.groups() and words[1:] in ((), ("*",))
            if words != ("*",) and registry.match(words)[0] is None and not group_only:
                raise PolicyError(f"{pattern!r} names no command (`/ops help` lists them)")
            if known_roles is not None and value not in known_roles:
                raise PolicyError(f"{pattern!r}: unknown role {value!r} (roles: {', '.join(sorted(known_roles))})")
            rules.append(Rule(words, value, source))
        return rules

    @staticmethod
    def _decide(rules: list[Rule], words: tuple[str, ...]) -> Rule | None:
        matching = [rule for rule in rules if rule.matches(words)]
        return max(matching, key=lambda rule: rule.rank, default=None)

    def role_for(self, parsed: Parsed) -> tuple[str | None, Rule | None]:
        """The role the request needs (None: anyone may run it) and the rule that decided."""
        rule = self._decide(self.roles, words_of(parsed))
        role = rule.value if rule else parsed.command.role
        return (None if role == ANYONE else role), rule

    def channels_for(self, parsed: Parsed) -> tuple[list[str] | None, Rule | None]:
        """Where the request may run (channel ids or #names), or None for anywhere."""
        rule = self._decide(self.channels, words_of(parsed))
        return (list(rule.value) if rule else None), rule

    def describe(self, command: Command) -> list[str]:
        """Who may run ``command`` and where, one line per distinct answer (for ``help``)."""
        lines = []
        for kind, rules in (("role", self.roles), ("channels", self.channels)):
            base = self._decide(rules, command.words)
            if base is not None:
                lines.append(_line(kind, base, ""))
            for rule in rules:  # rules about some of its arguments (dlq requeue jobs)
                extra = rule.words[len(command.words):]
                if rule.words[: len(command.words)] != command.words or not extra or extra == ("*",):
                    continue
                decided = self._decide(rules, rule.words)
                if decided is rule and (base is None or rule.value != base.value):
                    lines.append(_line(kind, rule, " ".join(extra)))
        return lines


def _line(kind: str, rule: Rule, scope: str) -> str:
    if kind == "role":
        what = "anyone in the workspace" if rule.value == ANYONE else f"role `{rule.value}`"
    else:
        what = "only in " + ", ".join(str(c) for c in rule.value)
    origin = "default" if rule.source == "default" else \
        f'app.yaml {"permissions" if kind == "role" else "channels"}: "{rule.text}"'
    return f"{f'with {scope}: ' if scope else ''}{what} ({origin})"

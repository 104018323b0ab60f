"""Shell-like parsing of ``/ops`` command text against the registry.

Usage::

    parsed = parse('dlq peek jobs --type "send email" limit=5', registry)
    parsed.command.name, parsed.args["type"], parsed.args["limit"]
    # ('dlq peek', 'send email', 5)

Quotes work (Slack's curly quotes too); options are ``--name value``,
``--name=value``, ``--flag`` or ``name=value``; ``--`` ends the options. Any
bad input raises :class:`UsageError`, whose message is the reply to show.
Nothing else ever escapes :func:`parse`.
"""

from __future__ import annotations

import difflib
import re
import shlex
from dataclasses import dataclass
from typing import Any

from bot.core.registry import Arg, Command, Registry

__all__ = ["Parsed", "UsageError", "parse", "tokenize", "MAX_TEXT"]

MAX_TEXT = 4000
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'", "\u00a0": " "})
_KEY_VALUE = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)=(.*)$", re.S)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # tab, newline and CR are text
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class UsageError(Exception):
    """Bad command text; ``str(error)`` is a short reply including the usage line."""

    def __init__(self, message: str, command: Command | None = None):
        super().__init__(message)
        self.command = command


@dataclass(frozen=True)
class Parsed:
    command: Command
    args: dict[str, Any]
    text: str
    context: str | None = None  # the value of the registry's global context option (a group's ``--name VALUE``)

    def to_dict(self) -> dict[str, Any]:
        """JSON for a queued job, so the worker runs what the ack parsed (see :meth:`from_dict`)."""
        return {"command": self.command.name, "args": self.args, "text": self.text, "context": self.context}

    @classmethod
    def from_dict(cls, data: dict[str, Any], registry: Registry) -> "Parsed | None":
        """The parsed command again; None if ``registry`` no longer has it (parse the text instead)."""
        command = registry.get(str(data.get("command", "")))
        if command is None or not isinstance(data.get("args"), dict):
            return None
        return cls(command, data["args"], str(data.get("text", "")), data.get("context"))

    def canonical(self) -> str:
        """The command text in a normal form (for the action log and fingerprints); parses back the same."""
        positional, options, dashed = [], [], False
        for arg in self.command.args:
            value = self.args.get(arg.name)
            # `is`, not `in`: 0 == False, and `--keep 0` must survive the round trip.
            if value is None or value is False or value == [] or value == {} or (
                    value == arg.default and type(value) is type(arg.default)):
                continue
            if arg.params:
                options += [shlex.quote(f"{k}={v}") for k, v in sorted(value.items())]
            elif arg.flag:
                options.append(arg.option)
            elif arg.repeat:
                for item in value:
                    options += [arg.option, shlex.quote(str(item))]
            elif arg.positional:
                positional.append(shlex.quote(str(value)))
                dashed = dashed or str(value).startswith("-")
            else:
                options += [arg.option, shlex.quote(str(value))]
        if dashed:  # only `--` keeps a value like "--type" from reading as an option
            return " ".join([self.command.name, *options, "--", *positional])
        return " ".join([self.command.name, *positional, *options])


def tokenize(text: str) -> list[str]:
    """Split like a POSIX shell, without comments (``#incidents`` is a word)."""
    if len(text) > MAX_TEXT:
        raise UsageError(f"command text is too long ({len(text)} characters, at most {MAX_TEXT})")
    bad = _CONTROL.search(text)
    if bad:
        raise UsageError(f"the command text contains a control character (U+{ord(bad.group()):04X}); retype it")
    normalized = text.translate(_QUOTES)
    try:
        return shlex.split(normalized, comments=False, posix=True)
    except ValueError as exc:
        raise UsageError(f"cannot read the command: {str(exc).lower()} (check your quotes)") from None


def _take_global(tokens: list[str], option: Arg | None) -> tuple[list[str], str | None]:
    """The global ``--name VALUE`` (or ``--name=VALUE``) as a word of its own, never inside a quoted argument."""
    if option is None:
        return tokens, None
    flag = option.option
    rest, found, index = [], [], 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token == "--":  # everything after it is an argument
            rest += tokens[index - 1:]
            break
        if token == flag:
            if index >= len(tokens):
                raise UsageError(f"`{flag}` needs {option.help}.")  # the option's help says what, with an example
            found.append(tokens[index])
            index += 1
        elif token.startswith(flag + "="):
            found.append(token.partition("=")[2])
        else:
            rest.append(token)
    if len(found) > 1:
        raise UsageError(f"`{flag}` given twice.")
    return rest, (found[0] if found else None)


def parse(text: str, registry: Registry, prefix: str = "/ops") -> Parsed:
    tokens, context = _take_global(tokenize(text), registry.context_option)
    if not tokens:
        tokens = ["help"]
    command, used = registry.match(tokens)
    if command is None:
        raise UsageError(_unknown(tokens, registry, prefix))
    binder = _Binder(command, prefix)
    return Parsed(command, binder.bind(tokens[used:]), text, context)


def _unknown(tokens: list[str], registry: Registry, prefix: str) -> str:
    groups = registry.groups()
    first = tokens[0]
    if first in groups:
        subs = ", ".join(c.words[1] for c in groups[first] if len(c.words) > 1)
        given = f" {tokens[1]!r} is not one of them." if len(tokens) > 1 else ""
        return f"`{prefix} {first}` needs a subcommand: {subs}.{given} Try `{prefix} help {first}`."
    names = sorted({c.name for c in registry} | set(groups))
    close = difflib.get_close_matches(" ".join(tokens[:2]), names, n=3) or difflib.get_close_matches(first, names, n=3)
    hint = f" Did you mean {', '.join(f'`{n}`' for n in close)}?" if close else ""
    return f"Unknown command `{first}`.{hint} `{prefix} help` lists every command."


class _Binder:
    def __init__(self, command: Command, prefix: str):
        self.command = command
        self.prefix = prefix
        self.by_key = {}
        for arg in command.args:
            self.by_key[arg.name] = arg
            self.by_key[arg.name.replace("_", "-")] = arg

    def fail(self, message: str) -> UsageError:
        return UsageError(f"{message}\nUsage: `{self.command.usage(self.prefix)}`", self.command)

    def bind(self, tokens: list[str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        positionals: list[str] = []
        params: dict[str, str] = {}
        params_arg = next((arg for arg in self.command.args if arg.params), None)
        index, options_done = 0, False
        while index < len(tokens):
            token = tokens[index]
            index += 1
            if options_done:
                positionals.append(token)
            elif token == "--":
                options_done = True
            elif token.startswith("--") and len(token) > 2:
                key, eq, inline = token[2:].partition("=")
                arg = self.by_key.get(key)
                if arg is None or arg.positional or arg.params:
                    raise self.fail(f"Unknown option `--{key}`.{self._suggest(key)}")
                if arg.flag:
                    self._store(values, arg, inline if eq else "true")
                elif eq:
                    self._store(values, arg, inline)
                elif index < len(tokens):
                    self._store(values, arg, tokens[index])
                    index += 1
                else:
                    raise self.fail(f"`{arg.option}` needs a value.")
            elif (match := _KEY_VALUE.match(token)) and (match.group(1) in self.by_key or params_arg):
                key, value = match.groups()
                arg = self.by_key.get(key)
                if arg is not None and not arg.params:
                    self._store(values, arg, value)
                else:
                    params[key] = value
            else:
                positionals.append(token)
        self._bind_positionals(values, positionals)
        if params_arg is not None:
            values[params_arg.name] = params
        return self._finish(values)

    def _store(self, values: dict, arg: Arg, text: str) -> None:
        value = self._convert(arg, text)
        if arg.repeat:
            values.setdefault(arg.name, []).append(value)
        elif arg.name in values and not arg.positional:
            raise self.fail(f"`{arg.option}` given twice.")
        else:
            values[arg.name] = value

    def _convert(self, arg: Arg, text: str) -> Any:
        if arg.flag:
            lowered = text.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise self.fail(f"`{arg.option}` is a flag: give it alone, or as {arg.name}=true/false.")
        try:
            return arg.type(text)
        except (ValueError, TypeError, OverflowError, ArithmeticError) as exc:
            label = arg.placeholder if arg.positional else arg.option
            raise self.fail(f"Bad value for `{label}`: {exc}") from None

    def _bind_positionals(self, values: dict, positionals: list[str]) -> None:
        slots = [arg for arg in self.command.args if arg.positional]
        for arg in slots:
            if arg.name in values:  # given as name=value
                continue
            if arg.rest:
                if positionals:
                    values[arg.name] = self._convert(arg, " ".join(positionals))
                    positionals = []
            elif positionals:
                values[arg.name] = self._convert(arg, positionals.pop(0))
        if positionals:
            extra = " ".join(shlex.quote(p) for p in positionals)
            raise self.fail(f"Unexpected argument {extra}.")

    def _finish(self, values: dict) -> dict[str, Any]:
        missing = [arg for arg in self.command.args if arg.required and arg.name not in values]
        if missing:
            names = ", ".join(f"`{a.placeholder if a.positional else a.option}`" for a in missing)
            raise self.fail(f"Missing {names}.")
        for arg in self.command.args:
            if arg.name not in values:
                values[arg.name] = [] if arg.repeat else ({} if arg.params else (False if arg.flag else arg.default))
        return values

    def _suggest(self, key: str) -> str:
        options = [arg.name.replace("_", "-") for arg in self.command.args if not arg.positional and not arg.params]
        close = difflib.get_close_matches(key, options, n=1)
        return f" Did you mean `--{close[0]}`?" if close else ""

"""Load app.yaml into a settings model: environment references, the secrets rule, every problem at once.

Usage::

    settings, env_secrets = load_model(Path("app.yaml"), Settings, os.environ, extra={"base_dir": "."})
    secret_values(settings)     # every secret value the configuration holds, for redaction by value

Each scalar may reference the environment (``${VAR}``, ``${VAR:-default}``). A value
substituted into a URL's user, password or query value is percent-encoded, and into
a key=value PostgreSQL connection string quoted, so any password works. Secrets
(keys named like password/token/secret/key, SecretStr settings, passwords and
secret query parameters in URLs) must be references with no literal text, not
even in a default. Every problem is collected, then all are raised together as
one ConfigError, one ``file:line: key: message`` line each.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args
from urllib.parse import quote

from pydantic import BaseModel, SecretStr, ValidationError

from bot.config import urls
from bot.config.envsubst import Reference, UnsetVariable, literal_text, parse, render
from bot.config.secretnames import is_secret_key
from bot.config.yamlload import Mapping as YamlMapping
from bot.config.yamlload import Scalar, YamlRefused, read_yaml, scalar_value, to_python

__all__ = ["MAX_REPORTED", "ConfigError", "load_model", "secret_values"]

MAX_REPORTED = 50
Model = TypeVar("Model", bound=BaseModel)


class ConfigError(Exception):
    """app.yaml is missing or invalid; the message is meant for the operator as is (one line per problem)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


def load_model(path: str | os.PathLike, model: type[Model], env: Mapping[str, str], *, extra: dict[str, Any],
               postgres_at: Callable[[tuple], bool] = lambda loc: False) -> tuple[Model, list[str]]:
    """The validated model, and the values of secret-named environment variables the file referenced.

    ``postgres_at(loc)`` tells which settings may be key=value connection strings.
    """
    path = Path(path)
    try:
        root = read_yaml(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror or exc}") from None
    except YamlRefused as exc:
        raise ConfigError(f"{path}:{exc.line}: {exc.message}" if exc.line else f"{path}: {exc.message}") from None
    if not isinstance(root, YamlMapping):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    loader = _Loader(path, env, _secret_fields(model), postgres_at)
    data, lines = to_python(root, loader.convert, loader.problem)
    data.update(extra)
    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        loader.validation_problems(exc, lines)
        result = None
    if loader.problems or result is None:
        raise loader.error()
    return result, list(dict.fromkeys(loader.env_secrets))


class _Loader:
    def __init__(self, path: Path, env: Mapping[str, str], secret_fields: set[str],
                 postgres_at: Callable[[tuple], bool]):
        self.path, self.env, self.secret_fields, self.postgres_at = path, env, secret_fields, postgres_at
        self.problems: list[tuple[int, tuple, str]] = []
        self.env_secrets: list[str] = []

    def problem(self, loc: tuple, line: int, message: str) -> None:
        self.problems.append((line, loc, message))

    def convert(self, node: Scalar, loc: tuple) -> Any:
        """One scalar: refuse literal secrets, expand references (encoded where they land), keep YAML typing."""
        raw = node.value
        key = next((part for part in reversed(loc) if isinstance(part, str)), "")
        secret = is_secret_key(key) or key in self.secret_fields
        postgres = self.postgres_at(loc)
        if "$" not in raw and "://" not in raw and not (postgres and "=" in raw):
            return self._plain(node, loc, secret)
        try:
            template = parse(raw)
        except ValueError as exc:
            return self.problem(loc, node.line, str(exc))
        if secret and literal_text(template).strip():
            default = any(isinstance(part, Reference) for part in template)
            self.problem(loc, node.line, "secrets must come from the environment; write ${VARIABLE} instead of a value"
                         + (" (a literal default is a value too)" if default else ""))
        for part in _templates(template):  # a default is a URL of its own: ${REDIS_URL:-redis://:pw@h} too
            messages = urls.literal_credentials(part) + (urls.literal_conninfo_password(part) if postgres else [])
            for message in dict.fromkeys(messages):
                self.problem(loc, node.line, message)
        encoders = _postgres_encoders if postgres else urls.encoders
        try:
            value = render(template, self.env, encoders)
        except UnsetVariable as exc:
            hint = f" (write ${{{exc.name}:-}} if it is optional)"
            return self.problem(loc, node.line, f"{exc}{hint}")
        self._remember_secrets(template)
        if "$" not in raw:
            return self._plain(node, loc, secret=False)
        return value if value != "" else None

    def _plain(self, node: Scalar, loc: tuple, secret: bool) -> Any:
        try:
            value = scalar_value(node)
        except ValueError as exc:
            return self.problem(loc, node.line, str(exc))
        if secret and value is not None and value != "":
            return self.problem(loc, node.line, "secrets must come from the environment; "
                                                "write ${VARIABLE} instead of a value")
        return value

    def _remember_secrets(self, template: tuple) -> None:
        for part in template:
            if isinstance(part, Reference):
                if is_secret_key(part.name) and self.env.get(part.name):
                    self.env_secrets.append(self.env[part.name])
                self._remember_secrets(part.default or ())

    def validation_problems(self, exc: ValidationError, lines: dict) -> None:
        reported = {loc for _line, loc, _message in self.problems}
        for error in exc.errors():
            loc = tuple(error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown setting (check the spelling)"
            elif error["type"] == "missing":
                message = "required setting is missing"
            elif not loc and re.match(r"^[\w.\[\]]+: ", message):
                key, _, message = message.partition(": ")
                loc = _parse_dotted(key)
            if error["type"] != "extra_forbidden" and any(loc[:end] in reported for end in range(len(loc) + 1)):
                continue  # already explained (an unset variable, a literal secret ...)
            probe = loc
            while probe and probe not in lines:
                probe = probe[:-1]
            self.problem(loc, lines.get(probe, 1), message)

    def error(self) -> ConfigError:
        ordered = sorted(dict.fromkeys(self.problems), key=lambda problem: problem[0])
        text = [f"{self.path}:{line}: {_dotted(loc)}: {message}" for line, loc, message in ordered]
        shown = text[:MAX_REPORTED]
        if len(text) > MAX_REPORTED:
            shown.append(f"{self.path}: ... and {len(text) - MAX_REPORTED} more problems")
        return ConfigError("\n".join(shown), text)


def _templates(template: tuple) -> list[tuple]:
    """The template and, recursively, every default in it."""
    found = [template]
    for part in template:
        if isinstance(part, Reference) and part.default:
            found += _templates(part.default)
    return found


def _postgres_encoders(template: tuple) -> dict:
    return {**urls.encoders(template), **urls.conninfo_encoders(template)}


def _secret_fields(model: type[BaseModel]) -> set[str]:
    """Names of SecretStr fields anywhere in the model (``page_url`` is a secret without saying so)."""
    names: set[str] = set()
    seen: set[type] = set()

    def visit(cls: type[BaseModel]) -> None:
        if cls in seen:
            return
        seen.add(cls)
        for name, info in cls.model_fields.items():
            for kind in _types(info.annotation):
                if kind is SecretStr:
                    names.add(info.alias or name)
                elif isinstance(kind, type) and issubclass(kind, BaseModel):
                    visit(kind)

    visit(model)
    return names


def _types(annotation: Any) -> list[Any]:
    args = get_args(annotation)
    return [annotation] if not args else [kind for arg in args for kind in _types(arg)]


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _parse_dotted(key: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.findall(r"[^.\[\]]+", key))


def secret_values(model: BaseModel, extra: list[str] = ()) -> list[str]:
    """Every secret value in ``model``: SecretStr fields, secret-keyed values, credentials inside URLs.

    Each value also comes percent-encoded when that differs (the form it takes inside a URL).
    """
    found: list[str] = list(extra)  # plain values: each is added percent-encoded too
    written: list[str] = []  # as written inside a URL

    def url_secrets(text: str) -> None:
        for as_written, decoded in urls.credentials(text):
            written.append(as_written)
            found.append(decoded)
        found.extend(urls.conninfo_credentials(text))

    def visit(value: Any, key: str) -> None:
        if isinstance(value, BaseModel):
            for name, info in type(value).model_fields.items():
                if not info.exclude:
                    visit(getattr(value, name), info.alias or name)
        elif isinstance(value, dict):
            for name, item in value.items():
                visit(item, str(name))
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item, key)
        elif isinstance(value, SecretStr):
            found.append(value.get_secret_value())
            url_secrets(value.get_secret_value())
        elif isinstance(value, str):
            if is_secret_key(key):
                found.append(value)
            url_secrets(value)
        elif value is not None and not isinstance(value, bool) and is_secret_key(key):
            found.append(str(value))

    visit(model, "")
    forms = [form for value in found if value for form in (value, quote(value, safe=""))]
    return list(dict.fromkeys(forms + [value for value in written if value]))

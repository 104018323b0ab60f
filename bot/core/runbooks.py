"""Runbook documents: Markdown with YAML front matter, rendered with Jinja2.

Usage::

    library = RunbookLibrary(Path("runbooks"), context={"incident_channel": "#incidents"})
    book = library.render("dead-letter-backlog", {"queue": "step"})
    book.title, [step.run for step in book.steps]

Front matter: ``title``, ``symptoms`` (list), ``severity`` (hint), ``commands``
(related ``/ops`` commands), ``params`` (name → default, itself a template) and ``alerts`` (the alerts
it answers: alert names, or label matchers such as ``{alertname: DeadLetterBacklog, queue: jobs}``).
A numbered step may carry an indented ``run: <ops command>`` line, which Slack
shows as a button that runs it. Templates use ``StrictUndefined``: a missing
value is an error, never an empty string.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Runbook", "RenderedRunbook", "Step", "RunbookLibrary", "RunbookError", "UnknownName"]

_FRONT = re.compile(r"\A---\n(.*?)\n---\n?(.*)\Z", re.S)
_STEP = re.compile(r"^(\d+)\.\s+(.*)$")
_RUN = re.compile(r"^\s+run:\s*(.+?)\s*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PARAM = 200


class RunbookError(Exception):
    """Unknown runbook, bad parameter or broken template; the message is for the user."""


class UnknownName(RunbookError):
    """The user named a runbook or parameter that does not exist, or gave a bad value (a usage error)."""


@dataclass(frozen=True)
class Runbook:
    name: str
    title: str
    symptoms: tuple[str, ...]
    severity: str
    commands: tuple[str, ...]
    params: dict[str, str]
    source: str
    path: Path
    alerts: tuple[dict[str, str], ...] = ()  # label matchers; a bare name is {"alertname": name}


@dataclass(frozen=True)
class Step:
    number: int
    text: str
    run: str | None = None


@dataclass(frozen=True)
class Part:
    """A piece of a rendered runbook: a heading, a block of prose, or a step."""

    heading: str | None = None
    text: str = ""
    step: Step | None = None


@dataclass(frozen=True)
class RenderedRunbook:
    book: Runbook
    params: dict[str, str]
    parts: tuple[Part, ...] = field(default_factory=tuple)

    @property
    def title(self) -> str:
        return self.book.title

    @property
    def steps(self) -> list[Step]:
        return [part.step for part in self.parts if part.step]


class RunbookLibrary:
    def __init__(self, folder: Path, context: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.context = context or {}
        self._env = None

    @property
    def env(self):
        """The Jinja environment, made on first use (jinja2 is imported by the commands that render a runbook)."""
        if self._env is None:
            import jinja2

            self._env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False,
                                           keep_trailing_newline=True)
        return self._env

    def all(self) -> list[Runbook]:
        if not self.folder.is_dir():
            raise RunbookError(f"runbook folder {self.folder} does not exist (runbooks_dir in app.yaml)")
        return [self._load(path) for path in sorted(self.folder.glob("*.md"))]

    def get(self, name: str) -> Runbook:
        path = self.folder / f"{name}.md"
        if re.fullmatch(r"[a-z0-9][a-z0-9-]*", name) and path.is_file():
            return self._load(path)
        names = [book.name for book in self.all()]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
        close += [n for n in names if name in n and n not in close][: 3 - len(close)]
        hint = f" Did you mean {', '.join(f'`{n}`' for n in close)}?" if close else ""
        raise UnknownName(f"No runbook named `{name}`.{hint} `/ops runbook` lists them all.")

    def render(self, name: str, params: dict[str, str] | None = None) -> RenderedRunbook:
        book = self.get(name)
        params = dict(params or {})
        unknown = sorted(set(params) - set(book.params))
        if unknown:
            known = ", ".join(f"`{p}`" for p in book.params) or "none"
            raise UnknownName(f"Runbook `{name}` has no parameter {', '.join(unknown)}; its parameters: {known}.")
        for key, value in params.items():
            if len(value) > MAX_PARAM or _CONTROL.search(value):
                raise UnknownName(f"The value of `{key}` must be one line of at most {MAX_PARAM} characters"
                                  " without control characters.")
        context = dict(self.context)
        values: dict[str, str] = {}
        for key, default in book.params.items():
            values[key] = params[key] if key in params else self._template(book, str(default), context)
        context.update(values)
        text = self._template(book, book.source, context)
        return RenderedRunbook(book, values, tuple(_parts(text)))

    def _template(self, book: Runbook, source: str, context: dict[str, Any]) -> str:
        import jinja2

        try:
            return self.env.from_string(source).render(context)
        except jinja2.UndefinedError as exc:
            raise RunbookError(f"Runbook `{book.name}` uses a value that is not set: {exc.message}") from None
        except jinja2.TemplateError as exc:
            raise RunbookError(f"Runbook `{book.name}` has a template error: {exc}") from None

    def _load(self, path: Path) -> Runbook:
        text = path.read_text(encoding="utf-8")
        match = _FRONT.match(text)
        if not match:
            raise RunbookError(f"{path}: missing YAML front matter (--- ... ---)")
        try:
            meta = yaml.safe_load(match.group(1)) or {}
        except yaml.YAMLError as exc:
            raise RunbookError(f"{path}: front matter is not valid YAML: {exc}") from None
        if not isinstance(meta, dict) or "title" not in meta:
            raise RunbookError(f"{path}: front matter needs at least a title")
        return Runbook(
            name=path.stem,
            title=str(meta["title"]),
            symptoms=tuple(meta.get("symptoms") or ()),
            severity=str(meta.get("severity") or ""),
            commands=tuple(meta.get("commands") or ()),
            params={str(k): str(v) for k, v in (meta.get("params") or {}).items()},
            source=match.group(2),
            path=path,
            alerts=_matchers(path, meta.get("alerts")),
        )


def _matchers(path: Path, value: Any) -> tuple[dict[str, str], ...]:
    """``alerts:`` front matter as label matchers: a name is ``{alertname: name}``, a mapping is matched as is."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RunbookError(f"{path}: `alerts` must be a list of alert names or label matchers")
    matchers = []
    for item in value:
        if isinstance(item, str) and item.strip():
            matchers.append({"alertname": item.strip()})
        elif isinstance(item, dict) and item and all(isinstance(k, str) and isinstance(v, str | int | float | bool)
                                                     for k, v in item.items()):
            matchers.append({k: str(v) for k, v in item.items()})
        else:
            raise RunbookError(f"{path}: `alerts` entry {item!r} is neither an alert name nor a label mapping")
    return tuple(matchers)


def _parts(text: str) -> list[Part]:
    """Headings, prose and numbered steps; a step's indented lines continue it, ``run:`` among them names its command."""
    parts: list[Part] = []
    prose: list[str] = []

    def flush() -> None:
        body = "\n".join(prose).strip("\n")
        if body.strip():
            parts.append(Part(text=body))
        prose.clear()

    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if line.startswith("#"):
            flush()
            parts.append(Part(heading=line.lstrip("#").strip()))
            continue
        step = _STEP.match(line)
        if not step:
            prose.append(line)
            continue
        flush()
        body, run = [step.group(2).strip()], None
        while index < len(lines) and lines[index][:1] in (" ", "\t") and lines[index].strip():
            found = _RUN.match(lines[index])
            if found and run is None:
                run = found.group(1)
            else:
                body.append(lines[index].strip())
            index += 1
        parts.append(Part(step=Step(int(step.group(1)), "\n".join(body), run)))
    flush()
    return parts

"""Read app.yaml as plain data, refusing hostile YAML before it costs anything.

Usage::

    root = read_yaml(Path("app.yaml"))                 # OSError, or YamlRefused(line, message)
    data, lines = to_python(root, convert, problem)    # plain dicts/lists; lines[("slack", "bot_token")] == 6

The document is built from ``yaml.parse`` events, which arrive one at a time, so
size, nesting depth, alias count, alias expansion and recursive anchors are all
checked before anything is built or walked recursively:

- the file is at most :data:`MAX_BYTES`, UTF-8 text without control characters;
- collections nest at most :data:`MAX_DEPTH` deep, aliases included;
- at most :data:`MAX_ALIASES` aliases, and the document with every alias expanded
  holds at most :data:`MAX_NODES` values and :data:`MAX_CHARS` characters of text
  (a billion-laughs bomb stops at its first few lines);
- an alias inside the node it names (``&a [*a]``) is refused;
- one document; no tags but YAML's own scalar types (``!!python/object`` is refused).

Duplicate keys and misused merge keys (``<<``) are reported as problems of the
key where they occur; merge keys otherwise work as in YAML 1.1.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

__all__ = ["MAX_ALIASES", "MAX_BYTES", "MAX_CHARS", "MAX_DEPTH", "MAX_NODES", "Alias", "Mapping", "Node",
           "Scalar", "Sequence", "YamlRefused", "read_yaml", "scalar_value", "to_python"]

MAX_BYTES = 1 << 20  # 1 MiB: the shipped app.yaml is 7 KiB
MAX_DEPTH = 32  # the deepest setting is 4 levels; `expect` JSON may nest a little more
MAX_ALIASES = 1_000
MAX_NODES = 50_000  # values after alias expansion: a large real config has a few thousand
MAX_CHARS = 2 << 20  # characters of text after alias expansion: twice the largest file

_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = {None, "!", *(_CORE + name for name in ("str", "int", "float", "bool", "null"))}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: parses 1 MiB in 0.1 s


class YamlRefused(Exception):
    """The file is not plain, bounded YAML; ``line`` is 1-based (None: the file as a whole)."""

    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(eq=False)
class Scalar:
    value: str
    line: int
    plain: bool
    tag: str | None = None


@dataclass(eq=False)
class Mapping:
    line: int
    items: list[tuple[str, int, "Node"]] = field(default_factory=list)  # (key, key line, value)
    merges: list[tuple[int, "Node"]] = field(default_factory=list)  # (line, value of `<<`)
    problems: list[tuple[str, int, str]] = field(default_factory=list)  # (key, line, message)


@dataclass(eq=False)
class Sequence:
    line: int
    items: list["Node"] = field(default_factory=list)


@dataclass(eq=False)
class Alias:
    line: int
    target: "Node"


Node = Union[Scalar, Mapping, Sequence, Alias]


def read_yaml(path: Path) -> Node | None:
    """The document in ``path`` (None when empty); OSError when unreadable, YamlRefused when hostile or broken."""
    with open(path, "rb") as stream:
        raw = stream.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise YamlRefused(None, f"the file is larger than {MAX_BYTES // 1024} KiB; app.yaml is a short settings file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise YamlRefused(line, f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); is this a binary file?") from None
    control = _CONTROL.search(text)
    if control:
        line = text.count("\n", 0, control.start()) + 1
        raise YamlRefused(line, f"control character U+{ord(control.group()):04X} is not allowed; "
                                "is this a binary file?")
    try:
        return _Composer().compose(yaml.parse(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if "maximum nesting depth" in str(exc.problem):  # libyaml's own limit (1,000) met while scanning ahead
            raise YamlRefused(mark.line + 1 if mark else None, f"nested more than {MAX_DEPTH} levels deep") from None
        raise YamlRefused(mark.line + 1 if mark else None, f"not valid YAML: {exc.problem or exc.context}") from None
    except yaml.reader.ReaderError as exc:
        raise YamlRefused(text.count("\n", 0, exc.position) + 1, f"not valid YAML: {exc.reason}") from None
    except yaml.YAMLError as exc:
        raise YamlRefused(None, f"not valid YAML: {exc}") from None


@dataclass(eq=False)
class _Open:
    node: Mapping | Sequence
    anchor: str | None
    nodes: int  # counters when it opened: its expanded size is the difference when it closes
    chars: int
    height: int = 1
    key: tuple[Node, int] | None = None  # a mapping's key waiting for its value
    seen: dict[str, int] = field(default_factory=dict)


class _Composer:
    """Build the document from parser events, with every limit checked as events arrive."""

    def __init__(self) -> None:
        self.stack: list[_Open] = []
        self.anchors: dict[str, tuple[Node, int, int, int] | None] = {}  # None: still open (recursive if aliased)
        self.nodes = self.chars = self.aliases = self.documents = 0
        self.root: Node | None = None

    def compose(self, events) -> Node | None:
        for event in events:
            line = event.start_mark.line + 1
            if isinstance(event, yaml.DocumentStartEvent):
                self.documents += 1
                if self.documents > 1:
                    raise YamlRefused(line, "a second YAML document ('---'); app.yaml holds one")
            elif isinstance(event, yaml.ScalarEvent):
                self._scalar(event, line)
            elif isinstance(event, yaml.AliasEvent):
                self._alias(event.anchor, line)
            elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                self._open(event, line)
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                self._close()
        return self.root

    def _count(self, line: int, nodes: int, chars: int) -> None:
        self.nodes += nodes
        self.chars += chars
        if self.nodes > MAX_NODES:
            raise YamlRefused(line, f"more than {MAX_NODES} values once aliases are expanded; "
                                    "is this an alias bomb?")
        if self.chars > MAX_CHARS:
            raise YamlRefused(line, f"more than {MAX_CHARS // 1024} KiB of text once aliases are expanded; "
                                    "is this an alias bomb?")

    def _scalar(self, event: yaml.ScalarEvent, line: int) -> None:
        if event.tag not in _SCALAR_TAGS:
            raise YamlRefused(line, f"the tag {_short(event.tag)} is not allowed: app.yaml is plain YAML")
        if "\x00" in event.value or re.search("[\ud800-\udfff]", event.value):
            raise YamlRefused(line, "a NUL or an unpaired surrogate escape ('\\0', '\\ud800') is not allowed in a value")
        self._count(line, 1, len(event.value))
        node = Scalar(event.value, line, plain=not event.style and event.implicit[0], tag=event.tag)
        self._anchor(event.anchor, line, (node, 1, len(event.value), 0))
        self._add(node, line, 0)

    def _alias(self, anchor: str, line: int) -> None:
        self.aliases += 1
        if self.aliases > MAX_ALIASES:
            raise YamlRefused(line, f"more than {MAX_ALIASES} aliases; is this an alias bomb?")
        if anchor not in self.anchors:
            raise YamlRefused(line, f"the alias *{anchor} names no anchor defined before it")
        named = self.anchors[anchor]
        if named is None:
            raise YamlRefused(line, f"the alias *{anchor} is inside the node it names (a recursive anchor)")
        target, nodes, chars, height = named
        if len(self.stack) + height > MAX_DEPTH:
            raise YamlRefused(line, f"nested more than {MAX_DEPTH} levels deep (aliases included)")
        self._count(line, nodes, chars)
        self._add(Alias(line, target), line, height)

    def _open(self, event: yaml.CollectionStartEvent, line: int) -> None:
        kind = "map" if isinstance(event, yaml.MappingStartEvent) else "seq"
        if event.tag not in (None, "!", _CORE + kind):
            raise YamlRefused(line, f"the tag {_short(event.tag)} is not allowed: app.yaml is plain YAML")
        if len(self.stack) >= MAX_DEPTH:
            raise YamlRefused(line, f"nested more than {MAX_DEPTH} levels deep")
        self._count(line, 1, 0)
        node = Mapping(line) if kind == "map" else Sequence(line)
        self._anchor(event.anchor, line, None)
        self.stack.append(_Open(node, event.anchor, self.nodes - 1, self.chars))

    def _close(self) -> None:
        done = self.stack.pop()
        if done.anchor:
            self.anchors[done.anchor] = (done.node, self.nodes - done.nodes, self.chars - done.chars, done.height)
        self._add(done.node, done.node.line, done.height)

    def _anchor(self, anchor: str | None, line: int, named: tuple | None) -> None:
        if anchor is None:
            return
        if anchor in self.anchors:
            raise YamlRefused(line, f"the anchor &{anchor} is defined twice")
        self.anchors[anchor] = named

    def _add(self, node: Node, line: int, height: int) -> None:
        if not self.stack:
            self.root = node
            return
        parent = self.stack[-1]
        parent.height = max(parent.height, height + 1)
        if isinstance(parent.node, Sequence):
            parent.node.items.append(node)
        elif parent.key is None:
            parent.key = (node, line)
        else:
            key_node, key_line = parent.key
            parent.key = None
            self._entry(parent, key_node, key_line, node)

    def _entry(self, parent: _Open, key_node: Node, line: int, value: Node) -> None:
        mapping = parent.node
        assert isinstance(mapping, Mapping)
        key = key_node.target if isinstance(key_node, Alias) else key_node
        if not isinstance(key, Scalar):
            mapping.problems.append(("(key)", line, "a key must be plain text, not a list or a mapping"))
            return
        if key.value == "<<" and key.plain and key.tag is None:
            mapping.merges.append((line, value))
            return
        if key.value in parent.seen:
            mapping.problems.append((key.value, line, f"duplicate key (first on line {parent.seen[key.value]})"))
            return
        parent.seen[key.value] = line
        mapping.items.append((key.value, line, value))


def _short(tag: str | None) -> str:
    return "!!" + tag[len(_CORE):] if tag and tag.startswith(_CORE) else str(tag)


_resolver = yaml.resolver.Resolver()
_constructor = yaml.constructor.SafeConstructor()


def scalar_value(node: Scalar) -> Any:
    """YAML's own typing of a scalar (``5`` → 5, ``true`` → True, ``~`` → None); ValueError when it does not fit."""
    if node.tag == "!" or (node.tag is None and not node.plain):
        return node.value
    tag = node.tag or _resolver.resolve(yaml.ScalarNode, node.value, (True, False))
    try:
        return _constructor.yaml_constructors[tag](_constructor, yaml.ScalarNode(tag, node.value))
    except (ValueError, yaml.YAMLError, OverflowError):
        raise ValueError(f"not a valid {_short(tag)} value") from None


Convert = Callable[[Scalar, tuple], Any]
Problem = Callable[[tuple, int, str], None]


def to_python(root: Node, convert: Convert, problem: Problem) -> tuple[Any, dict[tuple, int]]:
    """Plain data from the document; ``convert`` turns each scalar, ``problem`` hears what is wrong where."""
    lines: dict[tuple, int] = {(): root.line}
    return _walk(root, (), lines, convert, problem), lines


def _walk(node: Node, loc: tuple, lines: dict, convert: Convert, problem: Problem) -> Any:
    while isinstance(node, Alias):
        node = node.target
    if isinstance(node, Scalar):
        return convert(node, loc)
    if isinstance(node, Sequence):
        out_list = []
        for index, item in enumerate(node.items):
            lines[loc + (index,)] = item.line
            out_list.append(_walk(item, loc + (index,), lines, convert, problem))
        return out_list
    for key, line, message in node.problems:
        problem(loc + (key,), line, message)
    out: dict[str, Any] = {}
    for key, (key_line, value) in _entries(node, loc, problem).items():
        lines[loc + (key,)] = key_line
        out[key] = _walk(value, loc + (key,), lines, convert, problem)
    return out


def _entries(mapping: Mapping, loc: tuple, problem: Problem) -> dict[str, tuple[int, Node]]:
    """A mapping's keys: merged ones first (earlier merged mappings win), then its own, which win over them."""
    entries: dict[str, tuple[int, Node]] = {}
    for line, merged in mapping.merges:
        while isinstance(merged, Alias):
            merged = merged.target
        for source in merged.items if isinstance(merged, Sequence) else [merged]:
            while isinstance(source, Alias):
                source = source.target
            if not isinstance(source, Mapping):
                problem(loc + ("<<",), line, "a merge key (<<) takes a mapping or a list of mappings")
                continue
            for key, entry in _entries(source, loc, problem).items():
                entries.setdefault(key, entry)
    entries.update((key, (key_line, value)) for key, key_line, value in mapping.items)
    return entries

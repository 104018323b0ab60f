"""Where an Alembic project keeps its revisions, read from its ``alembic.ini`` as Alembic reads it.

Usage::

    layout = layout_of(Path("service/alembic.ini"))      # or the folder holding alembic.ini
    layout.locations, layout.recursive                     # [Path(...), ...], True/False
    files = revision_files(layout)                         # every file Alembic would load, in its order

Alembic's rules (``alembic.config.Config``, ``alembic.script.base``): ``script_location``
is the scripts folder and, without ``version_locations``, its ``versions`` folder holds the
revisions; ``version_locations`` lists several folders, split by ``path_separator``
(``os``, ``space``, ``newline``, ``:``, ``;``; the older ``version_path_separator`` too) or,
when neither is set, on spaces and commas; ``recursive_version_locations = true`` makes
Alembic walk sub-folders; ``%(here)s`` is the folder of ``alembic.ini``. Relative paths are
taken from that folder, where ``alembic`` is normally run. A package resource
(``myapp:migrations``) cannot be read from a folder and is refused with a message.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AlembicLayout", "layout_of", "revision_files"]

_SEPARATORS = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}
_LEGACY_SPLIT = re.compile(r", *|(?: +)")


@dataclass(frozen=True)
class AlembicLayout:
    locations: tuple[Path, ...]
    recursive: bool
    source: str  # what was read, for messages: "alembic.ini" or "a versions folder"


def layout_of(path: Path, section: str = "alembic") -> AlembicLayout:
    """The revision folders of ``path``: an ``alembic.ini``, a folder holding one, or a bare versions folder."""
    import configparser

    ini = path / "alembic.ini" if path.is_dir() else path
    if not ini.is_file():
        return AlembicLayout((path,), False, "a versions folder")
    parser = configparser.ConfigParser(defaults={"here": str(ini.parent.absolute())})
    try:
        parser.read(ini, encoding="utf-8")
        options = dict(parser.items(section)) if parser.has_section(section) else None
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"{ini.name} cannot be read: {str(exc).splitlines()[0][:200]}") from None
    if options is None:
        raise ValueError(f"{ini.name} has no [{section}] section")
    script_location = (options.get("script_location") or "").strip()
    if not script_location:
        raise ValueError(f"{ini.name} has no script_location")
    listed = (options.get("version_locations") or "").strip()
    if listed:
        names = _split(listed, options)
    else:
        names = [str(Path(script_location) / "versions")]
    locations = tuple(_resolve(name, ini) for name in names if name.strip())
    recursive = options.get("recursive_version_locations", "").strip() == "true"  # Alembic's own test
    return AlembicLayout(locations, recursive, ini.name)


def _split(listed: str, options: dict[str, str]) -> list[str]:
    separator = options.get("path_separator") or options.get("version_path_separator")
    if separator is None:
        return _LEGACY_SPLIT.split(listed)
    separator = separator.strip()
    if separator not in _SEPARATORS:
        raise ValueError(f"path_separator {separator!r} is not one of space, newline, os, ':', ';'")
    return [part.strip() for part in listed.split(_SEPARATORS[separator]) if part.strip()]


def _resolve(name: str, ini: Path) -> Path:
    name = name.strip()
    if re.match(r"^[A-Za-z_][\w.]*:[^\\/]", name) and not re.match(r"^[A-Za-z]:[\\/]", name):
        raise ValueError(f"version location {name!r} is a package resource; point drift at a folder instead")
    path = Path(name)
    return path if path.is_absolute() else ini.parent / path


def revision_files(layout: AlembicLayout) -> list[Path]:
    """The ``.py`` files Alembic would load, each once (a folder listed twice is read once, as Alembic does)."""
    seen: set[Path] = set()
    files: list[Path] = []
    for location in layout.locations:
        if not location.is_dir():
            continue  # Alembic skips a version location that does not exist
        for root, dirs, names in os.walk(location):
            dirs.sort()
            if Path(root).name == "__pycache__":
                continue
            for name in sorted(names):
                path = (Path(root) / name).resolve()
                if name.endswith(".py") and not name.startswith(".#") and path not in seen:
                    seen.add(path)
                    files.append(path)
            if not layout.recursive:
                break
    return files

"""Alembic: ``alembic_version`` against the revision files of the versions folder.

Usage::

    graph = graph_from_folder(Path("alembic/versions"))      # {revision: Revision}
    report = compare(graph, current_versions(conn, sql.Identifier("alembic_version")))

The revision files are those Alembic loads (``alembic.ini``'s ``script_location``,
``version_locations``, ``recursive_version_locations``: :mod:`commands.drift.alembicini`).
They are read with :mod:`ast`, never imported: ``revision = "..."`` and
``down_revision = None | "..." | ("a", "b")``, annotated or not. Everything
reachable downwards from the database's version(s) is applied; the rest of the
graph is pending; a version the graph does not have means the schema is newer
than this code (or on another branch).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from commands.drift.alembicini import AlembicLayout, layout_of, revision_files
from commands.drift.model import DriftReport, Item

if TYPE_CHECKING:
    from psycopg import sql

__all__ = ["Revision", "graph_from_folder", "graph_from_json", "current_versions", "compare"]


@dataclass(frozen=True)
class Revision:
    revision: str
    down: tuple[str, ...]
    message: str = ""


def _revision_of(path: Path) -> Revision | None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    values: dict[str, object] = {}
    for node in tree.body:
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            target, value = node.target.id, node.value
        if target in ("revision", "down_revision"):
            try:
                values[target] = ast.literal_eval(value)
            except ValueError:
                raise ValueError(f"{path.name}: {target} is not a literal") from None
    if "revision" not in values:
        return None
    docstring = (ast.get_docstring(tree) or "").strip().splitlines()
    return Revision(str(values["revision"]), _downs(values.get("down_revision")), docstring[0] if docstring else "")


def _downs(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return (str(value),)


def graph_from_folder(folder: Path) -> dict[str, Revision]:
    """Every revision Alembic would load: ``folder`` is ``alembic.ini``, its folder, or a versions folder."""
    layout = layout_of(folder)
    if not any(location.is_dir() for location in layout.locations):
        raise ValueError(f"none of the version locations in {layout.source} exists:"
                         f" {', '.join(str(location) for location in layout.locations)}")
    files = revision_files(layout)
    if layout.source == "a versions folder":
        nested = revision_files(AlembicLayout(layout.locations, True, layout.source))
        if any(_revision_of(path) for path in set(nested) - set(files)):
            raise ValueError("the versions folder has revision files in sub-folders; point source at alembic.ini"
                             " so that drift reads recursive_version_locations and version_locations from it")
    graph: dict[str, Revision] = {}
    for path in files:
        revision = _revision_of(path)
        if revision is not None:
            if revision.revision in graph:
                raise ValueError(f"revision {revision.revision} is defined twice ({path.name})")
            graph[revision.revision] = revision
    return graph


def graph_from_json(body: object) -> dict[str, Revision]:
    """``[{"revision": ..., "down_revision": null | "..." | [...]}, ...]``."""
    if not isinstance(body, list):
        raise ValueError("expected a JSON list of {revision, down_revision}")
    return {str(item["revision"]): Revision(str(item["revision"]), _downs(item.get("down_revision")),
                                            str(item.get("message") or "")) for item in body}


def current_versions(conn, table: sql.Identifier) -> list[str]:
    from psycopg import sql

    return [row[0] for row in conn.execute(sql.SQL("SELECT version_num FROM {} ORDER BY 1").format(table))]


def _ancestors(graph: dict[str, Revision], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        revision = stack.pop()
        if revision in seen or revision not in graph:
            continue
        seen.add(revision)
        stack.extend(graph[revision].down)
    return seen


def _base_first(graph: dict[str, Revision], names: set[str]) -> list[str]:
    ordered, placed = [], set()

    def place(name: str) -> None:
        if name in placed or name not in names:
            return
        placed.add(name)
        for down in graph[name].down:
            place(down)
        ordered.append(name)

    for name in sorted(names):
        place(name)
    return ordered


def compare(graph: dict[str, Revision], versions: list[str]) -> DriftReport:
    report = DriftReport("alembic", current=", ".join(versions) or None)
    referenced = {down for revision in graph.values() for down in revision.down}
    report.heads = sorted(set(graph) - referenced)
    applied: set[str] = set()
    for version in versions:
        if version not in graph:
            report.unknown.append(Item(version, "the database is at a revision this code does not have"))
        applied |= _ancestors(graph, version)
    report.applied = [Item(name, graph[name].message) for name in _base_first(graph, applied)]
    if report.unknown:
        # The database's revision is not in this graph, so its ancestry is unknown: do not guess what is pending.
        report.notes.append("which of this code's revisions are applied cannot be told from a revision it does"
                            " not have; deploy the code that has it, or compare with its versions folder")
    else:
        report.pending = [Item(name, graph[name].message) for name in _base_first(graph, set(graph) - applied)]
    if len(report.heads) > 1:
        report.notes.append(f"the code has {len(report.heads)} heads ({', '.join(report.heads)}): they need"
                            " an `alembic merge` before `alembic upgrade head`")
    missing_down = sorted({down for down in referenced if down not in graph})
    if missing_down:
        report.notes.append(f"revision files name down-revisions that are missing: {', '.join(missing_down)}")
    if not versions:
        report.notes.append("alembic_version is empty: no migration has been applied")
    return report

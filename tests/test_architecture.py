"""The shape of the code, kept true: the framework names no group, modules stay small, ``__all__`` is honoured.

``bot/`` is the framework and ``commands/`` the groups (see the README's Architecture). The
framework finds the groups through ``bot.config.settings.installed_groups`` alone and loops over
what they contribute (:class:`bot.core.group.Group`); it must never reach into one by name.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

from tests.conftest import REPO

GROUP_NAMES = ("dlq", "audit", "incident", "email", "drift", "rollback", "health", "runbook", "log", "help", "alerts")
FRAMEWORK = [path for path in (REPO / "bot").rglob("*.py") if "demo" not in path.relative_to(REPO / "bot").parts]
OURS = sorted((REPO / "bot").rglob("*.py")) + sorted((REPO / "commands").rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every import in ``path``, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
    return found


def test_the_framework_names_no_group():
    offenders = []
    for path in FRAMEWORK:
        source = path.read_text(encoding="utf-8")
        for module, _, line in _imports(path):
            if module == "commands" or module.startswith("commands."):
                if not (path.name == "settings.py" and module == "commands"):  # installed_groups(): the one door
                    offenders.append(f"{path.relative_to(REPO)}:{line}: imports {module}")
        for match in re.finditer(rf"commands\.({'|'.join(GROUP_NAMES)})\b", source):
            offenders.append(f"{path.relative_to(REPO)}: mentions {match.group()}")
    assert offenders == []


def test_at_most_three_framework_modules_mention_incidents():
    """The incident channel is the product's (where results are announced); incidents themselves are a group's."""
    mention = re.compile(r"incident(?![ _-](channel|response))", re.I)
    modules = sorted(str(path.relative_to(REPO)) for path in FRAMEWORK
                     if mention.search(path.read_text(encoding="utf-8").replace("#incidents", "")))
    assert len(modules) <= 3, modules


def test_modules_are_small_and_bot_shows_its_architecture():
    big = {str(p.relative_to(REPO)): n for p in OURS if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert big == {}
    assert len(list((REPO / "bot").glob("*.py"))) <= 15
    packages = {p.name for p in (REPO / "bot").iterdir() if (p / "__init__.py").exists()}
    assert {"core", "engine", "config", "store", "slack", "runtime", "render", "demo"} <= packages


def _exports(module: str) -> set[str] | None:
    """The module's ``__all__``, and its submodules when it is a package; None when it declares none."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    submodules = {p.stem for folder in spec.submodule_search_locations or () for p in Path(folder).iterdir()
                  if p.suffix == ".py" or (p / "__init__.py").exists()}
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value)) | submodules
    return None


def test_nothing_imports_a_name_its_module_does_not_export():
    offenders = []
    for path in OURS + sorted((REPO / "tests").rglob("*.py")):
        for module, names, line in _imports(path):
            if module.split(".")[0] not in ("bot", "commands"):
                continue
            exported = _exports(module)
            if exported is None:
                continue
            for name in names:
                if name not in exported:
                    offenders.append(f"{path.relative_to(REPO)}:{line}: {name} from {module}")
    assert offenders == []

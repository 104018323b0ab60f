"""The README documents every command and every setting, so it stays true as they grow."""

from __future__ import annotations

import re

from pydantic import BaseModel

from bot.config.settings import settings_class
from commands import build_registry
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_every_command_is_documented():
    for command in build_registry():
        assert re.search(rf"`{re.escape(command.name)}[ `\[<]", README), command.name


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        key = prefix + (field.alias or name)
        annotation = field.annotation
        inner = [a for a in getattr(annotation, "__args__", (annotation,)) if a is not type(None)][-1]  # X | None: X
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            sep = "[]." if getattr(annotation, "__origin__", None) is list else (
                ".<name>." if getattr(annotation, "__origin__", None) is dict else ".")
            keys += _keys(inner, key + sep)
        else:
            keys.append(key)
    return keys


def test_every_setting_is_documented():
    for key in _keys(settings_class()):
        assert f"| `{key}` |" in README, f"README's configuration table lacks {key}"


def test_quick_start_has_exactly_two_commands():
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    assert len([line for line in block.splitlines() if line.strip()]) == 2


def test_the_conventions_example_hash_is_right():
    import hashlib

    from bot.store.chain import v1_hash

    text = (REPO / "docs" / "conventions.md").read_text(encoding="utf-8")
    framed = '-1:1:12:t124:2026-01-31T09:15:02.123Z6:a@x.io11:case.update8:{"a": 1}'
    digest = hashlib.sha256(framed.encode()).hexdigest()
    assert framed in text and digest in text
    assert v1_hash(None, "1", "t1", "2026-01-31T09:15:02.123Z", "a@x.io", "case.update", '{"a": 1}') == digest


def test_the_license_pyproject_names_is_there():
    assert 'license = "MIT"' in (REPO / "pyproject.toml").read_text()
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_the_readme_refers_to_no_document_users_do_not_have():
    import re as _re

    for name in ("README.md", "app.yaml", "render.yaml", "docs/conventions.md"):
        text = (REPO / name).read_text(encoding="utf-8")
        assert not _re.search(r"(?i)\bseeds?\b[ ']*(0\d\d|'s|s')|SPEC\s*§|SPEC\.md", text), name
    for path in (REPO / "runbooks").iterdir():
        assert not _re.search(r"(?i)\bseed \d|SPEC\s*§", path.read_text(encoding="utf-8")), path.name

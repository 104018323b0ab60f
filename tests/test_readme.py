"""The README documents every command and every setting, so it stays true as they grow."""

from __future__ import annotations

import re

from pydantic import BaseModel

from bot.config import Settings
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
    for key in _keys(Settings):
        assert f"| `{key}` |" in README, f"README's configuration table lacks {key}"


def test_quick_start_has_exactly_two_commands():
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    assert len([line for line in block.splitlines() if line.strip()]) == 2

"""``drift`` on the layouts real projects use: Alembic's alembic.ini (recursive and several version locations),
and Prisma migrations whose line endings changed in a Windows checkout."""

from __future__ import annotations

import configparser
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.config import Config

from commands.drift.alembicini import layout_of
from commands.drift.prisma import Expected, script_digests
from tests.test_drift import (AlembicProject, PrismaProject, alembic_runtime, clean_db, database, names,  # noqa: F401
                              prisma_runtime, run)


def _set_ini(root: Path, **options: str | None) -> Config:
    """Write options into the project's alembic.ini (as a team would), and return Alembic's own view of it."""
    ini = root / "alembic.ini"
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ini)
    for key, value in options.items():
        if value is None:
            parser.remove_option("alembic", key)
        else:
            parser.set("alembic", key, value)
    with ini.open("w") as handle:
        parser.write(handle)
    return Config(str(ini))


def _alembic_heads(config: Config) -> list[str]:
    """What `alembic heads` prints, run where alembic.ini is (relative paths are taken from there)."""
    root = Path(config.config_file_name).parent
    out = subprocess.run([sys.executable, "-m", "alembic", "-c", "alembic.ini", "heads"], cwd=root, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip().endswith("(head)"))


@pytest.fixture
def nested(tmp_path, clean_db):  # noqa: F811
    """Three revisions, the newest two moved into versions/2026/03/ (organised by date, as teams do)."""
    project = AlembicProject(tmp_path, clean_db)
    project.revision("a1b2c3", "create cases", create="CREATE TABLE app.cases (id int)")
    project.revision("d4e5f6", "add audit log", create="CREATE TABLE app.audit (id int)")
    project.revision("0718ab", "index audit", create="CREATE INDEX ON app.audit (id)")
    sub = project.versions / "2026" / "03"
    sub.mkdir(parents=True)
    for path in project.versions.glob("*.py"):
        if path.name.startswith(("d4e5f6", "0718ab")):
            shutil.move(path, sub / path.name)
    return project


def test_recursive_version_locations_pending_revision_is_not_a_false_green(nested, tmp_path, clean_db,  # noqa: F811
                                                                            make_runtime):
    config = _set_ini(tmp_path, recursive_version_locations="true")
    nested.config.set_main_option("recursive_version_locations", "true")
    nested.upgrade("d4e5f6")
    assert _alembic_heads(config) == ["0718ab"]  # Alembic itself sees the nested head

    report = database(run(alembic_runtime(tmp_path, clean_db, make_runtime, source="alembic.ini"), "drift"))

    assert report["current"] == "d4e5f6" and names(report["pending"]) == ["0718ab"]
    assert report["heads"] == _alembic_heads(config) and report["color"] != "green"


def test_the_folder_holding_alembic_ini_is_read_the_same_way(nested, tmp_path, clean_db, make_runtime):  # noqa: F811
    _set_ini(tmp_path, recursive_version_locations="true")
    nested.config.set_main_option("recursive_version_locations", "true")
    nested.upgrade("head")

    report = database(run(alembic_runtime(tmp_path, clean_db, make_runtime, source="."), "drift"))

    assert report["current"] == "0718ab" and report["pending"] == [] and report["color"] == "green"


def test_a_bare_versions_folder_with_nested_revisions_is_refused_not_green(nested, tmp_path, clean_db,  # noqa: F811
                                                                            make_runtime):
    nested.config.set_main_option("recursive_version_locations", "true")
    nested.upgrade("d4e5f6")

    result = run(alembic_runtime(tmp_path, clean_db, make_runtime), "drift")  # source: alembic/versions

    assert result.status == "error"  # the command cannot say, and says why; never "no drift"
    assert "sub-folders" in result.summary and "alembic.ini" in result.summary


def test_without_recursive_alembic_and_drift_both_ignore_sub_folders(nested, tmp_path, clean_db,  # noqa: F811
                                                                     make_runtime):
    config = _set_ini(tmp_path, recursive_version_locations="false")
    assert _alembic_heads(config) == ["a1b2c3"]
    nested.upgrade("a1b2c3")

    report = database(run(alembic_runtime(tmp_path, clean_db, make_runtime, source="alembic.ini"), "drift"))

    assert report["heads"] == _alembic_heads(config) and report["pending"] == []


@pytest.mark.parametrize("separator", ["os", "space", ";", None])
def test_several_version_locations(separator, tmp_path, clean_db, make_runtime):  # noqa: F811
    project = AlembicProject(tmp_path, clean_db)
    extra = tmp_path / "plugins" / "billing"
    extra.mkdir(parents=True)
    join = {"os": os.pathsep, "space": " ", ";": ";", None: ", "}[separator]
    options = {"version_locations": join.join(["%(here)s/alembic/versions", "plugins/billing"])}
    options["path_separator"] = separator  # None: Alembic's legacy split on spaces and commas
    project.revision("a1b2c3", "create cases", create="CREATE TABLE app.cases (id int)")
    project.revision("b00b1e", "billing", create="CREATE TABLE app.billing (id int)")
    project.upgrade("a1b2c3")
    billing = next(project.versions.glob("b00b1e*.py"))
    billing.rename(extra / billing.name)  # the billing plugin keeps its revisions in its own folder
    config = _set_ini(tmp_path, **options)
    assert _alembic_heads(config) == ["b00b1e"]

    report = database(run(alembic_runtime(tmp_path, clean_db, make_runtime, source="alembic.ini"), "drift"))

    assert report["heads"] == ["b00b1e"] and names(report["pending"]) == ["b00b1e"]
    assert report["safe_for_audit_job"] is False


def test_alembic_ini_problems_are_said(tmp_path):
    ini = tmp_path / "alembic.ini"
    ini.write_text("[alembic]\nversion_locations = a b\n")
    with pytest.raises(ValueError, match="no script_location"):
        layout_of(ini)
    ini.write_text("[alembic]\nscript_location = x\nversion_locations = a|b\npath_separator = pipe\n")
    with pytest.raises(ValueError, match="path_separator 'pipe'"):
        layout_of(ini)
    ini.write_text("[alembic]\nscript_location = x\nversion_locations = myapp:migrations\n")
    with pytest.raises(ValueError, match="package resource"):
        layout_of(ini)
    ini.write_bytes(b"[alembic\n\xff\xfe")
    with pytest.raises(ValueError, match="cannot be read"):
        layout_of(ini)


# -- Prisma: line endings -------------------------------------------------------------------------------

def test_a_windows_checkout_is_not_an_edit_but_a_real_edit_still_is(tmp_path, clean_db, make_runtime):  # noqa: F811
    project = PrismaProject(tmp_path, clean_db)
    project.add("20260301090000_init", 'CREATE TABLE "Case" (\n  id text PRIMARY KEY\n);\n')
    project.add("20260305120000_audit", 'CREATE TABLE "AuditLog" (id bigserial PRIMARY KEY);\r\n-- CRLF\r\n')
    project.deploy("20260301090000_init")
    project.deploy("20260305120000_audit")
    for name in ("20260301090000_init", "20260305120000_audit"):  # git's autocrlf one way, and the other
        path = project.folder / name / "migration.sql"
        body = path.read_bytes()
        path.write_bytes(body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") if b"\r\n" not in body
                         else body.replace(b"\r\n", b"\n"))

    result = run(prisma_runtime(tmp_path, clean_db, make_runtime), "drift")
    assert result.status == "ok", result.summary
    assert database(result)["edited"] == []

    path = project.folder / "20260301090000_init" / "migration.sql"
    path.write_bytes(path.read_bytes() + b'ALTER TABLE "Case" ADD COLUMN note text;\r\n')
    report = database(run(prisma_runtime(tmp_path, clean_db, make_runtime), "drift"))
    assert names(report["edited"]) == ["20260301090000_init"]


def test_checksum_rules_match_prisma_engines_own_cases():
    """The cases of prisma-engines' checksum tests: line-ending agnostic, a real change is not, old unpadded hex."""
    for group in ([b"ab\ncd\nef\ngh\rab", b"ab\r\ncd\r\nef\r\ngh\rab"],
                  [b"ab\ncd\nef\ngh\rab\n", b"ab\r\ncd\r\nef\r\ngh\rab\r\n"]):
        for script in group:
            for other in group:
                assert Expected("m", "", script_digests(script)).matches(hashlib.sha256(other).hexdigest())
    assert not Expected("m", "", script_digests(b"abc")).matches(hashlib.sha256(b"abcd").hexdigest())
    assert not Expected("m", "", script_digests(b"abc\n")).matches(hashlib.sha256(b"abc").hexdigest())
    assert not Expected("m", "", script_digests(b"a\r\r\nb")).matches(hashlib.sha256(b"a\nb").hexdigest())
    digest = hashlib.sha256(b"hello").digest()
    unpadded = "".join(f"{byte:x}" for byte in digest)
    assert len(unpadded) < 64 and Expected("m", "", script_digests(b"hello")).matches(unpadded)

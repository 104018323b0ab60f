"""``drift`` against real Alembic revisions and upgrades, and a ``_prisma_migrations`` laid out as Prisma makes it."""

from __future__ import annotations

import hashlib
import json
import textwrap
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
import threading

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import URL

from bot.core.invocation import Actor, Where
from tests.conftest import ALICE, write_config

OPS = Where("C-ops", channel_name="ops")

PRISMA_TABLE = """
CREATE TABLE "_prisma_migrations" (
    "id"                    VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum"              VARCHAR(64) NOT NULL,
    "finished_at"           TIMESTAMPTZ,
    "migration_name"        VARCHAR(255) NOT NULL,
    "logs"                  TEXT,
    "rolled_back_at"        TIMESTAMPTZ,
    "started_at"            TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count"   INTEGER NOT NULL DEFAULT 0
)
"""


@pytest.fixture
def clean_db(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS app CASCADE")
        conn.execute("CREATE SCHEMA app")
    return database_url


def run(runtime, text):
    return runtime.engine.handle(text, Actor(ALICE), OPS).result


def database(result, name="main"):
    return next(d for d in result.data["databases"] if d["database"] == name)


def names(items):
    return [item["name"] for item in items]


# -- Alembic ---------------------------------------------------------------------------------------

def _sqlalchemy_url(conninfo: str) -> str:
    """The same server, database and user as ``conninfo`` (password too), as SQLAlchemy writes it for alembic.ini."""
    info = conninfo_to_dict(conninfo)
    host = info.get("host", "127.0.0.1")
    socket = host.startswith("/")
    url = URL.create("postgresql+psycopg", username=info.get("user"), password=info.get("password"),
                     host=None if socket else host, port=None if socket else int(info.get("port") or 5432),
                     database=info["dbname"], query={"host": host, "port": info.get("port") or "5432"} if socket else {})
    return url.render_as_string(hide_password=False).replace("%", "%%")  # configparser interpolates %


class AlembicProject:
    """A real Alembic project in a folder: `alembic init`, revisions with fixed ids, real upgrades."""

    def __init__(self, root: Path, database_url: str):
        self.root = root
        url = _sqlalchemy_url(database_url)
        command.init(Config(str(root / "alembic.ini")), str(root / "alembic"))
        self.config = Config(str(root / "alembic.ini"))
        self.config.set_main_option("script_location", str(root / "alembic"))
        self.config.set_main_option("sqlalchemy.url", url)
        env = root / "alembic" / "env.py"  # keep alembic_version in the test's own schema, and leave
        text = env.read_text().replace(  # the process's logging alone (fileConfig would disable our loggers)
            "target_metadata=target_metadata", "target_metadata=target_metadata, version_table_schema='app'")
        env.write_text(text.replace("    fileConfig(config.config_file_name)", "    pass"))

    @property
    def versions(self) -> Path:
        return self.root / "alembic" / "versions"

    def revision(self, rev_id: str, message: str, head: str = "head", create: str | None = None) -> None:
        script = command.revision(self.config, message=message, rev_id=rev_id, head=head, splice=head != "head")
        if create:
            path = Path(script.path)
            path.write_text(path.read_text().replace(
                "def upgrade() -> None:\n", f"def upgrade() -> None:\n    op.execute({create!r})\n", 1))

    def upgrade(self, target: str) -> None:
        command.upgrade(self.config, target)


def alembic_runtime(tmp_path, database_url, make_runtime, source="alembic/versions"):
    path = write_config(tmp_path / "app.yaml", database_url)
    text = path.read_text().replace(
        f'  main: {{url: "{database_url}"}}',
        f'  main: {{url: "{database_url}", migrations: {{tool: alembic, source: "{source}", schema: app}}}}')
    path.write_text(text)
    return make_runtime(path)


@pytest.fixture
def project(tmp_path, clean_db):
    project = AlembicProject(tmp_path, clean_db)
    project.revision("a1b2c3", "create cases", create="CREATE TABLE app.cases (id int)")
    project.revision("d4e5f6", "add audit log", create="CREATE TABLE app.audit (id int)")
    project.revision("0718ab", "index audit", create="CREATE INDEX ON app.audit (id)")
    return project


def test_alembic_at_head_has_no_drift(project, tmp_path, clean_db, make_runtime):
    project.upgrade("head")
    result = run(alembic_runtime(tmp_path, clean_db, make_runtime), "drift")

    assert result.status == "ok", result.summary
    report = database(result)
    assert report["current"] == "0718ab" and names(report["applied"]) == ["a1b2c3", "d4e5f6", "0718ab"]
    assert report["safe_for_audit_job"] and report["color"] == "green"


def test_alembic_behind_lists_pending_and_holds_the_audit_job(project, tmp_path, clean_db, make_runtime):
    project.upgrade("a1b2c3")
    result = run(alembic_runtime(tmp_path, clean_db, make_runtime), "drift main")

    assert result.status == "warn"
    report = database(result)
    assert names(report["pending"]) == ["d4e5f6", "0718ab"]
    assert [p["note"] for p in report["pending"]] == ["add audit log", "index audit"]
    assert not report["safe_for_audit_job"]
    assert "do not run the audit verification job" in result.sections[-1].text


def test_alembic_database_ahead_of_the_code_is_unknown_revision(project, tmp_path, clean_db, make_runtime):
    project.upgrade("head")
    newest = next(project.versions.glob("0718ab_*.py"))
    newest.unlink()  # the code was rolled back; the schema was not

    report = database(run(alembic_runtime(tmp_path, clean_db, make_runtime), "drift"))

    assert names(report["unknown"]) == ["0718ab"] and report["schema_ahead_of_code"]
    assert report["pending"] == []


def test_alembic_two_heads_need_a_merge(project, tmp_path, clean_db, make_runtime):
    project.upgrade("head")
    project.revision("99aa00", "a branch", head="d4e5f6")

    report = database(run(alembic_runtime(tmp_path, clean_db, make_runtime), "drift"))

    assert report["heads"] == ["0718ab", "99aa00"]
    assert names(report["pending"]) == ["99aa00"]
    assert any("alembic merge" in note for note in report["notes"])


# -- Prisma ----------------------------------------------------------------------------------------

class PrismaProject:
    """prisma/migrations/<name>/migration.sql files, deployed the way `prisma migrate deploy` records them."""

    def __init__(self, root: Path, database_url: str):
        self.folder = root / "prisma" / "migrations"
        self.folder.mkdir(parents=True)
        (self.folder / "migration_lock.toml").write_text('provider = "postgresql"\n')
        self.url = database_url
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SET search_path TO app")
            conn.execute(PRISMA_TABLE)

    def add(self, name: str, script: str) -> Path:
        (self.folder / name).mkdir()
        path = self.folder / name / "migration.sql"
        path.write_text(script)
        return path

    def deploy(self, name: str, *, fail: str | None = None) -> None:
        script = (self.folder / name / "migration.sql").read_bytes()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("SET search_path TO app")
            row_id = str(uuid.uuid4())
            conn.execute("INSERT INTO _prisma_migrations (id, checksum, migration_name, started_at)"
                         " VALUES (%s, %s, %s, now())", (row_id, hashlib.sha256(script).hexdigest(), name))
            if fail:
                conn.execute("UPDATE _prisma_migrations SET logs = %s WHERE id = %s", (fail, row_id))
                return
            conn.execute(script.decode())
            conn.execute("UPDATE _prisma_migrations SET finished_at = now(), applied_steps_count = 1 WHERE id = %s",
                         (row_id,))

    def sql(self, query: str, params=None) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("SET search_path TO app")
            conn.execute(query, params)


def prisma_runtime(tmp_path, database_url, make_runtime, source="prisma/migrations", token=""):
    path = write_config(tmp_path / "app.yaml", database_url)
    extra = ", token: '${DRIFT_TOKEN}'" if token else ""
    path.write_text(path.read_text().replace(
        f'  main: {{url: "{database_url}"}}',
        f'  main: {{url: "{database_url}", migrations: {{tool: prisma, source: "{source}", schema: app{extra}}}}}'))
    return make_runtime(path)


@pytest.fixture
def prisma_project(tmp_path, clean_db):
    project = PrismaProject(tmp_path, clean_db)
    project.add("20260301090000_init", 'CREATE TABLE "Case" (id text PRIMARY KEY);\n')
    project.add("20260305120000_audit_log", 'CREATE TABLE "AuditLog" (id bigserial PRIMARY KEY);\n')
    project.deploy("20260301090000_init")
    project.deploy("20260305120000_audit_log")
    return project


def test_prisma_all_applied_is_green(prisma_project, tmp_path, clean_db, make_runtime):
    result = run(prisma_runtime(tmp_path, clean_db, make_runtime), "drift")
    assert result.status == "ok", result.summary
    assert database(result)["current"] == "20260305120000_audit_log"


def test_prisma_edited_after_applying_is_a_checksum_mismatch(prisma_project, tmp_path, clean_db, make_runtime):
    path = prisma_project.folder / "20260301090000_init" / "migration.sql"
    path.write_text(path.read_text() + 'ALTER TABLE "Case" ADD COLUMN note text;\n')  # `prisma migrate status` is silent

    result = run(prisma_runtime(tmp_path, clean_db, make_runtime), "drift")

    assert result.status == "fail"
    report = database(result)
    assert names(report["edited"]) == ["20260301090000_init"] and report["color"] == "red"
    assert "edited after it was applied" in report["edited"][0]["note"]


def test_prisma_failed_pending_rolled_back_and_unknown(prisma_project, tmp_path, clean_db, make_runtime):
    prisma_project.add("20260310080000_reminders", "CREATE TABLE reminders (id int);\n")
    prisma_project.deploy("20260310080000_reminders", fail='ERROR: relation "reminders" already exists')
    prisma_project.add("20260312080000_caps", "CREATE TABLE caps (id int);\n")  # never deployed
    prisma_project.sql("UPDATE _prisma_migrations SET rolled_back_at = now() WHERE migration_name = %s",
                       ("20260305120000_audit_log",))
    prisma_project.sql("INSERT INTO _prisma_migrations (id, checksum, migration_name, started_at, finished_at,"
                       " applied_steps_count) VALUES (%s, %s, '20260401000000_from_a_newer_release', now(), now(), 1)",
                       (str(uuid.uuid4()), "0" * 64))

    result = run(prisma_runtime(tmp_path, clean_db, make_runtime), "drift")

    report = database(result)
    assert result.status == "fail"
    assert names(report["failed"]) == ["20260310080000_reminders"]
    assert 'relation "reminders" already exists' in report["failed"][0]["note"]
    assert names(report["pending"]) == ["20260305120000_audit_log", "20260312080000_caps"]
    assert "rolled back" in report["pending"][0]["note"] and "out of order" in report["pending"][0]["note"]
    assert names(report["rolled_back"]) == ["20260305120000_audit_log"]
    assert names(report["unknown"]) == ["20260401000000_from_a_newer_release"] and report["schema_ahead_of_code"]
    assert not report["safe_for_audit_job"]


class MigrationList(BaseHTTPRequestHandler):
    """Answers GET with the expected migrations; the first answer is a 500 (retried)."""

    body: list = []
    seen: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).seen.append(self.headers.get("Authorization"))
        status = 500 if len(type(self).seen) == 1 else 200
        payload = json.dumps(type(self).body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def test_expected_migrations_from_an_http_source(prisma_project, tmp_path, clean_db, make_runtime, monkeypatch):
    files = sorted(prisma_project.folder.glob("*/migration.sql"))
    MigrationList.body = [{"name": f.parent.name, "checksum": hashlib.sha256(f.read_bytes()).hexdigest()}
                          for f in files] + [{"name": "20260320000000_next", "checksum": "ab" * 32}]
    MigrationList.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), MigrationList)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("DRIFT_TOKEN", "t0ken-value")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/migrations"
        result = run(prisma_runtime(tmp_path, clean_db, make_runtime, source=url, token=True), "drift")
    finally:
        server.shutdown()
        server.server_close()

    assert names(database(result)["pending"]) == ["20260320000000_next"]
    assert MigrationList.seen == ["Bearer t0ken-value"] * 2  # a 500, then the answer
    assert "t0ken-value" not in json.dumps(result.data)


@pytest.mark.parametrize("text, message", [
    ("drift nope", "unknown database 'nope'"),
])
def test_unknown_database_is_refused(tmp_path, clean_db, make_runtime, text, message):
    result = run(prisma_runtime(tmp_path, clean_db, make_runtime), text)
    assert result.status == "error" and message in result.summary


def test_no_migrations_configured_and_a_missing_folder_say_so(tmp_path, clean_db, make_runtime):
    plain = make_runtime(write_config(tmp_path / "plain.yaml", clean_db))
    assert "no database has migrations configured" in run(plain, "drift").summary
    missing = prisma_runtime(tmp_path, clean_db, make_runtime, source="nowhere/migrations")
    assert "migrations folder 'nowhere/migrations' not found" in run(missing, "drift").summary


def test_a_missing_history_table_means_everything_is_pending(tmp_path, clean_db, make_runtime):
    folder = tmp_path / "prisma" / "migrations" / "20260301090000_init"
    folder.mkdir(parents=True)
    (folder / "migration.sql").write_text(textwrap.dedent("CREATE TABLE x (id int);\n"))
    report = database(run(prisma_runtime(tmp_path, clean_db, make_runtime), "drift"))
    assert names(report["pending"]) == ["20260301090000_init"]
    assert any("does not exist" in note for note in report["notes"])


def test_status_shows_drift_per_database(project, tmp_path, clean_db, make_runtime):
    project.upgrade("a1b2c3")
    lines = run(alembic_runtime(tmp_path, clean_db, make_runtime), "status").data["lines"]
    line = next(line for line in lines if line["what"] == "migration drift main")
    assert line["color"] == "amber" and line["detail"] == "2 pending" and not line["safe_for_audit_job"]

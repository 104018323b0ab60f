"""Fixtures: the real Redis and PostgreSQL, a fake Slack Web API, and a bot to talk to.

Redis: the database ``$REDIS_URL`` names, flushed around each test. PostgreSQL: a
fresh database created on ``$DATABASE_URL``'s server, as its user, for the session,
dropped at the end. Without both variables: embedded servers (bot.demo.sandbox).
"""

from __future__ import annotations

import atexit
import os
import secrets
import tempfile
import textwrap
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from slack_sdk import WebClient

from bot.config.settings import load_settings
from bot.runtime.factory import Runtime
from commands import build_registry
from tests.support import commands as test_commands
from tests.support.fakeslack import FakeSlack

REPO = Path(__file__).resolve().parent.parent


def _services() -> tuple[str, str]:
    """``$REDIS_URL`` and ``$DATABASE_URL``, and nothing else: without them, embedded servers (a fresh machine).

    The tests flush the Redis database ``$REDIS_URL`` names around each test, and create (then drop) their own
    databases on ``$DATABASE_URL``'s server, as its user: point them at servers meant for it.
    """
    redis_url, database_url = os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")
    if redis_url and database_url:
        return redis_url, database_url
    from bot.demo.sandbox import Sandbox

    sandbox = Sandbox().start()
    atexit.register(sandbox.stop)
    print(f"\nREDIS_URL/DATABASE_URL not set: using embedded servers in {sandbox.directory}")
    return redis_url or sandbox.redis_db(15), database_url or sandbox.database_url


REDIS_URL, ADMIN_DATABASE_URL = _services()
SIGNING_SECRET = "test-signing-secret-0123456789"
os.environ.setdefault("TEST_OPSBOT_LOG_SECRET", "test-log-secret-0123456789")  # secrets come from the environment
BOT_TOKEN = "xoxb-test-token-0000"

# Who is who in the tests.
ADMIN, ALICE, BOB, CAROL, MALLORY = "UADMIN", "UALICE", "UBOB", "UCAROL", "UMALLORY"
USERGROUPS = {"SONCALL": [CAROL]}


@pytest.fixture(autouse=True)
def own_tempdir(tmp_path, monkeypatch):
    """Temporary files go to this test's own folder (this process and the ones it starts); none may be left."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    yield folder
    leftovers = sorted(path.name for path in folder.iterdir() if path.name.startswith("opsbot-"))
    assert not leftovers, f"opsbot left temporary files behind: {leftovers}"


@pytest.fixture(scope="session")
def database_url():
    name = f"opsbot_test_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(ADMIN_DATABASE_URL)
    params["dbname"] = name
    url = make_conninfo(**params)
    yield url
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_client():
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def own_redis():
    """A redis-server of the test's own on a free port (tests.support.servers), killed at the end: for
    tests that kill, stop or restart it, or that need a whole server to themselves."""
    from tests.support.servers import RedisServer

    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def own_state_db(tmp_path, redis_client):
    """A PostgreSQL cluster of the test's own (tests.support.servers), which it may stop or freeze, holding the action
    log, and a config using it: ``(cluster, config path)``."""
    from tests.support.servers import PostgresCluster

    with PostgresCluster() as pg:
        yield pg, write_config(tmp_path / "own-state.yaml", pg.url)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A 3-node Redis Cluster of the session's own (tests/support/redisplus.py), stopped by PID at the end.

    Its folders are the session's, not the first test's (which must leave no temporary files)."""
    from tests.support.redisplus import RedisClusterServers

    before, tempfile.tempdir = tempfile.tempdir, str(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster = RedisClusterServers()
    finally:
        tempfile.tempdir = before
    with cluster:
        yield cluster


@pytest.fixture(params=["server", "cluster"])
def dlq_layout(request, redis_client):
    """The dlq scenarios' queue on the test Redis (jobs / jobs:dead) and on a Redis Cluster ({jobs} / {jobs}:dead)."""
    from tests.support.dlqlayout import QueueLayout

    if request.param == "server":
        yield QueueLayout.server(redis_client, REDIS_URL)
        return
    with QueueLayout.cluster_test(request.getfixturevalue("redis_cluster")) as layout:
        yield layout


@pytest.fixture
def fake_slack():
    """A fake Slack as strict as Slack: a test that made it refuse anything (not ``allow()``-ed) fails."""
    with FakeSlack(usergroups=USERGROUPS, token=BOT_TOKEN) as slack:
        yield slack
    refused = slack.unexpected_refusals()
    if refused:
        pytest.fail("Slack would have refused: " + "; ".join(
            f"{c.method} -> {c.refusal} {c.answer if isinstance(c.answer, dict) else ''}"[:1500] for c in refused),
            pytrace=False)


def write_config(path: Path, database_url: str, extra: str = "", **overrides: str) -> Path:
    values = {
        "redis_url": REDIS_URL,
        "database_url": database_url,
        "api_url": "https://slack.invalid/api/",
        "confirm_ttl": "5m",
        "runbooks_dir": str(REPO / "runbooks"),
        **overrides,
    }
    text = textwrap.dedent(
        f"""
        slack:
          bot_token: ${{TEST_SLACK_BOT_TOKEN:-}}
          signing_secret: ${{TEST_SLACK_SIGNING_SECRET:-}}
          api_url: "{values['api_url']}"
          incident_channel: "#incidents"
        state:
          redis_url: "{values['redis_url']}"
          database_url: "{values['database_url']}"
          run_migrations: ${{RUN_MIGRATIONS:-true}}
          log_secret: ${{TEST_OPSBOT_LOG_SECRET:-}}
        guard:
          confirm_ttl: {values['confirm_ttl']}
        roles:
          admin: {{users: [{ADMIN}], includes: [oncall]}}
          oncall: {{users: [{ALICE}, {BOB}], groups: [SONCALL]}}
        redis:
          main: {{url: "{values['redis_url']}"}}
        databases:
          main: {{url: "{values['database_url']}"}}
        queues:
          - {{name: jobs, redis: main, ready: jobs, dead: "jobs:dead"}}
        runbooks_dir: "{values['runbooks_dir']}"
        """
    ) + textwrap.dedent(extra)
    path.write_text(text)
    return path


@pytest.fixture
def config_path(tmp_path, database_url, redis_client):
    return write_config(tmp_path / "app.yaml", database_url)


@pytest.fixture
def slack_env(monkeypatch):
    monkeypatch.setenv("TEST_SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("TEST_SLACK_SIGNING_SECRET", SIGNING_SECRET)


@pytest.fixture
def registry():
    return build_registry().add(*test_commands.COMMANDS)


@pytest.fixture
def make_runtime(config_path, registry, database_url):
    """Build runtimes on the test config (migrated, empty action log); closed after the test."""
    built: list[Runtime] = []

    def make(path: Path = config_path, slack: WebClient | None = None, migrate: bool = True,
             metrics=None) -> Runtime:
        runtime = Runtime.build(load_settings(path, env=os.environ), slack=slack, registry=registry, metrics=metrics)
        if migrate:
            runtime.state.migrate()
        built.append(runtime)
        return runtime

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS opsbot CASCADE")
    yield make
    for runtime in built:
        runtime.close()


@pytest.fixture
def runtime(make_runtime, fake_slack):
    return make_runtime(slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))

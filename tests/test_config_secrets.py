"""URLs and secrets in app.yaml: validated at load, encoded where they land, listed for redaction by value."""

from __future__ import annotations

import json
import socket
import subprocess
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import psycopg
import pytest
import redis
from psycopg.conninfo import conninfo_to_dict

from bot.config.settings import ConfigError, is_secret_key, load_settings
from bot.core.invocation import Actor, Where
from bot.runtime.factory import Runtime
from bot.runtime.targets import Targets
from tests.conftest import write_config

# Everything that breaks a URL or a connection string when pasted in raw.
NASTY = "p/a#s?s@w%rd:x&y=z 'q'\\"
ACL_PASSWORD = "u/#?@%:z&="  # an ACL rule cannot hold a space


def write(tmp_path, text: str):
    path = tmp_path / "app.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory):
    """Our own redis-server with a password and an ACL user, both full of URL delimiters; stopped by its pid."""
    port, directory = free_port(), tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        ["/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory), "--requirepass", NASTY, "--user", "ops", "on", f">{ACL_PASSWORD}", "~*", "&*",
         "+@all"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, password=NASTY)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)
    client.close()
    yield port
    proc.terminate()
    proc.wait(timeout=10)


# -- values substituted into URLs are percent-encoded where they land -----------------------------------------

def test_a_redis_password_full_of_delimiters_works_against_a_real_server(tmp_path, private_redis):
    path = write(tmp_path, f"""
        state:
          redis_url: redis://:${{REDIS_PASSWORD}}@127.0.0.1:{private_redis}/0
          database_url: postgresql://db/x
        redis:
          main: {{url: "redis://${{REDIS_USER}}:${{REDIS_USER_PASSWORD}}@127.0.0.1:{private_redis}/1"}}
          whole: {{url: "redis://${{REDIS_CREDENTIALS}}@127.0.0.1:{private_redis}/2"}}
        """)
    settings = load_settings(path, env={"REDIS_PASSWORD": NASTY, "REDIS_USER": "ops",
                                        "REDIS_USER_PASSWORD": ACL_PASSWORD, "REDIS_CREDENTIALS": f"ops:{ACL_PASSWORD}"})
    assert settings.state.redis_url == f"redis://:{quote(NASTY, safe='')}@127.0.0.1:{private_redis}/0"
    assert redis.Redis.from_url(settings.state.redis_url).ping()
    targets = Targets(settings)
    try:
        assert targets.redis("main").acl_whoami() == "ops"
        assert targets.redis("whole").acl_whoami() == "ops"
    finally:
        targets.close()


def test_a_wrong_password_is_refused_by_the_server_not_garbled_by_the_url(tmp_path, private_redis):
    path = write(tmp_path, f"""
        state:
          redis_url: redis://:${{REDIS_PASSWORD}}@127.0.0.1:{private_redis}/0
          database_url: postgresql://db/x
        """)
    settings = load_settings(path, env={"REDIS_PASSWORD": NASTY[:-1]})
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(settings.state.redis_url).ping()


def test_a_postgres_password_full_of_delimiters_survives_url_and_connection_string(tmp_path, database_url):
    params = conninfo_to_dict(database_url)
    host, port, dbname = params.get("host", "127.0.0.1"), params.get("port", "5432"), params["dbname"]
    user = params.get("user") or psycopg.connect(database_url).info.user
    path = write(tmp_path, f"""
        state:
          redis_url: redis://127.0.0.1
          database_url: postgresql://${{PGUSER_NAME}}:${{PGPASS}}@{host}:{port}/{dbname}?sslpassword=${{PGPASS}}
        databases:
          main: {{url: "host={host} port={port} dbname={dbname} user=${{PGUSER_NAME}} password=${{PGPASS}}"}}
          quoted: {{url: "host={host} port={port} dbname={dbname} user=${{PGUSER_NAME}} password='${{PGPASS}}'"}}
        """)
    settings = load_settings(path, env={"PGUSER_NAME": user, "PGPASS": NASTY})
    for url in (settings.state.database_url, settings.databases["main"].url, settings.databases["quoted"].url):
        assert conninfo_to_dict(url)["password"] == NASTY
        with psycopg.connect(url, connect_timeout=5) as conn:  # trust auth: the string must parse and connect
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert conninfo_to_dict(settings.state.database_url)["sslpassword"] == NASTY


def test_only_the_userinfo_and_query_values_are_encoded(tmp_path):
    path = write(tmp_path, """
        state:
          redis_url: ${SCHEME:-redis}://${HOST}:${PORT}/${DB}
          database_url: ${OPSBOT_DATABASE_URL:-postgresql://app:${PGPASS}@db/app}
        services:
          api:
            liveness: ${API_URL}/health?token=${TOKEN}&plain=${PLAIN}
        """)
    env = {"HOST": "cache", "PORT": "6380", "DB": "3", "PGPASS": "a/b", "API_URL": "http://api:8080/v1",
           "TOKEN": "t&u", "PLAIN": "x y"}
    settings = load_settings(path, env=env)
    assert settings.state.redis_url == "redis://cache:6380/3"
    assert settings.state.database_url == "postgresql://app:a%2Fb@db/app"  # a default is a template of its own
    assert settings.services["api"].liveness == "http://api:8080/v1/health?token=t%26u&plain=x%20y"


def test_a_whole_url_from_the_environment_is_taken_as_written(tmp_path):
    path = write(tmp_path, "state:\n  redis_url: ${REDIS_URL}\n  database_url: ${DATABASE_URL}\n")
    env = {"REDIS_URL": "redis://:p%40ss@cache:6379/0", "DATABASE_URL": "postgresql://app:p%2Fw@db/app"}
    settings = load_settings(path, env=env)
    assert (settings.state.redis_url, settings.state.database_url) == (env["REDIS_URL"], env["DATABASE_URL"])


# -- URLs are validated at load, never quoting the URL ------------------------------------------------------

@pytest.mark.parametrize("url, message", [
    ("127.0.0.1:6379/11", "not a Redis URL: it has no scheme"),
    ("http://:hunter2@cache:6379", "not a Redis URL: the scheme must be redis://, rediss:// or unix://"),
    ("redis://:hunter2@cache:port/0", "not a valid Redis URL: the host or port is malformed"),
    ("redis://:hunter2@cache:6379/zero", "not a valid Redis URL: the path must be the database number"),
    ("redis://:hunter2@cache:6379/0?db=x", "not a valid Redis URL: a query parameter has a bad value"),
    ("redis://:hunter2@cache:6379/0?socket_timeout=x", "not a valid Redis URL: a query parameter has a bad value"),
    ("redis://:hun%zzter2@cache", "not a valid Redis URL: a '%' in the user or password is not followed by two"),
    ("unix://", "not a valid Redis URL: unix:// needs the socket's path"),
])
def test_a_bad_redis_url_says_what_a_good_one_looks_like(tmp_path, url, message):
    text = "state:\n  redis_url: ${URL}\n  database_url: postgresql://db/x\n"
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), env={"URL": url})
    assert f"app.yaml:2: state.redis_url: {message}" in str(caught.value)
    assert "write redis://[[user]:password@]host[:port][/db]" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("url, message", [
    ("postgres//app:hunter2@db/app", "not a PostgreSQL URL or connection string"),
    ("mysql://app:hunter2@db/app", "not a PostgreSQL URL: the scheme must be postgresql:// or postgres://"),
    ("postgresql://app:hunter2@db:99999/app", "not a valid PostgreSQL URL: the host or port is malformed"),
    ("postgresql://app:hunter2@db/app?host=%zz", "not a valid PostgreSQL URL (percent-encode special characters)"),
    ("host=db password=hunter2 bogus=1", "not a valid PostgreSQL connection string"),
    ("host=db port=x password=hunter2", "not a valid PostgreSQL connection string: the port must be a number"),
])
def test_a_bad_postgres_url_says_what_a_good_one_looks_like(tmp_path, url, message):
    text = "state:\n  redis_url: redis://h\n  database_url: ${URL}\ndatabases:\n  main: {url: '${URL}'}\n"
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), env={"URL": url})
    assert f"app.yaml:3: state.database_url: {message}" in str(caught.value)
    assert "app.yaml:5: databases.main.url: " in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("url", ["redis://h", "rediss://u:p@h:6380/3", "unix:///tmp/r.sock?db=2", "redis://[::1]:6379"])
def test_good_redis_urls_pass(tmp_path, url):
    path = write(tmp_path, "state:\n  redis_url: ${URL}\n  database_url: postgresql://db/x\n")
    assert load_settings(path, env={"URL": url}).state.redis_url == url


@pytest.mark.parametrize("url", ["postgresql://db/x", "postgres://u:p@db:5432/x?sslmode=require",
                                 "host=/tmp dbname=x", "postgresql://postgres:@/postgres?host=/tmp/pg",
                                 "host=a,b port=5432,5433 dbname=x"])
def test_good_postgres_urls_pass(tmp_path, url):
    path = write(tmp_path, "state:\n  redis_url: redis://h\n  database_url: ${URL}\n")
    assert load_settings(path, env={"URL": url}).state.database_url == url


# -- which names are secrets -----------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["password", "smtp_password", "signing_secret", "bot_token", "key", "api_key",
                                 "apikey", "apiKey", "APIKey", "x-api-key", "private_key", "secret_key", "access_key",
                                 "signing_key", "encryption_key", "auth_key", "master_key", "client_key",
                                 "AWS_SECRET_ACCESS_KEY", "INTERNAL_API_KEY", "SMTP_PASS", "privateKey"])
def test_secret_names(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["ready_key", "dead_key", "cache_key", "idempotency_key", "primary_key",
                                 "foreign_key", "public_key", "sort_key", "key_name", "monkey", "PWD", "page_url"])
def test_names_that_are_not_secrets(key):
    assert not is_secret_key(key)


# -- Settings.secret_values(): every secret the configuration holds, to redact by value ----------------------

SECRETS_YAML = """
    slack:
      bot_token: ${SLACK_BOT_TOKEN:-}
      signing_secret: ${SLACK_SIGNING_SECRET:-}
    state:
      redis_url: redis://:${REDIS_PASSWORD}@cache:6379/0
      database_url: postgresql://app:${PGPASS}@db/app?sslmode=require&sslpassword=${SSLPASS}
    redis:
      main: {url: "redis://cache:6379/1"}
    databases:
      conninfo: {url: "host=db dbname=app user=app password=${CONNINFO_PASS}"}
    queues:
      - {name: jobs, redis: main, ready: jobs, dead: "jobs:dead"}
      - {name: exports, backend: http, url: "https://api/admin?access_token=${ADMIN_TOKEN}", token: "${ADMIN_API_KEY}"}
    services:
      api:
        liveness: https://api/health/${HEALTH_TOKEN}
        expect: {ok: true, api_key: "${EXPECTED_KEY}", cache_key: "${CACHE_KEY_NAME}"}
        auth_header: x-internal-key
        auth_token: ${INTERNAL_API_KEY}
    email:
      smtp: {host: smtp.example, username: mailer, password: "${SMTP_PASS}"}
    audit:
      snapshot_secret: ${AUDIT_SNAPSHOT_SECRET}
    incidents:
      page_url: ${PAGER_WEBHOOK_URL}
    """
SECRETS_ENV = {
    "SLACK_BOT_TOKEN": "xoxb-bot-token", "REDIS_PASSWORD": "r/pw", "PGPASS": "pg pw", "SSLPASS": "ssl-pw",
    "CONNINFO_PASS": "conninfo-pw", "ADMIN_TOKEN": "admin-t0ken", "ADMIN_API_KEY": "admin-api-key",
    "HEALTH_TOKEN": "health-token-in-path", "EXPECTED_KEY": "expected-key", "CACHE_KEY_NAME": "jobs-cache",
    "INTERNAL_API_KEY": "internal-key", "SMTP_PASS": "smtp#pass", "AUDIT_SNAPSHOT_SECRET": "audit-secret",
    "PAGER_WEBHOOK_URL": "https://hooks.example/T0/B0/pager-secret",
}


def test_secret_values_lists_every_secret_and_nothing_else(tmp_path):
    values = load_settings(write(tmp_path, SECRETS_YAML), env=SECRETS_ENV).secret_values()
    expected = {"xoxb-bot-token", "r/pw", "r%2Fpw", "pg pw", "pg%20pw", "ssl-pw", "conninfo-pw", "admin-t0ken",
                "admin-api-key", "health-token-in-path", "expected-key", "internal-key", "smtp#pass", "smtp%23pass",
                "audit-secret", "https://hooks.example/T0/B0/pager-secret",
                quote("https://hooks.example/T0/B0/pager-secret", safe="")}
    assert set(values) == expected
    assert len(values) == len(set(values))
    for not_secret in ("jobs-cache", "jobs", "jobs:dead", "mailer", "app", "x-internal-key", "require", ""):
        assert not_secret not in values


def test_secret_values_of_the_default_app_yaml_without_secrets_is_empty():
    from tests.conftest import REPO

    assert load_settings(REPO / "app.yaml", env={}).secret_values() == []


def test_secrets_in_whole_urls_from_the_environment_are_found(tmp_path):
    path = write(tmp_path, "state:\n  redis_url: ${REDIS_URL}\n  database_url: ${DATABASE_URL}\n")
    env = {"REDIS_URL": "redis://u:p%40ss@cache:6379/0", "DATABASE_URL": "postgresql://db/app?password=pq%2Fpw"}
    values = load_settings(path, env=env).secret_values()
    assert {"p%40ss", "p@ss", "pq%2Fpw", "pq/pw"} <= set(values)
    assert "u" not in values


def test_the_runtime_redacts_every_configured_secret_by_value(tmp_path):
    runtime = Runtime.build(load_settings(write(tmp_path, SECRETS_YAML), env=SECRETS_ENV))
    try:
        text = "smtp said smtp#pass; pager https://hooks.example/T0/B0/pager-secret; health-token-in-path; r%2Fpw"
        redacted = runtime.redactor.text(text)
        for secret in ("smtp#pass", "pager-secret", "health-token-in-path", "r%2Fpw"):
            assert secret not in redacted, redacted
        assert runtime.redactor.data({"ready_key": "jobs", "dead_key": "jobs:dead"}) == {
            "ready_key": "jobs", "dead_key": "jobs:dead"}
    finally:
        runtime.close()


# -- the pager webhook URL is a secret: used, never shown -------------------------------------------------------

class _Pager(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def pager():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pager)
    _Pager.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


INCIDENTS = """
    incidents:
      page_url: ${TEST_PAGER_URL}
      severities:
        sev1: {description: "Full outage", response: 15m, page: true, notify: [SONCALL]}
        sev2: {description: "Degraded", response: 30m}
"""


def test_a_sev1_posts_to_the_secret_pager_webhook(make_runtime, tmp_path, database_url, pager, monkeypatch):
    monkeypatch.setenv("TEST_PAGER_URL", f"{pager}/hook/pager-secret-token")
    runtime = make_runtime(write_config(tmp_path / "pager.yaml", database_url, extra=INCIDENTS))
    assert runtime.settings.incidents.page_url.get_secret_value().endswith("/hook/pager-secret-token")
    assert "pager-secret-token" not in repr(runtime.settings.incidents)
    outcome = runtime.engine.handle("incident declare sev1 Everything is down", Actor.local("ops"), Where("cli"))
    assert outcome.result.status == "ok"
    assert _Pager.received and _Pager.received[0][0] == "/hook/pager-secret-token"
    assert _Pager.received[0][1]["severity"] == "sev1"
    assert "pager webhook answered HTTP 204" in str(outcome.result.data)


def test_a_failing_pager_webhook_does_not_print_its_url(make_runtime, tmp_path, database_url, monkeypatch):
    monkeypatch.setenv("TEST_PAGER_URL", f"http://127.0.0.1:{free_port()}/hook/pager-secret-token")
    runtime = make_runtime(write_config(tmp_path / "pager.yaml", database_url, extra=INCIDENTS))
    outcome = runtime.engine.handle("incident declare sev1 Everything is down", Actor.local("ops"), Where("cli"))
    assert "pager webhook failed: the pager webhook did not answer" in str(outcome.result.data)
    timeline = runtime.engine.handle("incident timeline --incident INC-1", Actor.local("ops"), Where("cli"))
    for text in (str(outcome.result), str(timeline.result)):
        assert "pager-secret-token" not in text and "/hook/" not in text


def test_a_page_url_literal_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="incidents.page_url: secrets must come from the environment"):
        load_settings(write(tmp_path, "state: {redis_url: redis://h, database_url: postgresql://d/x}\n"
                                      "incidents: {page_url: 'https://hooks.example/x'}\n"), env={})

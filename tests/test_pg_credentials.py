"""Credentials and TLS settings of database targets, and passwords substituted into URLs: a password with
``/``, ``#``, ``?``, ``@`` and ``%`` works in a PostgreSQL and a Redis URL, checked by real servers that verify it
(PgBouncer with SCRAM, redis-server with requirepass); a wrong one fails without showing it."""

from __future__ import annotations

import pytest

from bot.runtime.checks import run_checks
from tests.conftest import write_config
from tests.support.pgbouncer import PgBouncer
from tests.support.servers import RedisServer

PASSWORD = "p/w#?@x%2Fy z'\""


def checks_by_target(result):
    return {c["target"]: c for c in result.data["checks"]}


@pytest.fixture
def guarded(database_url):
    with PgBouncer(database_url, pool_size=2, password=PASSWORD) as bouncer:
        yield bouncer


def _runtime(tmp_path, database_url, make_runtime, database_yaml: str, redis_url: str | None = None):
    path = write_config(tmp_path / "app.yaml", database_url)
    text = path.read_text().replace(f'  main: {{url: "{database_url}"}}', database_yaml)
    if redis_url:
        text = text.replace("redis:\n  main: {url:", f"redis:\n  secure: {{url: '{redis_url}'}}\n  main: {{url:")
    path.write_text(text)
    return make_runtime(path)


def test_a_substituted_password_with_url_delimiters_works_in_postgres_and_redis_urls(
        guarded, tmp_path, database_url, make_runtime, redis_client, monkeypatch):
    monkeypatch.setenv("PG_PASSWORD", PASSWORD)
    monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)
    url = guarded.url.replace("postgresql://postgres@", "postgresql://postgres:${PG_PASSWORD}@")
    with RedisServer("--requirepass", PASSWORD) as secured:
        runtime = _runtime(tmp_path, database_url, make_runtime, f"  main: {{url: '{url}?pgbouncer=true'}}",
                           redis_url=secured.url.replace("redis://", "redis://:${REDIS_PASSWORD}@"))
        found = checks_by_target(run_checks(runtime))
    assert found["database main"]["ok"], found["database main"]
    assert found["redis secure"]["ok"], found["redis secure"]


def test_username_and_password_settings_and_a_wrong_password_never_shown(guarded, tmp_path, database_url,
                                                                           make_runtime, redis_client, monkeypatch):
    monkeypatch.setenv("PG_PASSWORD", PASSWORD)
    plain = guarded.url.replace("postgresql://postgres@", "postgresql://nobody@")
    yaml = (f"  main: {{url: '{plain}', pooler: transaction, username: postgres, password: '${{PG_PASSWORD}}',"
            " sslmode: disable}")
    found = checks_by_target(run_checks(_runtime(tmp_path, database_url, make_runtime, yaml)))
    assert found["database main"]["ok"], found["database main"]
    assert "pooler: transaction mode" in found["database main"]["detail"]

    monkeypatch.setenv("PG_PASSWORD", "wrong/#?@" + PASSWORD[::-1])
    other = tmp_path / "wrong"
    other.mkdir()
    result = run_checks(_runtime(other, database_url, make_runtime, yaml))
    detail = checks_by_target(result)["database main"]["detail"]
    assert checks_by_target(result)["database main"]["level"] == "fail" and "unreachable" in detail
    assert "wrong/" not in str(result.data) and PASSWORD not in str(result.data)


def test_tls_settings_reach_libpq(tmp_path, database_url, make_runtime, redis_client):
    """sslmode require against a server without TLS: libpq refuses, so the settings really reach it."""
    yaml = f"  main: {{url: \"{database_url}\", tls: true, ca_file: certs/ca.pem}}"
    found = checks_by_target(run_checks(_runtime(tmp_path, database_url, make_runtime, yaml)))
    detail = found["database main"]["detail"]
    assert found["database main"]["level"] == "fail"
    assert "SSL" in detail or "certs/ca.pem" in detail or "root certificate" in detail, detail

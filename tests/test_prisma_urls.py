"""Prisma-style DATABASE_URLs as opsbot's first command meets them: through `check` and a command, directly and
behind a real PgBouncer; what libpq gets, what opsbot takes, and that no secret ever shows."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from bot.config.pgurl import MAX_PARAMS, pg_params, with_settings
from bot.config.settings import ConfigError, load_settings
from bot.runtime.checks import run_checks
from tests.support.pgbouncer import PgBouncer
from tests.test_drift import PRISMA_TABLE, database, run
from tests.test_pooler import NO_LIMITS
from tests.conftest import write_config


def checks_by_target(result):
    return {c["target"]: c for c in result.data["checks"]}


@pytest.fixture
def app_schema(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS crm CASCADE")
        conn.execute("CREATE SCHEMA crm")
        conn.execute("SET search_path TO crm")
        conn.execute(PRISMA_TABLE)
    return database_url


def _url(database_url: str, host_port: str | None = None) -> str:
    info = conninfo_to_dict(database_url)
    return f"postgresql://{info.get('user') or 'postgres'}@{host_port or '127.0.0.1:' + str(info.get('port') or 5432)}" \
           f"/{info['dbname']}"


def prisma_runtime(tmp_path, state_url, app_url, make_runtime):
    path = write_config(tmp_path / "app.yaml", state_url, extra=NO_LIMITS)
    text = path.read_text().replace(f'  main: {{url: "{state_url}"}}',
                                    f'  main: {{url: "{app_url}", migrations: {{tool: prisma, source: migrations}}}}')
    path.write_text(text)
    (tmp_path / "migrations").mkdir()
    return make_runtime(path)


def test_a_prisma_url_is_the_first_command_that_works(tmp_path, app_schema, make_runtime, redis_client):
    url = _url(app_schema) + "?schema=crm&connection_limit=3&pool_timeout=0&sslmode=disable&connect_timeout=5"
    runtime = prisma_runtime(tmp_path, url, url, make_runtime)

    report = database(run(runtime, "drift"))  # _prisma_migrations is found in crm, the URL's schema
    assert report["notes"] == [] and report["pending"] == []
    found = checks_by_target(run_checks(runtime))
    assert found["state postgres"]["ok"] and found["database main"]["ok"], found
    assert "schema: the search_path" in found["database main"]["detail"]
    assert "pooler: none (each connection kept its own server session)" in found["database main"]["detail"]
    assert runtime.state.pool.max_size == 3


def test_behind_pgbouncer_check_says_which_mode_and_refuses_an_unset_pooler(tmp_path, app_schema, make_runtime,
                                                                            redis_client):
    with PgBouncer(app_schema, pool_size=2) as bouncer:
        pooled = bouncer.url + "?pgbouncer=true&schema=crm&connection_limit=1&foo=%3Cb%3Ebar%3C%2Fb%3E"
        runtime = prisma_runtime(tmp_path, pooled, pooled, make_runtime)
        result = run_checks(runtime)
        found = checks_by_target(result)
        for target in ("state postgres", "database main"):
            assert "pooler: transaction mode (no prepared statements; detected)" in found[target]["detail"], found
            assert "query parameter 'foo' left out: neither libpq nor Prisma knows it" in found[target]["detail"]
            assert found[target]["level"] == "warn"
        assert database(run(runtime, "drift"))["pending"] == []

        plain = tmp_path / "plain"
        plain.mkdir()
        runtime = prisma_runtime(plain, _url(app_schema), bouncer.url + "?schema=crm", make_runtime)
        found = checks_by_target(run_checks(runtime))
        assert found["database main"]["level"] == "fail"
        assert "a transaction-mode pooler answers" in found["database main"]["detail"]
        assert "set databases.main.pooler: transaction" in found["database main"]["detail"]


def test_the_pooler_setting_wins_over_the_url(tmp_path):
    assert pg_params("postgresql://db/app?pgbouncer=true", "session").pooler == "session"
    assert pg_params("postgresql://db/app?pgbouncer=true", None).pooler == "transaction"
    assert pg_params("postgresql://db/app", "transaction").prepare is False
    assert pg_params("postgresql://db/app?statement_cache_size=0").prepare is False
    assert pg_params("postgresql://db/app").prepare is True


def test_prisma_parameters_map_and_unknown_ones_never_reach_libpq():
    params = pg_params("postgresql://u:p%40ss@db:6543/app?schema=crm&pgbouncer=true&connection_limit=5"
                       "&pool_timeout=20&sslmode=require&sslcert=ca.pem&sslaccept=strict&socket_timeout=3&weird=1"
                       "&application_name=x#frag")
    info = conninfo_to_dict(params.conninfo)  # libpq accepts what is left
    assert info["password"] == "p@ss" and info["sslmode"] == "require" and info["sslrootcert"] == "ca.pem"
    assert "sslcert" not in info and "schema" not in params.conninfo and "weird" not in params.conninfo
    assert (params.schema, params.pool_size, params.pool_timeout, params.pooler) == ("crm", 5, 20.0, "transaction")
    client = pg_params("postgresql://db/app?sslcert=client.crt&sslkey=client.key")
    assert conninfo_to_dict(client.conninfo)["sslcert"] == "client.crt"  # with a key: libpq's client certificate
    for bad in ("connection_limit=0", "connection_limit=-1", "connection_limit=x", "pool_timeout=nan",
                "connection_limit=99999999999999999999"):
        found = pg_params(f"postgresql://db/app?{bad}")
        assert found.pool_size is None and any("left out: not a number in range" in n for n in found.notes), bad


def test_settings_override_the_url_and_values_are_quoted_for_libpq():
    params = with_settings(pg_params("postgresql://app:old@db/app?sslmode=disable"),
                           user="svc user", password="p'w /#?@", sslmode="verify-full", sslrootcert="/etc/ca.pem")
    info = conninfo_to_dict(params.conninfo)
    assert (info["user"], info["password"], info["sslmode"]) == ("svc user", "p'w /#?@", "verify-full")


@pytest.mark.parametrize("url", [
    "postgresql://app:${PW}@db/app?" + "&".join(f"p{i}=1" for i in range(MAX_PARAMS + 1)),
    "postgresql://app:${PW}@db/app?schema=" + "x" * 100_000,
    "postgresql://app:${PW}@db/app?%ff%fe=%00&&&==&sslmode=%zz",
    "postgresql://app:${PW}@db/app?host=%zz",
    "postgresql://app:${PW}@[::1/app",
    "postgresql://app:${PW}@db:99999/app",
])
def test_hostile_urls_never_print_the_password(tmp_path, url):
    secret = "S3cr3t/#?@"
    text = f"state:\n  redis_url: redis://h\n  database_url: '{url}'\ndatabases:\n  main: {{url: '{url}'}}\n"
    (tmp_path / "app.yaml").write_text(text)
    try:
        settings = load_settings(tmp_path / "app.yaml", env={"PW": secret})
    except ConfigError as exc:
        assert secret not in str(exc) and "S3cr3t" not in str(exc) and "S3cr3t" not in repr(exc.problems)
        return
    params = pg_params(settings.databases["main"].url)  # loaded: the parameters were sorted, nothing leaked
    assert all("S3cr3t" not in note for note in params.notes)
    assert len(" ".join(params.notes)) < 20_000


@pytest.mark.parametrize("url", ["postgresql://u:sEcr?et@db/app", "postgresql://u:sEcr?e=t@db:5432/app?schema=x"])
def test_a_raw_question_mark_in_a_password_is_refused_not_read_as_a_query(url):
    params = pg_params(url)
    assert params.problem and "percent-encoded" in params.problem and "sEcr" not in params.problem
    assert pg_params("postgresql://u@db/app?application_name=a@b&sslrootcert=/x@y/ca.pem").problem is None


def test_connection_limit_one_still_runs_guarded_commands_and_a_trim(tmp_path, app_schema, make_runtime,
                                                                    redis_client, database_url):
    """Serverless Prisma URLs say connection_limit=1: the bot's whole pool is then one connection."""
    from bot.core.invocation import Actor
    from tests.conftest import ALICE
    from tests.support.dlq import archive_rows, dead_letter, kill
    from tests.test_pooler import OPS

    url = _url(app_schema) + "?connection_limit=1&pool_timeout=10"
    runtime = prisma_runtime(tmp_path, url, url, make_runtime)
    assert runtime.state.pool.max_size == 1
    for _ in range(3):
        preview = runtime.engine.handle("test bump", Actor(ALICE), OPS)
        assert runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS).result.status == "ok"
    entries = [dead_letter(i) for i in range(300)]
    kill(redis_client, entries)
    preview = runtime.engine.handle("dlq trim jobs --keep 0", Actor(ALICE), OPS)
    done = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS).result
    assert done.status == "ok", done.summary
    assert [row[2] for row in archive_rows(database_url)] == entries
    assert runtime.engine.handle("log verify", Actor(ALICE), OPS).result.status == "ok"

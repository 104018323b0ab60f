"""Gauges on ``/metrics`` of a real ``opsbot serve`` (with a real worker process), refreshed by scheduled
``dlq status``, ``drift`` and ``audit verify`` runs against real Redis and PostgreSQL; then a real
Prometheus scrapes them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BOT_TOKEN, REPO, SIGNING_SECRET, write_config
from tests.support.audit import AuditChain
from tests.support.packages import debian_binary
from tests.support.servers import free_port
from tests.test_drift import PrismaProject


def _samples(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def world(tmp_path, database_url, redis_client, fake_slack):
    """Three dead letters; a Prisma project with one pending and one edited migration; two audit chains, one broken."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS opsbot CASCADE")
        conn.execute("DROP SCHEMA IF EXISTS app CASCADE")
        conn.execute("CREATE SCHEMA app")
    for n in range(3):
        redis_client.lpush("jobs:dead", f'{{"id": "j{n}", "type": "email", "error": "SMTP 421"}}')
    project = PrismaProject(tmp_path, database_url)
    project.add("20260301090000_init", 'CREATE TABLE "Case" (id text PRIMARY KEY);\n')
    project.deploy("20260301090000_init")
    (project.folder / "20260301090000_init" / "migration.sql").write_text('CREATE TABLE "Case" (id text);\n')
    project.add("20260305120000_next", 'CREATE TABLE "Other" (id text PRIMARY KEY);\n')
    chain = AuditChain(database_url).create()
    chain.append("tenant-a", 4)
    chain.append("tenant-b", 3)
    broken = chain.rows("tenant-b")[1][0]
    chain.sql('UPDATE "AuditLog" SET action = \'edited by hand\' WHERE id = %s', (broken,))
    path = write_config(tmp_path / "app.yaml", database_url, api_url=fake_slack.api_url, extra="""
        schedules:
          - {every: 10s, run: dlq status}
          - {every: 10s, run: drift}
          - {name: audit all, every: 10s, run: audit verify --all}
          - {name: audit tenant-a, every: 10s, run: audit verify tenant-a}
        """)
    path.write_text(path.read_text().replace(
        f'  main: {{url: "{database_url}"}}',
        f'  main: {{url: "{database_url}", migrations: {{tool: prisma, source: prisma/migrations, schema: app}}}}'))
    yield path
    with psycopg.connect(database_url, autocommit=True) as conn:  # the session's database as other tests expect it
        conn.execute('DROP TABLE IF EXISTS "AuditLog"')
        conn.execute("DROP SCHEMA IF EXISTS app CASCADE")


@pytest.fixture
def serve(world):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bot", "--config", str(world), "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1", "--shutdown-deadline", "10"],
                            cwd=REPO, env={**os.environ, "RUN_MIGRATIONS": "true", "TEST_SLACK_BOT_TOKEN": BOT_TOKEN,
                                 "TEST_SLACK_SIGNING_SECRET": SIGNING_SECRET},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: proc.poll() is not None or _up(port), 30, "serve")
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()  # this process only, by its PID; it stops its worker
        try:
            proc.wait(30)
        finally:
            proc.stderr.close()


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


EXPECTED = {
    ("opsbot_dead_letters", (("queue", "jobs"),)): 3.0,
    ("opsbot_migrations", (("database", "main"), ("state", "pending"))): 1.0,
    ("opsbot_migrations", (("database", "main"), ("state", "edited"))): 1.0,
    ("opsbot_migrations", (("database", "main"), ("state", "failed"))): 0.0,
    ("opsbot_audit_chain_valid", (("tenant", "tenant-a"),)): 1.0,
    ("opsbot_audit_chain_valid", (("tenant", "tenant-b"),)): 0.0,
}


def test_scheduled_runs_feed_the_gauges_of_a_real_serve_and_prometheus_scrapes_them(serve, tmp_path, fake_slack):
    def scraped():
        samples = _samples(httpx.get(f"{serve}/metrics", timeout=5).text)
        wanted = [("opsbot_schedule_last_run_timestamp_seconds", (("schedule", name),))
                  for name in ("dlq status", "drift", "audit all", "audit tenant-a")]
        done = all(key in samples for key in [*EXPECTED, *wanted])
        return samples if done else None

    samples = _wait(scraped, 90, "the scheduled runs' gauges on /metrics")
    for key, value in EXPECTED.items():
        assert samples[key] == value, key
    success = ("opsbot_schedule_last_success_timestamp_seconds", (("schedule", "audit tenant-a"),))
    assert abs(samples[success] - time.time()) < 120
    assert ("opsbot_schedule_last_success_timestamp_seconds", (("schedule", "audit all"),)) not in samples  # fail
    assert samples[("opsbot_schedule_ok", (("schedule", "audit all"),))] == 0.0
    assert any(name == "process_cpu_seconds_total" for name, _ in samples)
    assert any(name == "python_info" for name, _ in samples)
    # the failing checks were posted to the incident channel, once each (post: on_change)
    def posted(slack):  # a run sets its gauges, then posts: wait for both posts
        texts = [c.body["text"] for c in slack._calls if c.method == "chat.postMessage" and c.ok]
        return texts if any("check audit all" in t for t in texts) and any("check drift" in t for t in texts) else None

    posted = fake_slack.wait(posted, timeout=60)
    assert sum("Scheduled check audit all" in text for text in posted) == 1
    assert sum("Scheduled check drift" in text for text in posted) == 1

    # A real Prometheus scrapes the same endpoint and answers a query on the gauge the alert rules use.
    binary = debian_binary("prometheus", "prometheus")
    port, storage = free_port(), tmp_path / "prometheus-data"
    (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: opsbot
    static_configs: [{{targets: ["{serve.removeprefix('http://')}"]}}]
""")
    prometheus = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={storage}", f"--web.listen-address=127.0.0.1:{port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def query(expr: str):
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expr}, timeout=5).json()
            except (httpx.TransportError, ValueError):
                return None
            return answer["data"]["result"] if answer.get("status") == "success" else None

        dead = _wait(lambda: query('opsbot_dead_letters{queue="jobs"} > 0'), 60, "Prometheus to scrape opsbot")
        assert dead[0]["metric"]["job"] == "opsbot" and float(dead[0]["value"][1]) == 3.0
        invalid = query("opsbot_audit_chain_valid == 0")
        assert [r["metric"]["tenant"] for r in invalid] == ["tenant-b"]
        assert query('time() - opsbot_schedule_last_success_timestamp_seconds{schedule="audit tenant-a"} < 300')
    finally:
        prometheus.terminate()  # by the PID this test started
        prometheus.wait(30)

"""Email triage, retry and reminders against the real PostgreSQL, and a real SMTP server on loopback."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import psycopg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from bot.render.text import to_text
from bot.core.invocation import Actor, Where
from commands.email import normalized_error
from tests.conftest import ALICE, write_config
from tests.support import email as data

OPS = Where("C-ops", channel_name="ops")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return key, cert


class Sink:
    async def handle_DATA(self, server, session, envelope):  # never reached: the probe sends nothing
        raise AssertionError("the probe must not send mail")


@pytest.fixture
def smtp_server(certificate):
    import ssl

    key, cert = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"mailer", b"s3cret")
        return AuthResult(success=ok, handled=False)  # let the server answer 535 itself

    controller = Controller(Sink(), hostname="127.0.0.1", port=free_port(), tls_context=context,
                            require_starttls=True, authenticator=authenticator, auth_require_tls=True)
    controller.start()
    yield controller.port, cert
    controller.stop()


@pytest.fixture
def silent_server():
    """Accepts connections and never says a word (a provider hanging at the greeting)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def email_runtime(tmp_path, database_url, make_runtime, **email):
    lines = ["email:", "  database: main"]
    smtp = email.pop("smtp", None)
    for key, value in email.items():
        lines.append(f"  {key}: {value}")
    if smtp:
        lines.append("  smtp:")
        lines += [f"    {key}: {value}" for key, value in smtp.items()]
    path = write_config(tmp_path / "app.yaml", database_url, extra="\n".join(lines) + "\n")
    return make_runtime(path)


@pytest.fixture
def world(database_url):
    data.create(database_url)
    return database_url


def run(runtime, text, user=ALICE):
    return runtime.engine.handle(text, Actor(user), OPS)


# -- triage ---------------------------------------------------------------------------------

def test_normalisation_keeps_ids_and_numbers_from_splitting_groups():
    a = normalized_error("Connection timed out after 30000ms for message 1b2c3d4e-aaaa-bbbb-cccc-0123456789ab")
    b = normalized_error("Connection timed out after 30000ms for message 99999999-aaaa-bbbb-cccc-ffffffffffff")
    assert a == b == "Connection timed out after <n>ms for message <id>"


def test_triage_groups_stuck_and_failed_mail(tmp_path, world, make_runtime, monkeypatch):
    monkeypatch.delenv("DRY_RUN_EMAILS", raising=False)
    runtime = email_runtime(tmp_path, world, make_runtime)

    result = run(runtime, "email triage").result

    stuck = {(row["tenant"], row["status"]): row["count"] for row in result.data["stuck"]}
    assert sum(stuck.values()) == 120 and stuck[("tenant-1", "pending")] == 60
    failures = result.data["failures"]
    assert [f["error"] for f in failures] == [
        "SMTP <n> <n>.<n>.<n> Try again later, closing connection (conn <n>)",
        "Connection timed out after <n>ms to smtp.example.com for message <id>",
        "<n> <n>.<n>.<n> Authentication credentials invalid",
    ]
    assert [f["count"] for f in failures] == [540, 270, 90]
    assert failures[0]["latest_example"].startswith("SMTP 421 4.7.0 Try again later")
    assert result.status == "fail" and "most failures are `SMTP <n>" in result.data["verdict"]
    assert "runbook email-not-sending" in str(result.sections)


def test_triage_for_one_tenant_and_a_short_window(tmp_path, world, make_runtime):
    runtime = email_runtime(tmp_path, world, make_runtime)
    result = run(runtime, "email triage --tenant tenant-2 --since 3h").result
    assert {row["tenant"] for row in result.data["stuck"]} == {"tenant-2"}
    # failed i has tenant i % 3 and updated 1 + i % 20 hours ago: tenant-2 within 3h is i%3==2, i%20 in {0,1}
    expected = len([i for i in range(900) if i % 3 == 2 and 1 + i % 20 < 3])
    assert sum(f["count"] for f in result.data["failures"]) == expected


def test_dry_run_in_production_is_flagged_loudly(tmp_path, world, make_runtime, monkeypatch):
    monkeypatch.setenv("DRY_RUN_EMAILS", "true")
    runtime = email_runtime(tmp_path, world, make_runtime)
    result = run(runtime, "email triage").result
    assert result.data["dry_run"] is True
    assert result.status == "fail" and result.data["verdict"].startswith("DRY_RUN_EMAILS is on in production")


def test_daily_cap_is_not_mistaken_for_an_outage(tmp_path, world, make_runtime, monkeypatch):
    monkeypatch.delenv("DRY_RUN_EMAILS", raising=False)
    runtime = email_runtime(tmp_path, world, make_runtime, daily_cap=10)
    with psycopg.connect(world) as conn:  # today's, whatever the hour: the world's mail is hours old (yesterday's
        conn.cursor().executemany(        # just after midnight UTC)
            'INSERT INTO "Communication" (id, "tenantId", status, "createdAt", "updatedAt", attempts)'
            " VALUES (%s, 'tenant-1', 'sent', now(), now(), 1)", [(f"c-today-{i}",) for i in range(10)])
    result = run(runtime, "email triage").result
    assert "tenant-1" in result.data["capped_tenants"]
    assert result.status == "warn" and "blocked by the cap, not an outage" in result.data["verdict"]


# -- the SMTP probe -------------------------------------------------------------------------

def probe_result(tmp_path, world, make_runtime, **smtp):
    runtime = email_runtime(tmp_path, world, make_runtime, smtp={"host": "127.0.0.1", "timeout": "2s", **smtp})
    return run(runtime, "email triage").result


def test_probe_passes_connect_ehlo_starttls_and_auth_without_sending(tmp_path, world, make_runtime, smtp_server,
                                                                     monkeypatch):
    port, cert = smtp_server
    monkeypatch.setenv("TEST_SMTP_PASS", "s3cret")
    result = probe_result(tmp_path, world, make_runtime, port=port, username="mailer",
                          password="${TEST_SMTP_PASS}", ca_file=str(cert))
    smtp = result.data["smtp"]
    assert smtp["ok"] is True
    assert [s["name"] for s in smtp["steps"]] == ["connect", "ehlo", "starttls", "ehlo after starttls", "auth"]
    assert all(s["ms"] >= 0 for s in smtp["steps"])


def test_probe_names_rejected_credentials(tmp_path, world, make_runtime, smtp_server, monkeypatch):
    port, cert = smtp_server
    monkeypatch.setenv("TEST_SMTP_PASS", "wrong")
    result = probe_result(tmp_path, world, make_runtime, port=port, username="mailer",
                          password="${TEST_SMTP_PASS}", ca_file=str(cert))
    failed = [s for s in result.data["smtp"]["steps"] if not s["ok"]]
    assert failed[0]["name"] == "auth" and failed[0]["detail"].startswith("535")
    assert result.status == "fail" and "fails at auth (535" in result.data["verdict"]
    assert "wrong" not in str(result.data)


def test_probe_names_a_failed_starttls(tmp_path, world, make_runtime, smtp_server):
    port, _ = smtp_server  # no CA file: the provider's certificate is not trusted
    result = probe_result(tmp_path, world, make_runtime, port=port)
    failed = [s for s in result.data["smtp"]["steps"] if not s["ok"]]
    assert failed[0]["name"] == "starttls" and "CERTIFICATE_VERIFY_FAILED" in failed[0]["detail"]


def test_probe_names_a_refused_connection(tmp_path, world, make_runtime):
    result = probe_result(tmp_path, world, make_runtime, port=free_port())
    failed = result.data["smtp"]["steps"][0]
    assert failed["name"] == "connect" and not failed["ok"] and "Connection refused" in failed["detail"]
    assert "check connectivity" in result.data["verdict"] and "credentials" not in result.data["verdict"]
    text = to_text(result)  # the failed step's reason lines up under the probe's steps
    lines = text.splitlines()
    probe_line = next(i for i, line in enumerate(lines) if line.startswith("  SMTP 127.0.0.1:"))
    assert lines[probe_line + 1].lstrip().startswith("connect: ConnectionRefusedError")
    assert lines[probe_line + 1].startswith(" " * (lines[probe_line].index("connect FAILED")))


def test_probe_times_out_on_a_silent_server(tmp_path, world, make_runtime, silent_server):
    started = time.monotonic()
    result = probe_result(tmp_path, world, make_runtime, port=silent_server, timeout="1s")
    failed = result.data["smtp"]["steps"][0]
    assert failed["name"] == "connect" and failed["detail"] == "timed out"
    assert time.monotonic() - started < 10


# -- retry ----------------------------------------------------------------------------------

def statuses(database_url) -> dict[str, str]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute('SELECT id, status FROM "Communication"').fetchall())


def test_retry_previews_then_moves_only_failed_rows(tmp_path, world, make_runtime):
    runtime = email_runtime(tmp_path, world, make_runtime)
    before = statuses(world)

    preview = run(runtime, "email retry --error timed --tenant tenant-0")
    assert preview.kind == "preview"
    expected = [i for i, s in before.items() if s == "failed" and i.startswith("c-failed-")
                and int(i.split("-")[-1]) % 3 == 0 and int(i.split("-")[-1]) % 10 in (6, 7, 8)]
    assert preview.result.data["plan"]["matching"] == len(expected)
    done = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS).result

    after = statuses(world)
    assert done.data["changed"] == len(expected)
    assert sorted(done.data["changed_ids"]) == sorted(expected)
    assert all(after[i] == "pending" for i in expected)
    assert {i for i in before if before[i] != after[i]} == set(expected)
    outcome = [e for e in runtime.state.action_log.entries() if e.action == "outcome"][-1]
    assert sorted(outcome.payload["changed_ids"]) == sorted(expected)


def test_retry_racing_a_sending_worker_never_touches_sent_rows(tmp_path, world, make_runtime):
    runtime = email_runtime(tmp_path, world, make_runtime)
    preview = run(runtime, "email retry")
    stop = threading.Event()
    sent_by_worker: list[str] = []

    def worker():
        with psycopg.connect(world, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(
                    'UPDATE "Communication" SET status = \'sent\' WHERE id = (SELECT id FROM "Communication"'
                    " WHERE status = 'failed' ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id"
                ).fetchone()
                if row:
                    sent_by_worker.append(row[0])

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(0.2)
    done = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
    stop.set()
    thread.join()

    after = statuses(world)
    assert sent_by_worker and all(after[i] == "sent" for i in sent_by_worker)
    assert not set(done.result.data.get("changed_ids", [])) & set(sent_by_worker)


def test_nothing_to_retry(tmp_path, world, make_runtime):
    runtime = email_runtime(tmp_path, world, make_runtime)
    assert run(runtime, "email retry --error no-such-error").result.summary.startswith("Nothing to retry")


# -- reminders ------------------------------------------------------------------------------

def test_reminder_blocked_by_the_daily_cap(tmp_path, world, make_runtime):
    data.case_events(world, [("case-9", "tenant-1", "DEADLINE_REMINDER_SCHEDULED", "1 minute", {"n": i})
                             for i in range(5)] +
                     [("case-1", "tenant-1", "CASE_OPENED", "3 days", None),
                      ("case-1", "tenant-1", "REMINDER_BLOCKED_CAP", "10 minutes", {"cap": 5})])
    runtime = email_runtime(tmp_path, world, make_runtime, auto_reminders_cap=5)
    result = run(runtime, "reminders case-1").result
    assert result.data["auto_reminders_today"] == 5
    assert [e["type"] for e in result.data["events"]] == ["REMINDER_BLOCKED_CAP"]
    assert result.status == "warn" and "blocked by TENANT_DAILY_AUTO_REMINDERS_CAP (5/5 today)" in result.summary


def test_reminder_skipped_for_a_missing_recipient(tmp_path, world, make_runtime):
    data.case_events(world, [("case-2", "tenant-0", "REMINDER_SKIPPED_MISSING_RECIPIENT", "1 hour", None)])
    runtime = email_runtime(tmp_path, world, make_runtime)
    result = run(runtime, "reminders case-2").result
    assert result.status == "fail" and "no recipient" in result.summary
    assert result.data["recipient"] is None


def test_reminder_scheduled_and_unknown_case(tmp_path, world, make_runtime):
    data.case_events(world, [("case-3", "tenant-0", "SUBMISSION_REMINDER_SCHEDULED", "5 minutes", {"at": "x"})])
    runtime = email_runtime(tmp_path, world, make_runtime, reminder_recipient="ops@example.com")
    ok = run(runtime, "reminders case-3").result
    assert ok.status == "ok" and "SUBMISSION_REMINDER_SCHEDULED" in ok.summary
    unknown = run(runtime, "reminders nope-404").result
    assert unknown.status == "error" and "unknown case id" in unknown.summary


def test_dry_run_is_read_from_the_services_config_json(tmp_path, world, make_runtime):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.support.http import send_json

    class Config(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            send_json(self, 200, {"ok": True, "config": {"DRY_RUN_EMAILS": "true"}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Config)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/internal/config"
        runtime = email_runtime(tmp_path, world, make_runtime,
                                dry_run=f'{{url: "{url}", field: config.DRY_RUN_EMAILS, env: null}}')
        result = run(runtime, "email triage").result
    finally:
        server.shutdown()
    assert result.data["dry_run"] is True and result.data["dry_run_source"].endswith("/internal/config")
    assert result.data["verdict"].startswith("DRY_RUN_EMAILS is on in production")

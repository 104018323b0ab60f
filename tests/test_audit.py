"""``audit verify / snapshot / export`` against chains PostgreSQL wrote itself, then tampered with for real."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from bot.core.invocation import Actor, Where
from tests.conftest import ALICE, BOT_TOKEN, REPO, SIGNING_SECRET, write_config
from tests.support.audit import V2_TRIGGER, AuditChain
from tests.support.harness import SlackBot

OPS = Where("C-ops", channel_name="ops")
SECRET = "snapshot-signing-secret"


@pytest.fixture
def chain(database_url):
    return AuditChain(database_url).create()


@pytest.fixture
def audit_config(tmp_path, database_url, monkeypatch):
    monkeypatch.setenv("AUDIT_SNAPSHOT_SECRET", SECRET)
    return write_config(tmp_path / "app.yaml", database_url, extra="""
        audit:
          database: main
          columns: {writer: writer}
          snapshot_secret: ${AUDIT_SNAPSHOT_SECRET:-}
          fork_window: 2s
    """)


@pytest.fixture
def bot(make_runtime, audit_config):
    return make_runtime(audit_config)


def run(runtime, text, user=ALICE):
    return runtime.engine.handle(text, Actor(user), OPS).result


def tenant(result, name):
    return next(t for t in result.data["tenants"] if t["tenant"] == name)


def kinds(result, name):
    return [f["kind"] for f in tenant(result, name)["findings"]]


# -- a healthy chain -----------------------------------------------------------------------------

def test_chains_written_by_postgres_verify(chain, bot):
    chain.append("tenant-a", 6)
    chain.append("tenant-b", 4)
    # text PostgreSQL escapes in COPY, non-ASCII and a NULL actor must hash exactly as stored
    chain.append("tenant-a", 1, payload=json.dumps({"note": "tab\there\nnew line \\ \"quoted\" — café ✓"}))
    chain.sql("""UPDATE "AuditLog" SET actor = NULL WHERE id = 2""")
    chain.sql("""UPDATE "AuditLog" SET hash = audit_v1_hash("prevHash", id, "tenantId", "createdAt", actor, action,
                 payload) WHERE id = 2""")
    chain.rehash_from("tenant-a", 3)

    result = run(bot, "audit verify --all")

    assert result.status == "ok", result.summary
    assert result.data["valid"] and result.data["rows"] == 11
    assert tenant(result, "tenant-a")["rows"] == 7 and tenant(result, "tenant-b")["rows"] == 4
    newest = chain.rows("tenant-a")[-1]
    assert tenant(result, "tenant-a")["head_hash"] == newest[3]
    assert "chain valid (full): 2 tenants, 11 rows" in result.summary


# -- tampering, one kind at a time ---------------------------------------------------------------

def test_an_edited_payload_is_a_content_mismatch_at_that_row(chain, bot):
    ids = chain.append("tenant-a", 8)
    chain.sql("""UPDATE "AuditLog" SET payload = '{"case": "c-1", "status": "closed"}' WHERE id = %s""", (ids[4],))

    result = run(bot, "audit verify tenant-a")

    assert result.status == "fail"
    first = tenant(result, "tenant-a")["findings"][0]
    assert (first["kind"], first["id"], first["position"]) == ("content_mismatch", str(ids[4]), 5)
    assert first["actual"] == chain.rows("tenant-a")[4][3]  # the stored hash, and the one it should be
    assert first["expected"] != first["actual"]
    assert kinds(result, "tenant-a") == ["content_mismatch"]  # the links are still intact
    assert f"earliest failure: content_mismatch at row {ids[4]}" in result.summary
    assert "tampering or data loss suspected" in result.summary


def test_a_deleted_row_breaks_the_link_of_the_next(chain, bot):
    ids = chain.append("tenant-a", 8)
    chain.sql('DELETE FROM "AuditLog" WHERE id = %s', (ids[3],))

    result = run(bot, "audit verify tenant-a")

    findings = tenant(result, "tenant-a")["findings"]
    assert [(f["kind"], f["id"]) for f in findings] == [("link_break", str(ids[4]))]
    assert "deleted" in findings[0]["message"]


def test_a_forged_row_slipped_in_is_an_insertion_not_a_fork(chain, bot):
    ids = chain.append("tenant-a", 6, step=60)
    # A forger who knows the scheme: links to row 3, hashes correctly, dates it between rows 3 and 4.
    with psycopg.connect(chain.url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # bypass the appender
        conn.execute("""
            INSERT INTO "AuditLog" (id, "tenantId", "createdAt", actor, action, payload, "prevHash", hash)
            SELECT 999, "tenantId", "createdAt" + interval '30 seconds', 'mallory@example.com', 'case.update',
                   '{"case": "c-1", "status": "approved"}', hash,
                   audit_v1_hash(hash, 999, "tenantId", "createdAt" + interval '30 seconds', 'mallory@example.com',
                                 'case.update', '{"case": "c-1", "status": "approved"}')
            FROM "AuditLog" WHERE id = %s""", (ids[2],))

    result = run(bot, "audit verify tenant-a")

    findings = tenant(result, "tenant-a")["findings"]
    assert [f["kind"] for f in findings] == ["link_break"]
    assert "inserted" in findings[0]["message"] and "999" in findings[0]["message"]


def test_a_forged_row_with_a_made_up_hash_is_a_broken_link_not_clock_skew(chain, bot):
    ids = chain.append("tenant-a", 6, step=60)
    rows = chain.rows("tenant-a")
    made_up = "f" * 64  # prevHash and hash both made up, and equal: the row "links to itself"
    chain.forge("tenant-a", 999, rows[2][1] + timedelta(seconds=30), made_up, made_up)

    result = run(bot, "audit verify tenant-a")

    report = tenant(result, "tenant-a")
    assert set(report["counts"]) == {"content_mismatch", "link_break"}, report
    assert report["reordered"] == 0  # the row after it links past it: evidence of the insertion, not reordering
    first, second = report["findings"][:2]
    assert {first["kind"], second["kind"]} == {"content_mismatch", "link_break"}
    assert first["id"] == second["id"] == "999" and first["position"] == 4
    broken = next(f for f in report["findings"] if f["kind"] == "link_break")
    assert broken["expected"] == rows[2][3] and broken["actual"] == made_up  # what the link should have been
    assert "itself" in broken["message"] and str(ids[3]) in broken["message"] and "inserted" in broken["message"]
    assert len(report["findings"]) == 2
    assert "tampering or data loss suspected" in result.summary


def test_a_forged_row_with_another_made_up_link_names_the_row_that_skips_it(chain, bot):
    ids = chain.append("tenant-a", 5, step=60)
    chain.forge("tenant-a", 999, chain.rows("tenant-a")[1][1] + timedelta(seconds=30), "a" * 64, "b" * 64)

    result = run(bot, "audit verify tenant-a")

    report = tenant(result, "tenant-a")
    assert [(f["kind"], f["id"]) for f in report["findings"]] == [("content_mismatch", "999"), ("link_break", "999")]
    assert "clock_skew" not in report["counts"] and report["reordered"] == 0
    message = report["findings"][1]["message"]
    assert f"row {ids[2]} after it links past it to row {ids[1]}" in message and "inserted" in message
    assert "forged" in report["findings"][0]["message"]  # not "edited": its link is broken as well


def test_a_deleted_row_shows_the_hash_the_next_link_should_have(chain, bot):
    ids = chain.append("tenant-a", 6)
    before = chain.rows("tenant-a")[2][3]  # the row before the deleted one
    chain.sql('DELETE FROM "AuditLog" WHERE id = %s', (ids[3],))

    result = run(bot, "audit verify tenant-a")

    finding = tenant(result, "tenant-a")["findings"][0]
    assert (finding["kind"], finding["id"], finding["expected"]) == ("link_break", str(ids[4]), before)
    text = result.sections[0].text
    assert f"expected `{before}`" in text and "expected `NULL`" not in text


def test_two_writers_appending_at_once_fork_the_chain(chain, bot):
    chain.append("tenant-a", 4)
    # Two app nodes, each in its own transaction, read the same head before either commits.
    first, second = psycopg.connect(chain.url), psycopg.connect(chain.url)
    try:
        for conn, node in ((first, "node-a"), (second, "node-b")):
            conn.execute("""INSERT INTO "AuditLog" ("tenantId", "createdAt", actor, action, writer)
                            VALUES ('tenant-a', now(), %s, 'case.update', %s)""", (f"{node}@example.com", node))
        first.commit()
        second.commit()
    finally:
        first.close()
        second.close()
    chain.clock = chain.rows("tenant-a")[-1][1]
    chain.append("tenant-a", 2)

    result = run(bot, "audit verify tenant-a")

    assert kinds(result, "tenant-a") == ["fork"]
    message = tenant(result, "tenant-a")["findings"][0]["message"]
    assert "node-a" in message and "node-b" in message and "concurrently" in message
    assert "no sign of tampering" in result.summary


def test_a_writer_with_a_slow_clock_is_clock_skew_with_the_node_named(chain, bot):
    chain.append("tenant-a", 5, writer="node-a")
    chain.append("tenant-a", 1, writer="node-b", skew=-2.5)  # node-b's clock is 2.5 s behind
    chain.append("tenant-a", 4, writer="node-a")

    result = run(bot, "audit verify tenant-a")

    report = tenant(result, "tenant-a")
    assert [f["kind"] for f in report["findings"]] == ["clock_skew"]
    finding = report["findings"][0]
    assert finding["detail"]["writer"] == "node-b" and finding["detail"]["predecessor_writer"] == "node-a"
    assert finding["detail"]["seconds_behind"] == pytest.approx(1.5)  # 1 s later by link, dated 2.5 s back
    assert "no sign of tampering" in result.summary


def test_a_changed_hashing_scheme_is_reported_once_as_scheme_suspect(chain, bot):
    ids = chain.append("tenant-a", 5)
    chain.sql(V2_TRIGGER)  # a release starts hashing createdAt without milliseconds
    later = chain.append("tenant-a", 6)

    result = run(bot, "audit verify tenant-a")

    report = tenant(result, "tenant-a")
    assert report["counts"] == {"scheme_suspect": 1}
    finding = report["findings"][0]
    assert finding["id"] == str(later[0]) and finding["detail"]["rows"] == 6
    assert "not tampering" in finding["message"]
    assert ids  # the five rows before the change verify


# -- snapshots -----------------------------------------------------------------------------------

def test_snapshot_then_a_truncated_tail_is_truncated(chain, bot):
    ids = chain.append("tenant-a", 10)
    assert run(bot, "audit snapshot tenant-a").status == "ok"
    chain.sql('DELETE FROM "AuditLog" WHERE id >= %s', (ids[7],))

    result = run(bot, "audit verify tenant-a")

    report = tenant(result, "tenant-a")
    assert [f["kind"] for f in report["findings"]] == ["truncated"]
    assert report["findings"][0]["detail"]["missing_rows"] == 3
    assert report["findings"][0]["id"] == str(ids[9])


def test_snapshot_then_a_consistently_rehashed_suffix_is_rewritten(chain, bot):
    ids = chain.append("tenant-a", 10)
    run(bot, "audit snapshot tenant-a")
    chain.sql("""UPDATE "AuditLog" SET payload = '{"case": "c-1", "status": "approved"}' WHERE id = %s""", (ids[3],))
    chain.rehash_from("tenant-a", ids[3])  # every hash and link re-computed: the chain alone looks fine
    chain.append("tenant-a", 2)

    result = run(bot, "audit verify tenant-a")

    report = tenant(result, "tenant-a")
    assert [f["kind"] for f in report["findings"]] == ["rewritten"]
    assert report["findings"][0]["id"] == str(ids[9])
    assert "re-hashed" in report["findings"][0]["message"]


def test_a_snapshot_edited_in_the_database_is_not_trusted(chain, bot):
    ids = chain.append("tenant-a", 6)
    run(bot, "audit snapshot tenant-a")
    chain.sql('DELETE FROM "AuditLog" WHERE id = %s', (ids[5],))
    # Someone with write access to the bot's schema moves the snapshot to match the cut chain.
    chain.sql("UPDATE opsbot.audit_snapshots SET last_id = %s, hash = %s, row_count = 5",
              (str(ids[4]), chain.rows("tenant-a")[-1][3]))

    result = run(bot, "audit verify tenant-a")

    assert kinds(result, "tenant-a") == ["snapshot_invalid"]


def test_snapshot_is_refused_for_an_invalid_chain_and_without_a_secret(chain, bot, make_runtime, tmp_path,
                                                                       database_url):
    ids = chain.append("tenant-a", 4)
    chain.sql('DELETE FROM "AuditLog" WHERE id = %s', (ids[1],))
    refused = run(bot, "audit snapshot tenant-a")
    assert refused.status == "fail" and not refused.data["taken"]
    assert chain.sql("SELECT count(*) FROM opsbot.audit_snapshots")[0][0] == 0

    plain = make_runtime(write_config(tmp_path / "plain.yaml", database_url))
    result = run(plain, "audit snapshot tenant-a")
    assert result.status == "error" and "audit.snapshot_secret" in result.summary


def test_incremental_verification_reads_only_rows_after_the_snapshot(chain, bot):
    chain.append("tenant-a", 20)
    run(bot, "audit snapshot tenant-a")
    new = chain.append("tenant-a", 3)

    result = run(bot, "audit verify tenant-a --since-snapshot")
    assert result.status == "ok" and result.data["mode"] == "incremental"
    assert result.data["rows"] == 3 and tenant(result, "tenant-a")["rows"] == 23

    chain.sql("""UPDATE "AuditLog" SET actor = 'mallory@example.com' WHERE id = %s""", (new[1],))
    tampered = run(bot, "audit verify tenant-a --since-snapshot")
    assert [(f["kind"], f["position"]) for f in tenant(tampered, "tenant-a")["findings"]] == [("content_mismatch", 22)]


def test_incremental_falls_back_to_a_full_walk_when_the_snapshot_head_changed(chain, bot):
    ids = chain.append("tenant-a", 6)
    run(bot, "audit snapshot tenant-a")
    chain.sql('DELETE FROM "AuditLog" WHERE id = %s', (ids[5],))

    result = run(bot, "audit verify tenant-a --since-snapshot")

    assert result.data["mode"] == "full"
    assert kinds(result, "tenant-a") == ["truncated"]
    assert any("whole chain" in note for note in result.data["notes"])


# -- export --------------------------------------------------------------------------------------

def opsbot_cli(config, *args, cwd=None):
    env = {**os.environ, "RUN_MIGRATIONS": "true", "AUDIT_SNAPSHOT_SECRET": SECRET}
    return subprocess.run([sys.executable, "-m", "bot", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=cwd or REPO)


def test_export_writes_jsonl_that_rehashes_and_compares_by_head(chain, audit_config, tmp_path):
    chain.append("tenant-a", 5)
    first = opsbot_cli(audit_config, "run", "--json", "--output", str(tmp_path / "one.jsonl"), "audit export",
                       "tenant-a")
    assert first.returncode == 0, first.stderr
    body = json.loads(first.stdout)
    lines = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert len(lines) == body["data"]["rows"] == 5
    assert lines[-1]["hash"] == body["data"]["head_hash"] == chain.rows("tenant-a")[-1][3]
    # The export carries the stored text, so anyone can re-hash it without the database.
    prev = None
    for row in lines:
        fields = [row["prevHash"], row["id"], row["tenantId"], row["createdAt"], row["actor"], row["action"],
                  row["payload"]]
        framed = b"".join(b"-1:" if v is None else b"%d:%b" % (len(v.encode()), v.encode()) for v in fields)
        assert row["prevHash"] == prev and hashlib.sha256(framed).hexdigest() == row["hash"]
        prev = row["hash"]

    chain.append("tenant-a", 1)
    second = json.loads(opsbot_cli(audit_config, "run", "--json", "--output", str(tmp_path), "audit export",
                                   "tenant-a").stdout)
    assert second["data"]["head_hash"] != body["data"]["head_hash"]
    assert (tmp_path / second["data"]["file"]).read_text().startswith((tmp_path / "one.jsonl").read_text())


def export_through_slack(make_runtime, audit_config, fake_slack):
    """`/ops audit export tenant-a` from channel C-inc, through signed requests; the reply."""
    from slack_sdk import WebClient

    runtime = make_runtime(audit_config, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
    slack = SlackBot(runtime, fake_slack, SIGNING_SECRET)
    try:
        return slack.command("audit export tenant-a", channel="C-inc")
    finally:
        slack.close()


def test_export_in_slack_uploads_the_file_to_the_thread(chain, make_runtime, audit_config, fake_slack, slack_env):
    chain.append("tenant-a", 3)
    reply = export_through_slack(make_runtime, audit_config, fake_slack)

    assert fake_slack.wait_for("files.getUploadURLExternal")[0].body["filename"].startswith("audit-tenant-a-")
    complete = fake_slack.wait_for("files.completeUploadExternal")[0].body
    assert complete["channel_id"] == "C-inc"
    uploaded = next(iter(fake_slack.uploads.values())).decode()
    assert len(uploaded.splitlines()) == 3 and chain.rows("tenant-a")[-1][3] in uploaded.splitlines()[-1]
    assert "uploaded" in reply.body["text"] and reply.body["response_type"] == "in_channel"


def test_an_export_from_a_private_channel_opsbot_is_not_in_says_to_invite_it(chain, make_runtime, audit_config,
                                                                              fake_slack, slack_env):
    chain.append("tenant-a", 3)
    fake_slack.channel("C-inc", private=True, member=False)  # /ops works there; posting a file needs an invitation
    fake_slack.allow("not_in_channel")
    reply = export_through_slack(make_runtime, audit_config, fake_slack)

    assert fake_slack.refusals("not_in_channel")[0].method == "files.completeUploadExternal"
    assert ("could not be uploaded (opsbot is not in C-inc: invite it with /invite @opsbot (posting to private "
            "channels needs an invitation") in reply.body["text"]
    assert "opsbot run" in reply.body["text"]


# -- configuration: custom schemes, mistakes caught early -----------------------------------------

def v1_as_function(row: dict) -> str:
    """A custom scheme named in app.yaml as ``tests.test_audit:v1_as_function`` (here: v1 written out)."""
    fields = [row["prev_hash"], row["id"], row["tenant"], row["created"], row["actor"], row["action"], row["payload"]]
    return hashlib.sha256(b"".join(b"-1:" if v is None else b"%d:%b" % (len(v.encode()), v.encode())
                                   for v in fields)).hexdigest()


def test_a_custom_scheme_function_verifies(chain, make_runtime, tmp_path, database_url):
    chain.append("tenant-a", 4)
    path = write_config(tmp_path / "custom.yaml", database_url, extra="""
        audit:
          scheme: {function: "tests.test_audit:v1_as_function", fields: [prev_hash, id, tenant, created, actor, action, payload]}
    """)
    assert run(make_runtime(path), "audit verify tenant-a").status == "ok"


def test_a_misconfigured_scheme_is_caught_by_opsbot_check(chain, tmp_path, database_url):
    chain.append("tenant-a", 4)
    path = write_config(tmp_path / "wrong.yaml", database_url, extra="""
        audit:
          scheme: {fields: [id, prev_hash, tenant, created, actor, action, payload]}
    """)
    proc = opsbot_cli(path, "check", "--json")
    assert proc.returncode == 1, proc.stdout
    check = next(c for c in json.loads(proc.stdout)["data"]["checks"] if c["target"] == "audit scheme")
    assert not check["ok"] and "audit.scheme" in check["detail"] and "4 of the first 4" in check["detail"]

    good = write_config(tmp_path / "good.yaml", database_url)
    proc = opsbot_cli(good, "check", "--json")
    check = next(c for c in json.loads(proc.stdout)["data"]["checks"] if c["target"] == "audit scheme")
    assert check["ok"], check


def test_prisma_timestamps_without_zone_verify(database_url, make_runtime, config_path):
    sys.path.insert(0, str(REPO / "bench"))
    from audit_data import fill

    fill(database_url, 400, tenants=3)  # timestamp(3) as Prisma creates it, hashed by the benchmark's own code
    result = run(make_runtime(config_path), "audit verify --all")
    assert result.status == "ok" and result.data["rows"] == 400 and len(result.data["tenants"]) == 3


@pytest.mark.parametrize("text, message", [
    ("audit verify", "name one tenant or --all"),
    ("audit verify tenant-a --all", "name one tenant or --all"),
    ("audit verify nobody", "has no rows"),
    ("audit verify --all --since-snapshot", "one tenant at a time"),
    ("audit verify tenant-a --since-snapshot", "no valid snapshot"),
])
def test_bad_requests_get_a_clear_message(chain, bot, text, message):
    chain.append("tenant-a", 2)
    result = run(bot, text)
    assert result.status == "error" and message in result.summary


def test_a_missing_audit_table_is_named(database_url, bot):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute('DROP TABLE IF EXISTS "AuditLog"')
    result = run(bot, "audit verify --all")
    assert result.status == "error" and "audit table 'AuditLog' does not exist" in result.summary


def test_verification_runs_in_one_snapshot_while_writers_append(chain, bot):
    chain.append("tenant-a", 3000, step=0.01)
    stop = threading.Event()

    def keep_appending():
        while not stop.is_set():
            chain.append("tenant-a", 5, step=0.01)

    writer = threading.Thread(target=keep_appending)
    writer.start()
    try:
        result = run(bot, "audit verify tenant-a")
    finally:
        stop.set()
        writer.join()
    assert result.status == "ok", result.summary


def test_status_shows_the_last_verification(chain, bot):
    ids = chain.append("tenant-a", 4)
    run(bot, "audit verify --all")
    line = next(line for line in run(bot, "status").data["lines"] if line["what"] == "audit verification")
    assert line["color"] == "green" and line["detail"].startswith("valid") and "4 rows" in line["detail"]

    chain.sql('DELETE FROM "AuditLog" WHERE id = %s', (ids[1],))
    run(bot, "audit verify tenant-a")
    line = next(line for line in run(bot, "status").data["lines"] if line["what"] == "audit verification")
    assert line["color"] == "red" and "link_break" in line["detail"]


def test_an_export_too_large_for_slack_says_how_to_get_it(chain, make_runtime, audit_config, fake_slack, slack_env,
                                                          monkeypatch):
    from bot.slack import work as slack_work

    monkeypatch.setattr(slack_work, "UPLOAD_LIMIT", 100)  # bytes: three rows are more
    chain.append("tenant-a", 3)
    reply = export_through_slack(make_runtime, audit_config, fake_slack)
    assert "more than Slack takes" in reply.body["text"] and "opsbot run" in reply.body["text"]
    assert fake_slack.calls("files.getUploadURLExternal") == []
    assert not list(Path(tempfile.gettempdir()).glob("opsbot-audit-*.jsonl"))  # gone (this test's own temp folder)


def test_an_export_through_opsbot_serve_leaves_no_copy_behind(chain, audit_config, fake_slack, own_tempdir):
    """The whole chain is audit data: after the upload, neither serve nor its workers keep a file of it."""
    from tests.test_operations import free_port

    chain.append("tenant-a", 20)
    config = audit_config.read_text().replace('api_url: "https://slack.invalid/api/"',
                                              f'api_url: "{fake_slack.api_url}"')
    audit_config.write_text(config)
    port = free_port()
    env = {**os.environ, "TEST_SLACK_BOT_TOKEN": BOT_TOKEN, "TEST_SLACK_SIGNING_SECRET": SIGNING_SECRET,
           "RUN_MIGRATIONS": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "bot", "--config", str(audit_config), "serve", "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        bot = SlackBot.against(f"http://127.0.0.1:{port}", fake_slack, SIGNING_SECRET)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if bot.http.get("/readyz").status_code == 200:
                    break
            except Exception:
                time.sleep(0.2)
        reply = bot.command("audit export tenant-a", channel="C-inc")
        assert "exported 20 rows of tenant-a" in reply.text
        assert len(fake_slack.uploads) == 1
        assert list(own_tempdir.glob("opsbot-audit-*")) == []
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read()
    assert list(own_tempdir.iterdir()) == []  # the metrics folder of serve's workers went too

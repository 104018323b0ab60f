"""Redis as production runs it: a Redis Cluster (hash-tagged queues), TLS, ACL users with awkward passwords.

Every server is the test's own (tests/support/redisplus.py): the session's 3-node cluster, a TLS
redis-server with certificates made by openssl, a cluster with an ACL user. The dlq scenarios
themselves run on the cluster through the ``dlq_layout`` fixture (test_dlq*.py); here: what is
refused, what `check` says, and that no secret is ever printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from bot.core.invocation import Actor, Where
from tests.conftest import REDIS_URL, write_config
from tests.support.dlq import dead_letter, everything, kill, oldest_first
from tests.support.redisplus import RedisClusterServers, TestCertificates, TlsRedisServer

PASSWORD = "p/a#s?s@w:o%rd 20"   # every character a URL would choke on
OPS = Where("C-ops", channel_name="ops")


def configure(path, target: str, queues: list[tuple[str, str, str]] | None = None):
    """app.yaml's Redis target `main` replaced by ``target`` (a flow mapping); queues (name, ready, dead)."""
    text = path.read_text().replace(f'  main: {{url: "{REDIS_URL}"}}', f"  main: {target}", 1)
    if queues is not None:
        lines = "".join(f"  - {{name: {name}, redis: main, ready: {json.dumps(ready)}, dead: {json.dumps(dead)}}}\n"
                        for name, ready, dead in queues)
        text = text.replace('  - {name: jobs, redis: main, ready: jobs, dead: "jobs:dead"}\n', lines)
    path.write_text(text)
    return path


def opsbot_cli(path, *args, env=None):
    return subprocess.run([sys.executable, "-m", "bot", "--config", str(path), *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "RUN_MIGRATIONS": "true", **(env or {})})


def checks_by_target(result):
    """A check Result, or its JSON (`opsbot check --json`), by target."""
    data = result["data"] if isinstance(result, dict) else result.data
    return {c["target"]: c for c in data["checks"]}


def secret_forms(password: str) -> list[str]:
    from urllib.parse import quote

    return [password, quote(password, safe=""), quote(password), "s?s@w:o%rd"]


# -- Redis Cluster: naming, refusal, check ------------------------------------------------------

HOSTILE_OK = [("braces", "{{b}", "{{b}:dead"),          # tag "{b": both lists, and opsbot's keys, in its slot
              ("after", "}{c}", "}{c}:dead")]            # a "}" before the tag does not count
REFUSED = [("plain", "plain", "plain:dead"),             # no hash tag: two slots
           ("empty", "{}e", "{}e:dead"),                 # "{}" is no tag: the whole names hash
           ("split", "{x}r", "{y}:dead")]                # two different tags


@pytest.fixture
def cluster_runtime(tmp_path, database_url, make_runtime, redis_cluster, redis_client):
    from tests.support.dlqlayout import QueueLayout

    with QueueLayout.cluster_test(redis_cluster) as layout:
        path = configure(write_config(tmp_path / "app.yaml", database_url),
                         f'{{url: "{redis_cluster.url}", cluster: true}}',
                         [("jobs", "{jobs}", "{jobs}:dead"), *HOSTILE_OK, *REFUSED])
        yield make_runtime(path), layout.client, path


def test_check_reports_cluster_queues_and_refuses_lists_in_two_slots(cluster_runtime):
    from bot.runtime.checks import run_checks

    runtime, client, _ = cluster_runtime
    kill(client, [dead_letter(i) for i in range(3)], "{jobs}:dead")
    found = checks_by_target(run_checks(runtime))

    assert found["redis main"]["ok"] and "cluster" in found["redis main"]["detail"]
    jobs = found["queue jobs"]
    assert jobs["ok"] and re.match(r"ok, ready '\{jobs\}': 0, dead '\{jobs\}:dead': 3, cluster slot \d+ on "
                                   r"127\.0\.0\.1:\d+", jobs["detail"]), jobs
    for name, _, _ in HOSTILE_OK:
        assert found[f"queue {name}"]["ok"], found[f"queue {name}"]
    for name, ready, dead in REFUSED:
        detail = found[f"queue {name}"]["detail"]
        assert not found[f"queue {name}"]["ok"]
        assert f"queue {name!r} cannot run on Redis Cluster 'main'" in detail
        assert f'ready: "{{{name}}}" and dead: "{{{name}}}:dead"' in detail, detail
    assert "hash to different slots" in found["queue plain"]["detail"]


@pytest.mark.parametrize("command", ["dlq status {q}", "dlq peek {q}", "dlq requeue {q}", "dlq trim {q} --keep 0",
                                     "dlq cancel {q}"])
def test_every_dlq_command_refuses_a_queue_in_two_slots_with_the_naming_advice(cluster_runtime, command):
    runtime, client, _ = cluster_runtime
    client.lpush("plain:dead", b'{"id": "x"}')
    outcome = runtime.engine.handle(command.format(q="plain"), Actor.local(), OPS)
    assert outcome.kind == "result" and outcome.result.status == "error", outcome.result.summary
    assert 'ready: "{plain}" and dead: "{plain}:dead"' in outcome.result.summary
    assert "MOVED" not in outcome.result.summary and "same slot" not in outcome.result.summary
    assert client.llen("plain:dead") == 1


def test_status_of_all_queues_reads_the_good_ones_and_names_the_refused(cluster_runtime):
    runtime, client, _ = cluster_runtime
    kill(client, [dead_letter(i) for i in range(4)], "{jobs}:dead")
    result = runtime.engine.handle("dlq status", Actor.local(), OPS).result
    text = str(result.sections) + result.summary
    assert result.data["queues"][0]["dead"] == 4
    assert 'ready: "{split}" and dead: "{split}:dead"' in text and not re.search(r"MOVED \d+", text)


def test_queues_named_with_hostile_braces_requeue_and_trim_on_the_cluster(cluster_runtime, database_url):
    from tests.support.dlq import archive_rows

    runtime, client, _ = cluster_runtime
    for name, ready, dead in HOSTILE_OK:
        entries = [dead_letter(i) for i in range(40)]
        kill(client, entries, dead)
        preview = runtime.engine.handle(f"dlq requeue {name} --type send_email", Actor.local(), OPS)
        done = runtime.engine.confirm(preview.pending.id, Actor.local(), OPS).result
        emails = [e for e in entries if b'"send_email"' in e]
        assert done.status == "ok" and list(reversed(client.lrange(ready, 0, -1))) == emails, done.summary
        trim = runtime.engine.handle(f"dlq trim {name} --keep 2", Actor.local(), OPS)
        trimmed = runtime.engine.confirm(trim.pending.id, Actor.local(), OPS).result
        assert trimmed.status == "ok" and oldest_first(client, dead) == [e for e in entries if e not in emails][-2:]
        rest = [e for e in entries if e not in emails]
        assert everything(client, ready, dead) == Counter(emails + rest[-2:])
        assert [row[2] for row in archive_rows(database_url) if row[0] == trimmed.data["task"]] == rest[:-2]


def test_a_cluster_reached_without_cluster_true_is_named_not_a_bare_moved(tmp_path, database_url, make_runtime,
                                                                         redis_cluster, redis_client):
    from tests.support.dlqlayout import QueueLayout

    with QueueLayout.cluster_test(redis_cluster) as layout:
        serving = redis_cluster.node_for("{jobs}:dead")
        other = next(node for node in redis_cluster.nodes if node is not serving)
        kill(layout.client, [dead_letter(1)], "{jobs}:dead")
        path = configure(write_config(tmp_path / "app.yaml", database_url),
                         f'{{url: "redis://127.0.0.1:{other.port}/0"}}', [("jobs", "{jobs}", "{jobs}:dead")])
        runtime = make_runtime(path)
        result = runtime.engine.handle("dlq status", Actor.local(), OPS).result
        text = result.summary + str(result.sections)
        assert "redis 'main' is a Redis Cluster node (it answered MOVED" in text, text
        assert "set `cluster: true` on it in app.yaml" in text
        from bot.runtime.checks import run_checks

        found = checks_by_target(run_checks(runtime))
        assert "is a Redis Cluster node: a redis target on it needs `cluster: true`" in found["redis main"]["detail"]
        assert "set `cluster: true`" in found["queue jobs"]["detail"] and not found["queue jobs"]["ok"]


# -- TLS and ACL users --------------------------------------------------------------------------

def _acl(password: str) -> list[str]:
    return ["--user", "ops", "on", f">{password}", "~*", "&*", "+@all", "--user", "default", "off"]


@pytest.fixture
def certs(tmp_path):
    return TestCertificates(tmp_path / "certs")


def _tls_config(tmp_path, database_url, port, **fields):
    target = {"url": f"redis://127.0.0.1:{port}/0", "tls": True, "username": "ops",
              "password": "${TEST_REDIS_PASSWORD}", "ca_file": "certs/ca.crt", **fields}
    body = ", ".join(f"{key}: {json.dumps(value) if isinstance(value, str) else str(value).lower()}"
                     for key, value in target.items() if value is not None)
    return configure(write_config(tmp_path / "app.yaml", database_url), f"{{{body}}}")


def _no_secret_in(*texts: str) -> None:
    for text in texts:
        for form in secret_forms(PASSWORD):
            assert form not in text, f"{form!r} printed in: {text[:2000]}"


def test_tls_with_an_acl_user_whose_password_has_slash_hash_query_at(tmp_path, database_url, certs, redis_client,
                                                                      monkeypatch):
    monkeypatch.setenv("TEST_REDIS_PASSWORD", PASSWORD)
    with TlsRedisServer(certs, *_acl(PASSWORD)) as server:
        path = _tls_config(tmp_path, database_url, server.port)
        client = server.client(username="ops", password=PASSWORD)
        entries = [dead_letter(i) for i in range(25)]
        kill(client, entries)

        check = opsbot_cli(path, "check", "--json")
        requeue = opsbot_cli(path, "run", "--yes", "dlq requeue --type render_pdf")

        found = checks_by_target(json.loads(check.stdout))
        assert found["redis main"]["ok"] and found["queue jobs"]["ok"], check.stdout + check.stderr
        assert requeue.returncode == 0 and "Requeued" in requeue.stdout, requeue.stdout + requeue.stderr
        assert list(reversed(client.lrange("jobs", 0, -1))) == [e for e in entries if b'"render_pdf"' in e]
        _no_secret_in(check.stdout, check.stderr, requeue.stdout, requeue.stderr)


@pytest.mark.parametrize("fault", ["wrong password", "wrong CA", "no client certificate"])
def test_a_refused_tls_or_acl_connection_is_reported_without_the_password(tmp_path, database_url, certs, fault,
                                                                           redis_client, monkeypatch):
    monkeypatch.setenv("TEST_REDIS_PASSWORD", PASSWORD if fault != "wrong password" else PASSWORD + "x")
    TestCertificates(tmp_path / "other-ca", name="somebody-else")   # a CA the server never trusted
    auth_clients = "yes" if fault == "no client certificate" else "optional"
    with TlsRedisServer(certs, *_acl(PASSWORD), auth_clients=auth_clients) as server:
        ca = "other-ca/ca.crt" if fault == "wrong CA" else "certs/ca.crt"
        path = _tls_config(tmp_path, database_url, server.port, ca_file=ca)

        check = opsbot_cli(path, "check", "--json")
        status = opsbot_cli(path, "run", "dlq status")

        found = checks_by_target(json.loads(check.stdout))
        assert check.returncode != 0 and not found["redis main"]["ok"]
        detail = found["redis main"]["detail"]
        expected = {"wrong password": "invalid username-password pair",
                    "wrong CA": "certificate verify failed", "no client certificate": ""}[fault]
        assert expected in detail and f"127.0.0.1:{server.port}" in detail, detail
        assert not found["queue jobs"]["ok"]
        assert status.returncode != 0 and "[ERROR]" in status.stdout, status.stdout + status.stderr
        _no_secret_in(check.stdout, check.stderr, status.stdout, status.stderr)


def test_a_client_certificate_is_presented_when_the_server_demands_one(tmp_path, database_url, certs, redis_client,
                                                                      monkeypatch):
    monkeypatch.setenv("TEST_REDIS_PASSWORD", PASSWORD)
    with TlsRedisServer(certs, *_acl(PASSWORD), auth_clients="yes") as server:
        path = _tls_config(tmp_path, database_url, server.port, cert_file="certs/client.crt",
                           key_file="certs/client.key")
        check = opsbot_cli(path, "check", "--json")
        found = checks_by_target(json.loads(check.stdout))
        assert found["redis main"]["ok"] and found["queue jobs"]["ok"], (found["redis main"], found["queue jobs"])


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_cluster_with_an_acl_user_takes_the_same_credentials_and_tls(tmp_path, database_url, make_runtime,
                                                                       redis_client, monkeypatch, tls):
    from bot.runtime.checks import run_checks

    monkeypatch.setenv("TEST_REDIS_PASSWORD", PASSWORD)
    certs = TestCertificates(tmp_path / "certs") if tls else None
    with RedisClusterServers(*_acl(PASSWORD), cli_auth=("--user", "ops", "--pass", PASSWORD), persist=False,
                             tls=certs) as cluster:
        port = cluster.nodes[0].port
        secure = ", tls: true, ca_file: certs/ca.crt" if tls else ""
        path = configure(write_config(tmp_path / "app.yaml", database_url),
                         f'{{url: "redis://127.0.0.1:{port}", cluster: true, username: ops, '
                         f'password: "${{TEST_REDIS_PASSWORD}}"{secure}}}', [("jobs", "{jobs}", "{jobs}:dead")])
        runtime = make_runtime(path)
        client = cluster.client()
        kill(client, [dead_letter(i) for i in range(10)], "{jobs}:dead")
        found = checks_by_target(run_checks(runtime))
        assert found["redis main"]["ok"] and found["queue jobs"]["ok"], (found["redis main"], found["queue jobs"])
        preview = runtime.engine.handle("dlq requeue", Actor.local(), OPS)
        done = runtime.engine.confirm(preview.pending.id, Actor.local(), OPS).result
        assert done.status == "ok" and client.llen("{jobs}") == 10

        monkeypatch.setenv("TEST_REDIS_PASSWORD", "wrong")
        refused = checks_by_target(run_checks(make_runtime(path)))
        assert not refused["redis main"]["ok"] and "Redis Cluster 'main'" in refused["redis main"]["detail"]
        _no_secret_in(str(refused))


# -- attacks: a node killed under a running requeue; settings that cannot work -------------------

def test_the_node_holding_a_queue_killed_mid_requeue_then_restarted_loses_and_duplicates_nothing(
        tmp_path, database_url, redis_cluster, redis_client):
    import signal
    import time

    from tests.support.dlq import opsbot
    from tests.support.dlqlayout import QueueLayout

    with QueueLayout.cluster_test(redis_cluster) as q:
        path = q.configure(write_config(tmp_path / "app.yaml", database_url), "batch: 50, lease_ttl: 2s")
        entries = [dead_letter(i) for i in range(2000)]
        kill(q.client, entries, q.dead)
        env = {**os.environ, "RUN_MIGRATIONS": "true"}
        command = opsbot(path, "dlq requeue --type sync_crm --rate 300")
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while int(q.client.hget(q.task, "moved") or 0) < 60:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        node = q.node_of_queue()
        os.kill(node.pid, signal.SIGKILL)       # the node serving the queue's slot, by its PID, mid-requeue
        node.process.wait()
        out, err = proc.communicate(timeout=120)  # the bot finds its Redis gone: it stops, it does not hang
        assert proc.returncode != 0, out + err
        assert not re.search(r"MOVED \d+", out + err)
        node.process = None
        node.start()                              # back from its append-only file, same slots (nodes.conf)
        q.reconnect()
        assert everything(q.client, q.ready, q.dead) == Counter(entries)   # every entry exactly once

        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "Requeued" in again.stdout, again.stdout + again.stderr
        crm = [e for e in entries if b'"sync_crm"' in e]
        assert list(reversed(q.client.lrange(q.ready, 0, -1))) == crm
        assert oldest_first(q.client, q.dead) == [e for e in entries if e not in set(crm)]
        assert q.held_keys() == []


@pytest.mark.parametrize("target, message", [
    ('{url: "redis://:${TEST_REDIS_PASSWORD}@h:6379/0", password: "${TEST_REDIS_PASSWORD}"}',
     "password: the url holds a password too"),
    ('{url: "redis://h:6379/0", cert_file: c.pem}', "a client certificate needs both"),
    ('{url: "redis://h:6379/3", cluster: true}', "a Redis Cluster has database 0 only"),
    ('{url: "unix:///tmp/r.sock", cluster: true}', "not a unix socket"),
    ('{url: "redis://h:6379/0", password: "p/a#s?s@w"}', "password"),   # a literal secret is refused
])
def test_redis_target_settings_that_cannot_work_are_refused_at_load_without_the_secret(
        tmp_path, database_url, monkeypatch, target, message):
    from bot.config.settings import ConfigError, load_settings

    monkeypatch.setenv("TEST_REDIS_PASSWORD", PASSWORD)
    path = configure(write_config(tmp_path / "app.yaml", database_url), target)
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert message in str(refused.value), str(refused.value)
    _no_secret_in(str(refused.value))
    assert "p/a#s?s@w" not in str(refused.value)


NAMES = ["jobs", "{jobs}", "{jobs}:dead", "{}", "{}jobs", "{", "}", "}{", "{{b}", "{{b}:dead", "}{c}", "{a}{b}",
         "{ü}:dead", "{a b\n}", "x{y}z{w}", "{" * 50 + "}" * 50]


def test_slots_as_the_cluster_itself_computes_them_for_hostile_names(redis_cluster):
    from bot.runtime.redisconn import hash_tag, key_slot
    from commands.dlq.keys import QueueKeys, cluster_problem
    from commands.dlq.settings import QueueSettings

    with redis_cluster.client() as client:
        node = client.get_default_node().redis_connection
        for name in NAMES:
            assert key_slot(name) == node.execute_command("CLUSTER", "KEYSLOT", name), name
            tag = hash_tag(name)
            assert tag is None or key_slot(name) == key_slot("{" + tag + "}"), name
        for name in NAMES:
            queue = QueueSettings(name="q", ready=name, dead=name + ":dead" if "{" in name else name)
            if cluster_problem(queue) is None:
                keys = QueueKeys.of(queue, "opsbot:", cluster=True)
                slots = {node.execute_command("CLUSTER", "KEYSLOT", k)
                         for k in (queue.ready, queue.dead, keys.task, keys.lease, keys.trim, keys.held("t1"))}
                assert len(slots) == 1, (name, slots)


def test_on_one_server_the_keys_keep_the_names_earlier_versions_wrote(redis_client):
    """An upgrade finds a requeue interrupted before it: same task, lease and held-list names."""
    from commands.dlq.entries import Filters
    from commands.dlq.keys import QueueKeys
    from commands.dlq.redis_list import RedisListQueue
    from commands.dlq.settings import QueueSettings

    queue = QueueSettings(name="jobs", ready="{jobs}", dead="{jobs}:dead")   # tags or not: one server ignores them
    keys = QueueKeys.of(queue, "opsbot:", cluster=False)
    assert (keys.task, keys.lease, keys.trim, keys.held("ab12")) == (
        "opsbot:dlq:task:jobs", "opsbot:dlq:lease:jobs", "opsbot:dlq:trim:jobs", "opsbot:dlq:held:jobs:ab12")

    entries = [dead_letter(i) for i in range(30)]
    kill(redis_client, entries, "{jobs}:dead")
    old = RedisListQueue(queue, redis_client)
    task = old.start_requeue(Filters(type="sync_crm"), limit=None, rate=None, matching=10, requested_by="t")
    redis_client.hdel("opsbot:dlq:task:jobs", "held_order")  # as earlier versions wrote it: held oldest-first
    stop = iter([False, True])
    old.run_requeue(task.id, owner="old", batch=7, should_stop=lambda: next(stop, True))
    assert redis_client.exists("opsbot:dlq:task:jobs") and redis_client.llen(f"opsbot:dlq:held:jobs:{task.id}")

    resumed = RedisListQueue(queue, redis_client).run_requeue(task.id, owner="new", batch=50)
    crm = [e for e in entries if b'"sync_crm"' in e]
    assert resumed.outcome == "done" and list(reversed(redis_client.lrange("{jobs}", 0, -1))) == crm
    assert oldest_first(redis_client, "{jobs}:dead") == [e for e in entries if e not in crm]


def test_the_node_holding_a_queue_killed_mid_trim_then_restarted_archives_each_entry_exactly_once(
        tmp_path, database_url, redis_cluster, redis_client):
    import signal
    import time

    from tests.support.dlq import archived_count, assert_exactly_once, opsbot, reset_schema
    from tests.support.dlqlayout import QueueLayout

    reset_schema(database_url)
    with QueueLayout.cluster_test(redis_cluster) as q:
        path = q.configure(write_config(tmp_path / "app.yaml", database_url), "batch: 50, lease_ttl: 2s")
        entries = [dead_letter(i) for i in range(20_000)]  # room to spare: a fast trim once ended before the kill
        kill(q.client, entries, q.dead)
        node = q.node_of_queue()  # found before the trim starts: looking it up meanwhile let the trim run on
        env = {**os.environ, "RUN_MIGRATIONS": "true"}
        proc = subprocess.Popen(opsbot(path, "dlq trim --keep 1"), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while archived_count(database_url) < 300:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.005)
        os.kill(node.pid, signal.SIGKILL)         # mid-trim, by PID
        node.process.wait()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode != 0 and not re.search(r"MOVED \d+", out + err), out + err
        node.process = None
        node.start()
        q.reconnect()
        assert 1 < q.client.llen(q.dead) < len(entries)

        again = subprocess.run(opsbot(path, "dlq trim --keep 1"), env=env, capture_output=True, text=True,
                               timeout=180)
        assert again.returncode == 0, again.stdout + again.stderr
        assert q.client.llen(q.dead) == 1
        assert_exactly_once(q.client, database_url, Counter(entries), q.ready, q.dead)

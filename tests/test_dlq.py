"""Dead-letter queues against the real Redis: what the on-call sees and what the lists look like after."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from bot.core.invocation import Actor, Where
from commands.dlq.entries import Filters
from commands.dlq.redis_list import RedisListQueue
from tests.conftest import ALICE, BOB, REDIS_URL, write_config
from tests.support.dlq import ERRORS, dead_letter, everything, kill, lease_held, oldest_first, two_queues_runtime
from commands.dlq.settings import find_queue

OPS = Where("C-ops", channel_name="ops")
BINARY = b"\x00\xff\xfe not json \x80"


def run(runtime, text, user=ALICE):
    return runtime.engine.handle(text, Actor(user), OPS)


def requeue(runtime, text, user=ALICE):
    preview = run(runtime, text, user)
    assert preview.kind == "preview", preview.result.summary
    return runtime.engine.confirm(preview.pending.id, Actor(user), OPS)


@pytest.fixture
def q(dlq_layout):
    """The queue's Redis and names: the scenarios below run on one server and on a Redis Cluster."""
    return dlq_layout


@pytest.fixture
def two_queues(tmp_path, database_url, make_runtime, fake_slack, q):
    return two_queues_runtime(tmp_path, database_url, make_runtime, fake_slack, q)


# -- status and peek ------------------------------------------------------------------------

def test_status_shows_ready_and_dead_depth_of_every_queue(two_queues, q):
    kill(q.client, [dead_letter(i, failed_ago=7200 - i) for i in range(12)], q.dead)
    q.client.lpush(q.step_ready, "a", "b")

    result = run(two_queues, "dlq status").result

    assert result.status == "warn" and result.summary == "12 dead letters in 2 queues"
    jobs, step = result.data["queues"]
    assert (jobs["ready"], jobs["dead"], step["ready"], step["dead"]) == (0, 12, 2, 0)
    assert 7190 < jobs["oldest_age_seconds"] < 7300
    assert "oldest 2h" in str(result.sections)


def test_unknown_queue_and_wrong_key_type_are_refused_clearly(two_queues, q):
    unknown = run(two_queues, "dlq peek nope").result
    assert unknown.status == "error" and "unknown queue 'nope'; configured: jobs, step" in unknown.summary

    q.client.set(q.dead, "oops")
    wrong = run(two_queues, "dlq status jobs").result
    assert wrong.status == "error" and f"dead key {q.dead!r} of queue 'jobs' is a Redis string, not a list" in wrong.summary


def test_peek_shows_oldest_first_grouped_with_filters(two_queues, q):
    now = time.time()
    kill(q.client, [dead_letter(i, failed_ago=10000 - i * 100, now=now) for i in range(30)] + [BINARY], q.dead)

    everything_view = run(two_queues, "dlq peek --limit 3").result
    assert everything_view.summary == f"31 of 31 dead letters in `{q.dead}` match all entries"
    assert [e.get("id") for e in everything_view.data["entries"]] == ["job-0", "job-1", "job-2"]
    assert everything_view.data["by_type"] == {"send_email": 10, "render_pdf": 10, "sync_crm": 10, "(opaque)": 1}
    assert everything_view.data["opaque"] == 1

    smtp = run(two_queues, 'dlq peek --error "smtp TIMEOUT" --older-than 2h').result
    # failed 10000-100i seconds ago: older than 2h (7200 s) means i < 28; SMTP errors are i % 3 == 0.
    assert smtp.data["matching"] == len([i for i in range(28) if i % 3 == 0])
    assert smtp.data["by_error"] == {ERRORS[0]: smtp.data["matching"]}

    by_id = run(two_queues, "dlq peek --id job-4 --id job-9").result
    assert sorted(e["id"] for e in by_id.data["entries"]) == ["job-4", "job-9"]


def test_opaque_entries_are_shown_as_bytes_never_dropped(two_queues, q):
    kill(q.client, [BINARY], q.dead)
    result = run(two_queues, "dlq peek").result
    assert result.data["entries"] == [{"opaque": True, "bytes": len(BINARY), "hex": BINARY.hex()}]


def test_peek_redacts_secrets_in_payloads(two_queues, q):
    from bot.render.text import to_text

    kill(q.client, [dead_letter(1)], q.dead)
    text = to_text(run(two_queues, "dlq peek").result)
    assert "hunter2" not in text and "[redacted]" in text


# -- requeue --------------------------------------------------------------------------------

def test_unfiltered_requeue_moves_everything_oldest_first_byte_for_byte(two_queues, q):
    entries = [dead_letter(i) for i in range(40)] + [BINARY]
    kill(q.client, entries, q.dead)

    done = requeue(two_queues, "dlq requeue")

    assert done.result.status == "ok" and done.result.data["moved"] == 41
    assert q.client.llen(q.dead) == 0
    # Workers take from the right: the oldest dead letter is the next job.
    assert list(reversed(q.client.lrange(q.ready, 0, -1))) == entries


def test_filtered_requeue_leaves_the_rest_in_their_original_order(two_queues, q):
    entries = [dead_letter(i) for i in range(50)] + [BINARY]
    kill(q.client, entries, q.dead)

    done = requeue(two_queues, "dlq requeue --type render_pdf")

    moved = [e for e in entries if b'"render_pdf"' in e]
    assert done.result.data["moved"] == len(moved) == 17
    assert list(reversed(q.client.lrange(q.ready, 0, -1))) == moved
    assert oldest_first(q.client, q.dead) == [e for e in entries if e not in moved]
    assert q.held_keys() == []


def test_limit_is_honoured_and_the_rest_stay_in_order(two_queues, q):
    entries = [dead_letter(i) for i in range(30)]
    kill(q.client, entries, q.dead)

    done = requeue(two_queues, "dlq requeue --type send_email --limit 4")

    emails = [e for e in entries if b'"send_email"' in e]
    assert done.result.data["moved"] == 4
    assert list(reversed(q.client.lrange(q.ready, 0, -1))) == emails[:4]
    assert oldest_first(q.client, q.dead) == [e for e in entries if e not in emails[:4]]


def test_rate_is_honoured(two_queues, q):
    kill(q.client, [dead_letter(i) for i in range(30)], q.dead)
    started = time.monotonic()

    done = requeue(two_queues, "dlq requeue --rate 20")

    assert done.result.data["moved"] == 30
    assert time.monotonic() - started >= 1.3  # 30 entries at 20/s cannot finish sooner


def test_dead_letters_arriving_during_a_requeue_are_not_taken(two_queues, q):
    entries = [dead_letter(i) for i in range(60)]
    kill(q.client, entries, q.dead)
    preview = run(two_queues, "dlq requeue --rate 40")
    arrivals = [dead_letter(1000 + i) for i in range(10)]

    def more_deaths():  # once the requeue is running (it holds the lease), not while it is being confirmed
        deadline = time.monotonic() + 10
        while not q.client.exists(q.lease) and time.monotonic() < deadline:
            time.sleep(0.01)
        for entry in arrivals:
            time.sleep(0.05)
            q.client.lpush(q.dead, entry)

    thread = threading.Thread(target=more_deaths)
    thread.start()
    done = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
    thread.join()

    assert done.result.data["moved"] == 60
    assert sorted(q.client.lrange(q.dead, 0, -1)) == sorted(arrivals)
    assert everything(q.client, q.ready, q.dead) == Counter(entries + arrivals)


def test_a_second_requeue_is_told_one_is_running_with_its_progress(two_queues, q):
    kill(q.client, [dead_letter(i) for i in range(40)], q.dead)
    preview = run(two_queues, "dlq requeue --rate 20")
    thread = threading.Thread(target=two_queues.engine.confirm, args=(preview.pending.id, Actor(ALICE), OPS))
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not q.client.exists(q.lease) and time.monotonic() < deadline:
            time.sleep(0.02)
        second = run(two_queues, "dlq requeue", user=BOB)
    finally:
        two_queues.engine.handle("dlq cancel", Actor(ALICE), OPS)
        thread.join()

    assert second.kind == "result" and second.result.status == "warn"
    assert "A requeue of `jobs` is already running" in second.result.summary
    assert second.result.buttons[0].value == "dlq cancel jobs"


def test_cancel_stops_a_running_requeue_and_puts_the_rest_back_in_order(two_queues, q):
    entries = [dead_letter(i) for i in range(60)]
    kill(q.client, entries, q.dead)
    preview = run(two_queues, "dlq requeue --type send_email --rate 10")
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(
        done=two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)))
    thread.start()
    time.sleep(0.8)

    cancelled = run(two_queues, "dlq cancel jobs")
    thread.join()

    assert cancelled.result.data["cancelled"] is True
    done = outcome["done"].result
    assert done.status == "warn" and done.data["outcome"] == "cancelled"
    moved = done.data["moved"]
    assert 0 < moved < 20
    emails = [e for e in entries if b'"send_email"' in e]
    assert list(reversed(q.client.lrange(q.ready, 0, -1))) == emails[:moved]
    assert oldest_first(q.client, q.dead) == [e for e in entries if e not in emails[:moved]]


def test_confirm_is_refused_when_matching_grew_more_than_ten_percent(two_queues, q):
    kill(q.client, [dead_letter(i, type_="send_email") for i in range(20)], q.dead)
    preview = run(two_queues, "dlq requeue --type send_email")
    kill(q.client, [dead_letter(100 + i, type_="send_email") for i in range(2)], q.dead)  # +10%: still fine
    assert two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS).kind == "result"

    kill(q.client, [dead_letter(200 + i, type_="send_email") for i in range(10)], q.dead)
    preview = run(two_queues, "dlq requeue --type send_email")
    kill(q.client, [dead_letter(300 + i, type_="send_email") for i in range(2)], q.dead)  # +20%
    refused = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
    assert refused.kind == "refused"
    assert refused.result.data["plan"]["matching"] == 12
    assert q.client.llen(q.dead) == 12


def test_the_preview_of_an_unfiltered_requeue_groups_a_sample_spread_over_the_queue(two_queues, q):
    older = [dead_letter(i, type_="send_email") for i in range(10_000)]
    newer = [dead_letter(10_000 + i, type_="render_pdf") for i in range(10_000)]
    kill(q.client, older + newer, q.dead)

    preview = run(two_queues, "dlq requeue")

    plan = preview.result.data["plan"]
    assert (plan["matching"], plan["dead"], plan["sampled"]) == (20_000, 20_000, 1000)  # counted, not read
    shown = str(preview.result.sections)
    assert "By type (in a sample of 1,000 of 20,000, spread over the queue)" in shown
    assert "500  send_email" in shown and "500  render_pdf" in shown  # from both ends, not the oldest 1,000
    done = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
    assert done.result.data["moved"] == 20_000 and q.client.llen(q.dead) == 0


def test_a_small_queue_is_previewed_whole_not_sampled(two_queues, q):
    kill(q.client, [dead_letter(i) for i in range(30)], q.dead)
    preview = run(two_queues, "dlq requeue")
    assert "sampled" not in preview.result.data["plan"] and "sample of" not in str(preview.result.sections)
    assert "10  send_email" in str(preview.result.sections)


def test_confirm_checks_the_length_and_scans_again_only_when_arrivals_exceed_the_bound(two_queues, q):
    kill(q.client, [dead_letter(i) for i in range(60)], q.dead)  # 20 of each type
    preview = run(two_queues, "dlq requeue --type send_email")
    # 30 arrivals of another type: the length alone allows 50 matches now, beyond 20 + 10%; the scan
    # that follows finds the same 20, so the plan stands.
    kill(q.client, [dead_letter(1000 + i, type_="sync_crm") for i in range(30)], q.dead)
    done = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
    assert done.kind == "result" and done.result.data["moved"] == 20

    kill(q.client, [dead_letter(2000 + i, type_="send_email") for i in range(20)], q.dead)
    preview = run(two_queues, "dlq requeue --type send_email")
    kill(q.client, [dead_letter(3000, type_="send_email")], q.dead)  # within the bound: confirmed on the length
    done = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
    assert done.kind == "result" and done.result.data["moved"] == 21
    assert q.client.llen(q.dead) == 70


def test_a_filtered_confirm_after_the_oldest_entries_went_scans_again_and_refuses_a_changed_world(two_queues, q):
    kill(q.client, [dead_letter(i) for i in range(30)], q.dead)  # 10 send_email
    preview = run(two_queues, "dlq requeue --type send_email")
    q.client.delete(q.dead)  # trimmed away by someone else, then 30 others died, all of the type: same length
    kill(q.client, [dead_letter(100 + i, type_="send_email") for i in range(30)], q.dead)

    refused = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert refused.kind == "refused" and refused.result.data["plan"]["matching"] == 30
    assert q.client.llen(q.ready) == 0


def test_a_confirm_never_moves_more_than_the_plan_counted(two_queues, q):
    entries = [dead_letter(i) for i in range(30)]  # 10 send_email
    kill(q.client, entries, q.dead)
    preview = run(two_queues, "dlq requeue --type send_email")
    # Removed from the middle (an LREM by hand) and as many others of the type arrive: the length and the
    # oldest entry are what they were, so Confirm cannot tell; the move still takes only the 10 counted.
    for entry in [e for e in entries if b'"sync_crm"' in e][1:6]:
        q.client.lrem(q.dead, 1, entry)
    arrivals = [dead_letter(100 + i, type_="send_email") for i in range(5)]
    kill(q.client, arrivals, q.dead)

    done = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    emails = [e for e in entries if b'"send_email"' in e]
    assert done.kind == "result" and done.result.data["moved"] == 10
    assert list(reversed(q.client.lrange(q.ready, 0, -1))) == emails  # the previewed ones, oldest first
    assert oldest_first(q.client, q.dead)[-5:] == arrivals


def test_nothing_to_requeue_needs_no_confirmation(two_queues, q):
    outcome = run(two_queues, "dlq requeue --type nothing_like_this")
    assert outcome.kind == "result" and outcome.result.summary.startswith("Nothing to requeue")


def test_progress_is_reported_with_a_cancel_button(two_queues, q):
    kill(q.client, [dead_letter(i) for i in range(30)], q.dead)
    seen = []
    preview = run(two_queues, "dlq requeue --rate 30")
    two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS, progress=seen.append)

    assert seen and "Requeueing `jobs`:" in seen[-1].summary
    assert seen[-1].data["moved"] == 30
    assert seen[0].buttons[0].value == "dlq cancel jobs"


def test_redis_down_gives_a_clear_message(tmp_path, database_url, make_runtime, redis_client):
    path = write_config(tmp_path / "app.yaml", database_url)
    path.write_text(path.read_text().replace(f'  main: {{url: "{REDIS_URL}"}}',
                                             '  main: {url: "redis://127.0.0.1:1/0"}'))
    runtime = make_runtime(path)
    result = run(runtime, "dlq status").result
    assert result.status == "error" and result.summary.startswith("Redis is unreachable")


# -- the backend directly: task state ---------------------------------------------------------

def test_an_interrupted_requeue_resumes_from_its_task_state(two_queues, q):
    entries = [dead_letter(i) for i in range(50)]
    kill(q.client, entries, q.dead)
    queue = RedisListQueue(find_queue(two_queues.settings, "jobs"), q.client)
    task = queue.start_requeue(Filters(type="sync_crm"), limit=None, rate=None, matching=17, requested_by=ALICE)
    calls = {"n": 0}

    def stop_after_two_batches():
        calls["n"] += 1
        return calls["n"] > 2

    first = queue.run_requeue(task.id, owner="a", batch=7, should_stop=stop_after_two_batches)
    assert first.outcome == "interrupted" and first.task.status == "running"
    assert first.task.scanned == 14 and q.client.llen(queue.held_key(task.id)) > 0
    assert everything(q.client, q.ready, q.dead) == Counter(entries)  # held entries counted too

    plan = run(two_queues, "dlq requeue")
    assert plan.kind == "preview" and "resume the interrupted requeue" in plan.result.summary
    done = two_queues.engine.confirm(plan.pending.id, Actor(ALICE), OPS)

    crm = [e for e in entries if b'"sync_crm"' in e]
    assert done.result.data["moved"] == len(crm)
    assert list(reversed(q.client.lrange(q.ready, 0, -1))) == crm
    assert oldest_first(q.client, q.dead) == [e for e in entries if e not in crm]


# -- trim -----------------------------------------------------------------------------------

def archived(database_url) -> list[tuple]:
    import psycopg

    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT task_id, ordinal, queue, entry FROM opsbot.dlq_archive ORDER BY ordinal").fetchall()


def test_trim_archives_what_it_drops_and_keeps_the_newest(two_queues, q, database_url):
    entries = [dead_letter(i) for i in range(23)] + [BINARY]
    kill(q.client, entries, q.dead)

    preview = run(two_queues, "dlq trim")  # keep: 5 from the queue's settings
    assert preview.result.data["plan"] == {"queue": "jobs", "keep": 5, "to_drop": 19, "dead": 24, "matching": 19}
    done = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert done.result.status == "ok" and done.result.data["dropped"] == 19
    assert oldest_first(q.client, q.dead) == entries[19:]
    rows = archived(database_url)
    assert [bytes(r[3]) for r in rows] == entries[:19] and [r[1] for r in rows] == list(range(19))


def test_trim_survives_a_crash_between_archive_and_removal(two_queues, q, database_url):
    entries = [dead_letter(i) for i in range(30)]
    kill(q.client, entries, q.dead)
    queue = RedisListQueue(find_queue(two_queues.settings, "jobs"), q.client)
    import psycopg

    def archive(task_id, first, batch):
        with psycopg.connect(database_url) as conn:
            for offset, entry in enumerate(batch):
                conn.execute("INSERT INTO opsbot.dlq_archive (task_id, ordinal, queue, dead_key, entry)"
                             " VALUES (%s, %s, 'jobs', 'jobs:dead', %s) ON CONFLICT DO NOTHING",
                             (task_id, first + offset, entry))
        if first == 8:
            raise SystemExit("killed after archiving, before removing")

    with pytest.raises(SystemExit):
        queue.run_trim(keep=4, archive=archive, batch=8)
    assert q.client.llen(q.dead) == 22  # one batch removed, the second archived but still there

    preview = run(two_queues, "dlq trim jobs --keep 4")
    done = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert done.result.data["dropped"] == 26
    assert oldest_first(q.client, q.dead) == entries[26:]
    rows = archived(database_url)
    assert [bytes(r[3]) for r in rows] == entries[:26]          # each exactly once
    assert len({r[0] for r in rows}) == 1                       # one task, resumed


def test_trim_with_nothing_to_drop(two_queues, q):
    kill(q.client, [dead_letter(i) for i in range(3)], q.dead)
    outcome = run(two_queues, "dlq trim")
    assert outcome.kind == "result" and outcome.result.summary.startswith("Nothing to trim")


def test_a_dead_letter_reads_well_at_3am(runtime, redis_client):
    import json as _json
    import time as _time

    from bot.render.text import to_text

    now = _time.time()
    kill(redis_client, [_json.dumps({"id": "job-1", "type": "send_email", "attempts": None, "error": "SMTP timeout",
                                     "failedAt": now - 7200.5}).encode(),
                        _json.dumps({"id": "job-2", "type": "send_email", "failedAt": "yesterday"}).encode()])
    text = to_text(runtime.engine.handle("dlq peek", Actor(ALICE), Where("C-ops")).result)
    assert "attempts=None" not in text and "failedAt=" not in text
    assert "job-1  send_email  failed " in text and " UTC (2h" in text
    assert "job-2  send_email  failed at 'yesterday' (not a time opsbot reads)" in text


def test_dead_letters_arriving_between_preview_and_confirm_change_the_plan_and_nothing_moves(two_queues, q):
    entries = [dead_letter(i) for i in range(30)]
    kill(q.client, entries, q.dead)
    preview = run(two_queues, "dlq requeue")
    arrivals = [dead_letter(1000 + i) for i in range(5)]
    for entry in arrivals:
        q.client.lpush(q.dead, entry)
    again = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert again.kind == "refused" and "requeue 35 of 35" in again.result.summary  # the new plan, to confirm again
    assert q.client.llen(q.ready) == 0 and q.client.llen(q.dead) == 35
    done = two_queues.engine.confirm(again.pending.id, Actor(ALICE), OPS)
    assert done.result.data["moved"] == 35
    assert everything(q.client, q.ready, q.dead) == Counter(entries + arrivals)


@pytest.mark.parametrize("earlier_requeue", [False, True])
def test_a_requeue_that_has_its_lease_but_no_task_yet_is_a_running_requeue(two_queues, q, earlier_requeue):
    """Between taking the queue's lease and writing its task, a requeue is only its lease. A second requeue in
    that window was shown a preview to confirm (or an earlier, finished requeue's progress as this one's)."""
    kill(q.client, [dead_letter(i) for i in range(30)], q.dead)
    if earlier_requeue:
        done = two_queues.engine.confirm(run(two_queues, "dlq requeue --limit 5").pending.id, Actor(ALICE), OPS)
        assert done.result.status == "ok"  # a finished requeue task stays behind
    with lease_held(q, "requeue"):
        refused = run(two_queues, "dlq requeue", user=BOB)
    assert refused.kind == "result" and refused.result.status == "warn"
    assert refused.result.summary.startswith("A requeue of `jobs` is already running (just starting).")
    assert refused.result.buttons[0].value == "dlq cancel jobs"
    assert run(two_queues, "dlq requeue", user=BOB).kind == "preview"  # the lease gone: a preview again

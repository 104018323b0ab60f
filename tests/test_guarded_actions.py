"""Guarded actions at the engine level, with a real side effect in Redis.

Each test reads as what an on-call engineer does: request, look at the preview,
confirm (or not), and what the world looks like afterwards.
"""

from __future__ import annotations

import threading
import time

import pytest

from bot.core.invocation import Actor, Where
from bot.engine.pending import PendingStore
from tests.conftest import ADMIN, ALICE, BOB, CAROL, MALLORY, write_config
from tests.support.commands import COUNTER, executions

OPS = Where("C-ops", channel_name="ops")



def log_actions(runtime) -> list[str]:
    return [entry.action for entry in runtime.state.action_log.entries()]


def test_preview_changes_nothing_until_confirmed(runtime, redis_client):
    preview = runtime.engine.handle("test bump --by 3", Actor(ALICE), OPS)

    assert preview.kind == "preview"
    assert preview.result.summary == "Preview: add 3 to the counter (0 → 3)"
    assert [b.label for b in preview.result.buttons] == ["Confirm", "Cancel"]
    assert executions(redis_client) == 0

    done = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert done.kind == "result" and done.result.status == "ok"
    assert done.result.data["counter"] == 3
    assert done.result.data["confirmed_by"] == ALICE
    assert executions(redis_client) == 1
    assert log_actions(runtime) == ["request", "confirm", "outcome"]


def test_double_click_and_replicas_execute_exactly_once(runtime, make_runtime, redis_client):
    other_replica = make_runtime()
    preview = runtime.engine.handle("test bump --slow 0.2", Actor(ALICE), OPS)
    outcomes, barrier = [], threading.Barrier(8)

    def click(engine):
        barrier.wait()
        outcomes.append(engine.confirm(preview.pending.id, Actor(ALICE), OPS))

    threads = [threading.Thread(target=click, args=(e,)) for e in [runtime.engine, other_replica.engine] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert executions(redis_client) == 1
    assert sorted(o.kind for o in outcomes) == ["result"] + ["taken"] * 7
    late = [o for o in outcomes if o.kind == "taken"][0]
    assert late.result.summary == f"Already confirmed by <@{ALICE}>; nothing more was done."


def test_a_click_while_another_confirm_is_being_recorded_is_not_told_it_ran(runtime, redis_client):
    """Another replica has claimed the Confirm and is still writing its confirm row (which may yet fail, and give the
    button back): a click now is told who confirmed it, and that nothing has started, not that it was done."""
    preview = runtime.engine.handle("test bump", Actor(ALICE), OPS)
    other_replica = PendingStore(redis_client, runtime.settings.state.prefix)
    assert other_replica.claim(preview.pending.id, "confirmed", BOB).state == "claimed"

    late = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert late.kind == "taken" and late.result.summary == f"Already confirmed by <@{BOB}>; nothing more was done."
    assert [section.text for section in late.result.sections] == ["It has not started running yet."]
    assert executions(redis_client) == 0


def test_user_without_the_role_cannot_request_or_confirm(runtime, redis_client):
    denied = runtime.engine.handle("test bump", Actor(MALLORY), OPS)
    assert denied.kind == "denied"
    assert "needs the `oncall` role" in denied.result.summary

    preview = runtime.engine.handle("test bump", Actor(ALICE), OPS)
    refused = runtime.engine.confirm(preview.pending.id, Actor(MALLORY), OPS)

    assert refused.kind == "denied"
    assert executions(redis_client) == 0
    # The pending action is still there for Alice.
    assert runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS).kind == "result"
    assert "denied" in log_actions(runtime)


def test_only_the_requester_confirms_a_single_person_action(runtime, redis_client):
    preview = runtime.engine.handle("test bump", Actor(ALICE), OPS)

    refused = runtime.engine.confirm(preview.pending.id, Actor(BOB), OPS)

    assert refused.kind == "denied"
    assert f"Only <@{ALICE}>" in refused.result.summary
    assert executions(redis_client) == 0


def test_confirmation_is_bound_to_the_channel(runtime, redis_client):
    preview = runtime.engine.handle("test bump", Actor(ALICE), OPS)

    elsewhere = runtime.engine.confirm(preview.pending.id, Actor(ALICE), Where("C-other"))

    assert elsewhere.kind == "denied"
    assert executions(redis_client) == 0


def test_user_group_membership_grants_the_role(runtime, redis_client, fake_slack):
    preview = runtime.engine.handle("test bump", Actor(CAROL), OPS)
    assert preview.kind == "preview"
    runtime.engine.confirm(preview.pending.id, Actor(CAROL), OPS)

    assert executions(redis_client) == 1
    # Membership was read once through the Web API, then served from the Redis cache.
    assert len(fake_slack.calls("usergroups.users.list")) == 1
    assert fake_slack.calls("usergroups.users.list")[0].body["usergroup"] == "SONCALL"


def test_admin_role_includes_oncall(runtime, redis_client):
    preview = runtime.engine.handle("test bump", Actor(ADMIN), OPS)
    assert runtime.engine.confirm(preview.pending.id, Actor(ADMIN), OPS).kind == "result"


def test_two_person_action_needs_a_second_responder(runtime, redis_client):
    preview = runtime.engine.handle("test bump2", Actor(ALICE), OPS)
    assert preview.result.data["two_person"] is True

    alone = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
    assert alone.kind == "waiting"
    assert executions(redis_client) == 0

    outsider = runtime.engine.confirm(preview.pending.id, Actor(MALLORY), OPS)
    assert outsider.kind == "denied"
    assert executions(redis_client) == 0

    second = runtime.engine.confirm(preview.pending.id, Actor(BOB), OPS)
    assert second.kind == "result"
    assert second.result.data["requested_by"] == ALICE and second.result.data["confirmed_by"] == BOB
    assert executions(redis_client) == 1


def test_cancel_changes_nothing_and_blocks_a_later_confirm(runtime, redis_client):
    preview = runtime.engine.handle("test bump", Actor(ALICE), OPS)

    cancelled = runtime.engine.cancel(preview.pending.id, Actor(ALICE), OPS)
    late = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert cancelled.kind == "cancelled"
    assert late.kind == "taken" and "Already cancelled" in late.result.summary
    assert executions(redis_client) == 0
    assert log_actions(runtime) == ["request", "cancel"]


def test_expired_confirmation_changes_nothing(tmp_path, database_url, make_runtime, redis_client):
    runtime = make_runtime(write_config(tmp_path / "short.yaml", database_url, confirm_ttl="0.3s"))
    preview = runtime.engine.handle("test bump", Actor(ALICE), OPS)

    time.sleep(0.5)  # let Redis expire the pending action
    late = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert late.kind == "expired"
    assert "expired" in late.result.summary and "nothing was changed" in late.result.summary
    assert executions(redis_client) == 0
    assert late.exit_code == 3


def test_plan_is_rechecked_and_refused_when_the_world_moved(runtime, redis_client):
    preview = runtime.engine.handle("test bump", Actor(ALICE), OPS)
    redis_client.set(COUNTER, 40)  # someone else changed the counter after the preview

    refused = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert refused.kind == "refused"
    assert executions(redis_client) == 0
    assert "Not executed" in refused.result.sections[0].text
    assert refused.result.summary == "Preview: add 1 to the counter (40 → 41)"
    # The new plan can be confirmed.
    assert runtime.engine.confirm(refused.pending.id, Actor(ALICE), OPS).result.data["counter"] == 41


def test_guarded_outcome_is_announced_to_the_incident_channel(runtime, redis_client, fake_slack):
    preview = runtime.engine.handle("test bump", Actor(ALICE), OPS)
    runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    posts = fake_slack.wait_for("chat.postMessage", count=2)
    assert [post.body["channel"] for post in posts] == ["#incidents", "#incidents"]
    assert f"<@{ALICE}> requested `test bump`, awaiting confirmation" in posts[0].body["text"]
    assert "counter is now 1" in posts[1].body["text"]


def test_nothing_is_announced_twice_in_the_incident_channel_itself(runtime, redis_client, fake_slack):
    incident_room = Where("C-inc", channel_name="incidents")
    preview = runtime.engine.handle("test bump", Actor(ALICE), incident_room)
    runtime.engine.confirm(preview.pending.id, Actor(ALICE), incident_room)

    assert fake_slack.calls("chat.postMessage") == []


def test_guarded_request_is_refused_when_the_action_log_is_down(tmp_path, make_runtime, redis_client):
    dead_db = "postgresql://127.0.0.1:1/none?connect_timeout=1"
    runtime = make_runtime(write_config(tmp_path / "nodb.yaml", dead_db), migrate=False)

    outcome = runtime.engine.handle("test bump", Actor.local(), OPS)

    assert outcome.kind == "result" and outcome.result.status == "error"
    assert "action log cannot be written" in outcome.result.summary
    assert runtime.state.redis.keys("opsbot:pending:*") == []


@pytest.mark.parametrize("text", ["test bump --by 2", "test bump by=2", 'test   bump  "--by"  2'])
def test_action_log_records_the_canonical_command(runtime, redis_client, text):
    preview = runtime.engine.handle(text, Actor(ALICE), OPS)
    runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    request = runtime.state.action_log.entries(pending_id=preview.pending.id)[0]
    assert request.payload["text"] == "test bump --by 2"
    assert runtime.state.action_log.verify().ok

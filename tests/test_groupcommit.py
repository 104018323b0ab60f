"""Pushes onto the work queue from many threads at once: one LPUSH carries many, and each push still
returns only once its own document is in Redis, raises when it is not, and is there exactly once.

These are the acks of `opsbot serve` under load: waitress's threads each push one Slack delivery,
and Slack hears "ok" only when the push returned.
"""

from __future__ import annotations

import json
import threading

import pytest
import redis

from bot.store.groupcommit import GroupCommit
from bot.store.workqueue import WorkQueue
from tests.support.servers import RedisServer

THREADS, EACH = 24, 150


def push_from_threads(queue: WorkQueue, *, each: int = EACH, between=None) -> tuple[list[dict], list[dict]]:
    """Every thread pushes ``each`` bodies ``{"thread": t, "n": n}`` in order; returns (returned, raised)."""
    returned: list[dict] = []
    raised: list[dict] = []
    start = threading.Barrier(THREADS)

    def pusher(thread: int) -> None:
        start.wait()
        for n in range(each):
            body = {"thread": thread, "n": n}
            try:
                queue.push("command", body)
            except redis.RedisError:
                raised.append(body)
            else:
                returned.append(body)
            if between is not None:
                between(thread, n)

    run_all(pusher)
    return returned, raised


def run_all(pusher, timeout: float = 60) -> None:
    """``pusher(n)`` on THREADS threads at once; each must return (a lost lead would leave some waiting)."""
    threads = [threading.Thread(target=pusher, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a pusher never returned: a batch's leadership was lost"


def queued(client: redis.Redis, queue: WorkQueue) -> list[dict]:
    """The queue's bodies in the order workers take them (from the tail)."""
    return [json.loads(raw)["body"] for raw in reversed(client.lrange(queue.queue, 0, -1))]


def test_every_push_is_queued_once_in_order_with_far_fewer_round_trips(own_redis):
    client = redis.Redis.from_url(own_redis.url)
    queue = WorkQueue(client, "gc:")
    client.config_resetstat()
    returned, raised = push_from_threads(queue)
    assert raised == [] and len(returned) == THREADS * EACH
    bodies = queued(client, queue)
    assert sorted((b["thread"], b["n"]) for b in bodies) == [(t, n) for t in range(THREADS) for n in range(EACH)]
    for thread in range(THREADS):  # each thread's pushes are taken in the order it made them
        assert [b["n"] for b in bodies if b["thread"] == thread] == list(range(EACH))
    lpushes = client.info("commandstats")["cmdstat_lpush"]["calls"]
    assert lpushes < THREADS * EACH / 2, f"{lpushes} LPUSH for {THREADS * EACH} pushes: they were not gathered"


def test_a_push_alone_goes_at_once(redis_client):
    queue = WorkQueue(redis_client, "gc:")
    queue.push("command", {"n": 1})
    assert queued(redis_client, queue) == [{"n": 1}]


def test_pushes_whose_lpush_failed_raise_and_are_not_queued_and_the_rest_go_on(redis_client):
    """The queue's key turned into a string for a while (any Redis error will do): every push in a failed
    LPUSH raises, so its request is told "not queued"; none of them is in the queue afterwards, every push
    that returned is, once; and the threads behind a failed batch are still led on (nobody hangs)."""
    queue = WorkQueue(redis_client, "gc:")

    def break_and_mend(thread: int, n: int) -> None:
        # Each swap in one MULTI: an LPUSH landing between a RENAME and the SET would make a new list that
        # the SET then overwrites, losing a push that had returned (the test's own doing, not the queue's).
        if thread == 0 and n == 40:  # the key becomes a string: LPUSH answers WRONGTYPE
            redis_client.pipeline().rename(queue.queue, "gc:aside").set(queue.queue, "not a list").execute()
        if thread == 0 and n == 80:
            redis_client.pipeline().delete(queue.queue).rename("gc:aside", queue.queue).execute()

    returned, raised = push_from_threads(queue, between=break_and_mend)
    assert raised, "no push was made while the key was broken: the test proves nothing"
    assert len(returned) + len(raised) == THREADS * EACH
    bodies = queued(redis_client, queue)
    assert sorted(map(json.dumps, bodies)) == sorted(map(json.dumps, returned))


def test_every_push_that_returned_survives_redis_killed_mid_load():
    """The server (appendfsync always) is killed under load: pushes after it raise, every thread returns, and
    after a restart every push that had returned is in the queue, once. (One that raised may be there too: its
    LPUSH can have been written before the reply was lost; the user was told it may not have been queued.)"""
    server = RedisServer(persist=True).start()
    try:
        client = redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
        queue = WorkQueue(client, "gc:")

        def kill_midway(thread: int, n: int) -> None:
            if thread == 0 and n == 60:
                server.kill()

        returned, raised = push_from_threads(queue, between=kill_midway)
        assert raised and len(returned) >= 60
        server.start()
        bodies = [json.dumps(body) for body in queued(server.client(), queue)]
        assert len(bodies) == len(set(bodies))
        assert set(map(json.dumps, returned)) <= set(bodies)
    finally:
        server.close()


def test_pushes_gathered_behind_a_timed_out_lpush_are_not_sent_into_the_same_silence(own_redis):
    """Redis goes quiet (SIGSTOP). The first LPUSH waits out its 1 s socket timeout while the other threads
    gather behind it; had they then sent an LPUSH of their own, each would wait out a second timeout and an
    ack would take twice what the ack client's timeout promises (2 s of Slack's 3). They are told instead,
    as soon as the LPUSH ahead of them fails, that theirs was not sent (a ConnectionError: "not queued"):
    the server, resumed, saw one LPUSH for the whole burst, and holds none of the pushes never sent."""
    import os
    import signal

    client = redis.Redis.from_url(own_redis.url, socket_timeout=1, socket_connect_timeout=1,
                                  retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))  # as the ack client
    queue = WorkQueue(client, "gc:")
    own_redis.client().config_resetstat()
    client.ping()  # connected before the silence, as a serving process is
    outcomes: list[BaseException | None] = [None] * THREADS

    def pusher(n: int) -> None:
        try:
            queue.push("command", {"n": n})
        except Exception as exc:  # noqa: BLE001 - every outcome is looked at below
            outcomes[n] = exc

    os.kill(own_redis.pid, signal.SIGSTOP)
    try:
        run_all(pusher, timeout=30)
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    timed_out = [n for n, exc in enumerate(outcomes) if isinstance(exc, redis.TimeoutError)]
    not_sent = [n for n, exc in enumerate(outcomes) if isinstance(exc, redis.ConnectionError)]
    assert sorted(timed_out + not_sent) == list(range(THREADS)) and timed_out and not_sent, outcomes
    server = own_redis.client()
    lpushes = server.info("commandstats")["cmdstat_lpush"]["calls"]
    assert lpushes == 1, f"{lpushes} LPUSH: pushes gathered behind a timed-out one went on into the silence"
    assert {body["n"] for body in queued(server, queue)} <= set(timed_out), "a push never sent is queued"


def test_a_waiter_interrupted_by_a_signal_does_not_leave_the_rest_waiting_for_ever():
    """A write waiting behind a send is interrupted (a signal handler raising in the main thread: SIGTERM's
    SystemExit, Ctrl-C). It raises, and is not sent; but had the send ahead handed it the lead, nobody would
    send again and every later write would wait for ever. The next write still goes."""
    import signal

    sent: list[list[str]] = []
    first_send = threading.Event()

    def send(items: list[str]) -> None:
        if not sent:
            first_send.wait(10)  # the first send is in flight while the main thread waits behind it
        sent.append(items)

    pushes = GroupCommit(send)
    ahead = threading.Thread(target=pushes.submit, args=("ahead",), daemon=True)
    ahead.start()

    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupted):
            pushes.submit("interrupted")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    first_send.set()
    ahead.join(10)
    after = threading.Thread(target=pushes.submit, args=("after",), daemon=True)
    after.start()
    after.join(10)
    assert not after.is_alive(), "the write after an interrupted waiter was never sent"
    assert sent == [["ahead"], ["after"]], sent

"""The demo fires an alert at itself: Alertmanager's webhook for the dead-letter backlog, POSTed to its own intake.

Usage::

    gid = fire_alert(runtime, token)      # the alert group's id: `/ops alerts show <gid>` shows its thread

It serves ``POST /alerts`` (the same intake as ``opsbot serve``) on a free loopback port,
posts the webhook Alertmanager would send with the bearer token, then does a worker's job:
takes the queued body and handles it (the thread: the runbook and its diagnosis). The demo has
no Slack, so the thread is kept with the alert group and shown by ``alerts show``.
"""

from __future__ import annotations

import hashlib
import threading
import time

import httpx
from waitress.server import create_server

from bot.runtime.factory import Runtime
from bot.runtime.hooks import WebhookIntake, run_webhook
from bot.store.workqueue import WorkQueue

__all__ = ["ALERT", "GID", "fire_alert"]

GROUP_KEY = '{}:{alertname="DeadLetterBacklog", queue="jobs"}'
ALERT = {
    "version": "4", "groupKey": GROUP_KEY, "truncatedAlerts": 0, "status": "firing", "receiver": "opsbot",
    "groupLabels": {"alertname": "DeadLetterBacklog", "queue": "jobs"},
    "commonLabels": {"alertname": "DeadLetterBacklog", "queue": "jobs", "severity": "warning"},
    "commonAnnotations": {"summary": "161 dead letters in jobs"},
    "externalURL": "http://alertmanager.demo:9093",
    "alerts": [{"status": "firing", "labels": {"alertname": "DeadLetterBacklog", "queue": "jobs", "severity": "warning"},
                "annotations": {"summary": "161 dead letters in jobs"}, "startsAt": "2026-11-23T03:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus.demo:9090/graph",
                "fingerprint": "5a1d3c2b1a0f9e8d"}],
}
OWNER = "opsbot-demo"
GID = hashlib.sha256(GROUP_KEY.encode()).hexdigest()[:16]


def fire_alert(runtime: Runtime, token: str, timeout: float = 60.0) -> str:
    queue = WorkQueue(runtime.state.redis, runtime.settings.state.prefix)
    intake = WebhookIntake(runtime, queue)
    server = create_server(intake, host="127.0.0.1", port=0, threads=2, ident="opsbot-demo")
    serving = threading.Thread(target=server.run, name="opsbot-demo-http", daemon=True)
    serving.start()
    try:
        response = httpx.post(f"http://127.0.0.1:{server.effective_port}/alerts", json=ALERT, timeout=10,
                              headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
    finally:
        # The handler thread may still be finishing its task after the answer arrived: let it, before the
        # server's trigger is closed under it (waitress would log that as a traceback).
        server.task_dispatcher.shutdown(cancel_pending=False, timeout=5)
        server.close()
        serving.join(5)
    deadline = time.monotonic() + timeout
    while not _done(runtime):  # what a worker does: take the queued body, handle it, mark it done
        if time.monotonic() > deadline:
            raise TimeoutError("the demo's alert was not handled in time")
        job = queue.take(OWNER, timeout=1)
        if job is not None:
            run_webhook(runtime, job, queue)
            queue.done(OWNER, job)
    return GID


def _done(runtime: Runtime) -> bool:
    key = f"{runtime.settings.state.prefix}alerts:group:{GID}"
    raw = runtime.state.redis.get(key)
    return bool(raw) and b"Diagnosis, step 2" in raw

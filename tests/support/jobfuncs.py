"""Job functions that RQ and BullMQ workers run in the tests (and the demo): they fail for real.

Each fails while the Redis key ``jobfuncs:broken`` is set (with an error of its own kind), and
once it is not, succeeds by appending its job id to ``jobfuncs:ran``: the proof of which jobs a
worker ran again, and how often.
"""

from __future__ import annotations

BROKEN = "jobfuncs:broken"
RAN = "jobfuncs:ran"


def _rq_run(error: Exception) -> str:
    from rq import get_current_job

    job = get_current_job()
    if job.connection.exists(BROKEN):
        raise error
    job.connection.rpush(RAN, job.id)
    return job.id


def send_email(to: str) -> str:
    return _rq_run(ConnectionError(f"SMTP timeout after 30s sending to {to}"))


def render_pdf(document: str) -> str:
    return _rq_run(ValueError(f"template {document!r} has no <body>"))

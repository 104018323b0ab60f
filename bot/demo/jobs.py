"""The demo app's RQ jobs: the billing API they call is down, so they fail for real in an RQ worker.

``bot.demo.world.seed_rq`` enqueues them on the RQ queue ``mail`` and runs ``rq worker --burst``:
RQ records each failure in ``rq:failed:mail`` with its traceback, as in production.
"""

from __future__ import annotations

__all__ = ["send_invoice", "sync_ledger"]


def send_invoice(customer: str, amount_cents: int) -> None:
    raise ConnectionError(f"billing API refused the connection (503) sending {customer}'s invoice")


def sync_ledger(customer: str) -> None:
    ledger: dict[str, int] = {}
    ledger[customer] += 1  # KeyError: the customer was never opened in the ledger

"""The periodic sweep: every deadline Signoff keeps, in one place for both of the ways it is run."""

from __future__ import annotations

from approvals.services.calls import calls_expire_due
from approvals.services.presence import calls_cancel_detached
from approvals.services.results import results_expire_due
from approvals.services.tokens import tokens_expire_due


def sweep_due() -> int:
    """Expire held calls and held results past their deadline, cancel held calls whose bridge went away and
    did not come back, and expire tokens past their expiry (closing their bridges). Run every 2 s by Celery
    beat, or by the embedded default's in-process sweeper (approvals/sweeper.py). Returns how many changed."""
    return calls_expire_due() + results_expire_due() + calls_cancel_detached() + tokens_expire_due()

"""Celery tasks: thin wrappers that call a service."""

from __future__ import annotations

from celery import shared_task

from approvals.services.calls import calls_expire_due
from approvals.services.tokens import tokens_expire_due


@shared_task(name="approvals.tasks.expire_due_calls", ignore_result=True)
def expire_due_calls() -> int:
    """Expire held calls past their deadline and tokens past their expiry (scheduled by Celery beat)."""
    return calls_expire_due() + tokens_expire_due()

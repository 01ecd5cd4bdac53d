"""Celery tasks: thin wrappers that call a service."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from approvals.services import notifications
from approvals.services.retention import payloads_purge_due
from approvals.services.sweep import sweep_due


@shared_task(name="approvals.tasks.expire_due_calls", ignore_result=True)
def expire_due_calls() -> int:
    """The sweep of every deadline (``sweep_due``), scheduled every 2 s by Celery beat."""
    return sweep_due()


@shared_task(name="approvals.tasks.purge_payloads", ignore_result=True)
def purge_payloads() -> int:
    """Clear payloads past their team's retention (scheduled hourly by Celery beat). Returns how many."""
    return sum(result.purged for result in payloads_purge_due())


@shared_task(
    bind=True,
    name="approvals.tasks.deliver_notification",
    ignore_result=True,
    max_retries=notifications.MAX_RETRIES,
    # A worker killed mid-delivery leaves the message to another (at least once: receivers deduplicate on
    # the message id), as for every task here (CELERY_TASK_ACKS_LATE).
    acks_late=True,
)
def deliver_notification(self: Task, channel_id: int, message: dict[str, Any]) -> None:
    """Deliver one message through one channel; a transient failure is retried with exponential backoff
    (``notifications.delivery_attempt`` decides, and records the outcome on the channel).

    Used with a worker (Redis). The embedded default delivers in a thread instead
    (``notifications.deliver_with_retries``): see ``approvals.services.notifications``.
    """
    countdown = notifications.delivery_attempt(
        channel_id=channel_id, message=message, retries=self.request.retries or 0
    )
    if countdown is not None:
        raise self.retry(countdown=countdown)

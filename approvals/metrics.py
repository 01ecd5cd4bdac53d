"""Prometheus metrics of Signoff. Placeholder until the operators' work lands: nothing is counted yet."""

from __future__ import annotations


def count_rate_limit_hit(*, team_slug: str, scope: str) -> None:
    """One call denied by a rate limit."""


def count_notification_failure(*, kind: str) -> None:
    """One notification that could not be delivered (after its last retry)."""

"""Telling people: held calls to a team's reviewers, alerts to its admins, through the team's channels."""

from __future__ import annotations

from typing import Any

from approvals.models import Team


def notify_team(
    *, team: Team, event: str, subject: str, text: str, link: str, payload: dict[str, Any]
) -> None:
    """Queue one message per enabled channel of the team that subscribes to ``event`` ("call.held" or
    "alert"), sent after the current transaction commits, by Celery tasks with retries and backoff.

    Placeholder until the notifications work lands: it sends nothing yet.
    """

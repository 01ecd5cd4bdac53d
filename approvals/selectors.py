"""Reads that matter, with their joins applied once here."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from approvals.models import Membership, Team, ToolCall

_CALL_RELATIONS = ("team", "token", "requester", "decided_by")


def pending_calls_for(*, team: Team) -> QuerySet[ToolCall]:
    """The team's held calls, oldest first."""
    return (
        ToolCall.objects.select_related(*_CALL_RELATIONS)
        .filter(team=team, state=ToolCall.State.PENDING)
        .order_by("created_at")
    )


def queue_for(*, team: Team) -> QuerySet[ToolCall]:
    """What waits for the team's reviewers, oldest first: held calls, and results held for review."""
    held = Q(state=ToolCall.State.PENDING) | Q(result_review=ToolCall.ResultReview.HELD)
    return ToolCall.objects.select_related(*_CALL_RELATIONS).filter(held, team=team).order_by("created_at")


def decided_calls_for(*, team: Team, requester_id: int | None = None) -> QuerySet[ToolCall]:
    """The team's calls that left the queue, newest first; with ``requester_id``, only that person's
    (the calls made with their own tokens: what a member sees)."""
    calls = ToolCall.objects.select_related(*_CALL_RELATIONS).filter(team=team)
    if requester_id is not None:
        calls = calls.filter(requester_id=requester_id)
    return calls.exclude(state=ToolCall.State.PENDING).order_by("-created_at")


def active_admins_of(*, team: Team) -> QuerySet[Membership]:
    """The memberships of the team's admins whose accounts are active."""
    return Membership.objects.filter(team=team, role=Membership.Role.ADMIN, user__is_active=True)

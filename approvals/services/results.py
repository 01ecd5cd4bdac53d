"""Results held for review: the second decision, on what came back before the model reads it.

Where a result's findings meet a ``hold`` in the call's result policy (the team's, or its allow rule's), the
bridge keeps the result from its client and sends it here (``result_hold``). The call joins the team's live
queue as a held result: a reviewer reads it, findings highlighted, and releases it as it is, releases it
masked, or blocks it (``result_decide``). A held result nobody decides before its deadline is blocked
(``results_expire_due``), as is every held result of a revoked token: fail closed, as for calls.

One decision per result: the change is a conditional ``UPDATE`` on ``result_review = 'held'``, so two
reviewers can never both decide it. The bridge hears the outcome in the call's ``decision`` frame
(``result_review``), pushed at once and answered again on every ``status`` after a reconnect.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from approvals import access, realtime
from approvals.models import BridgeToken, ToolCall
from approvals.services.audit import audit_record
from approvals.services.calls import call_get, calls_with_relations, finding_counts
from approvals.services.notifications import notify_result_held
from mcpbridge import protocol

Review = ToolCall.ResultReview
DECISIONS = {"release": Review.RELEASED, "mask": Review.MASKED, "block": Review.BLOCKED}
"""A reviewer's decisions on a held result, and the review each records."""


class ResultNotHeld(Exception):
    """The call's result is not (or no longer) held: decided already, expired, or never held."""

    def __init__(self, call: ToolCall) -> None:
        super().__init__(call.result_review or "not held")
        self.call = call


def result_hold(*, token: BridgeToken, hold: protocol.ResultHold) -> ToolCall:
    """Hold a running call's result for a reviewer. The call must be the token's, allowed and started by
    its bridge, with no result reported yet; holding it again (the bridge reconnected and asked again)
    keeps the first hold and its deadline. Raises CallNotFound for another token's or an unknown call,
    and ResultNotHeld when the call is in no state to hold a result."""
    now = timezone.now()
    with transaction.atomic():
        call = call_get(hold.call_id, token=token)
        if call.result_review == Review.HELD:
            return call
        if call.state != ToolCall.State.ALLOWED or call.started_at is None or call.result_review:
            raise ResultNotHeld(call)
        seconds = call.team.default_deadline_seconds
        held = {
            "texts": [
                {"path": text.path, "text": text.text.replace("\x00", "\ufffd")} for text in hold.texts
            ],
            "truncated": hold.truncated,
        }
        findings = [finding.model_dump() for finding in hold.findings]
        changed = ToolCall.objects.filter(
            pk=call.pk, state=ToolCall.State.ALLOWED, finished_at__isnull=True, result_review=""
        ).update(
            result_review=Review.HELD,
            result_held=held,
            result_findings=findings,
            result_deadline=now + timedelta(seconds=seconds),
        )
        call.refresh_from_db(from_queryset=calls_with_relations())
        if not changed:
            raise ResultNotHeld(call)
        audit_record(
            kind="call.result_held",
            team=call.team,
            token=token,
            call=call,
            findings=finding_counts(findings),
            deadline=call.result_deadline.isoformat() if call.result_deadline else None,
        )
        realtime.call_changed(call)  # into the reviewers' queue
        # The team's call.held channels: someone must look before the deadline.
        notify_result_held(call, findings=finding_counts(findings))
    return call


def result_decide(*, call_id: str, reviewer: AbstractBaseUser, decision: str, reason: str = "") -> ToolCall:
    """A reviewer's decision on a held result: ``release`` (the model reads it as it is), ``mask`` (its
    findings replaced, the model told) or ``block`` (the model gets an error instead).

    The reviewer must be one of the team's reviewers; in a four-eyes team, nobody releases (or releases
    masked) the result of their own call. Raises PermissionDenied, CallNotFound, ValueError (an unknown
    decision) or ResultNotHeld (decided already, or past its deadline)."""
    review = DECISIONS.get(decision)
    if review is None:
        raise ValueError("decision must be release, mask or block")
    now = timezone.now()
    reason = reason.replace("\x00", "").strip()[:1000]
    with transaction.atomic():
        call = call_get(call_id)
        access.require_decide(reviewer, call)
        if review != Review.BLOCKED:
            access.require_approve(reviewer, call)  # four eyes: releasing is approving
        changed = ToolCall.objects.filter(
            pk=call.pk, result_review=Review.HELD, result_deadline__gt=now
        ).update(
            result_review=review,
            result_reviewed_by=reviewer.pk,
            result_reviewed_at=now,
            result_review_reason=reason,
        )
        call.refresh_from_db(from_queryset=calls_with_relations())
        if changed:
            audit_record(
                kind=f"call.result_{review}",
                team=call.team,
                actor_id=reviewer.pk,
                token=call.token,
                call=call,
                reason=reason,
            )
            realtime.decision_changed(call)  # the bridge first: it is holding the result
            realtime.call_changed(call)
        elif call.result_review == Review.HELD:  # past its deadline; the sweep had not reached it
            _expire_result(call, now=now)
    if not changed:
        raise ResultNotHeld(call)
    return call


def _expire_result(call: ToolCall, *, now: Any, reason: str = "no decision before the deadline") -> bool:
    changed = ToolCall.objects.filter(pk=call.pk, result_review=Review.HELD).update(
        result_review=Review.EXPIRED, result_reviewed_at=now, result_review_reason=reason
    )
    if changed:
        call.refresh_from_db(from_queryset=calls_with_relations())
        audit_record(kind="call.result_expired", team=call.team, token=call.token, call=call, reason=reason)
        realtime.decision_changed(call)
        realtime.call_changed(call)
    return bool(changed)


def results_expire_due() -> int:
    """Block every held result past its deadline. Returns how many."""
    now = timezone.now()
    due = calls_with_relations().filter(result_review=Review.HELD, result_deadline__lte=now)
    expired = 0
    for call in due[:500]:
        with transaction.atomic():
            expired += _expire_result(call, now=now)
    return expired


def results_block_for_token(*, token: BridgeToken, reason: str) -> int:
    """Block every held result of a token (revoked, or its owner removed). Inside the caller's atomic."""
    now = timezone.now()
    # Lock them all before the first audit_record takes the chain's lock, as calls_deny_for_token does.
    held = list(
        calls_with_relations().select_for_update(of=("self",)).filter(token=token, result_review=Review.HELD)
    )
    return sum(_expire_result(call, now=now, reason=reason) for call in held)


def held_results_for(*, team_id: int) -> QuerySet[ToolCall]:
    """The team's held results, oldest first (with the queue's held calls)."""
    return calls_with_relations().filter(team_id=team_id, result_review=Review.HELD).order_by("created_at")

"""Which held calls a bridge still follows: a held call whose bridge went away is cancelled.

A bridge follows its undecided calls over its websocket: it submitted them there, or named them in a
``status`` after reconnecting. When that connection closes, its undecided calls are *detached*: they get a
time, ``detached_until`` (now + ``SIGNOFF_DETACHED_CALL_GRACE_SECONDS``), at which the sweep cancels them,
unless a bridge of the same token follows them again first (it reconnects after a blip or a Signoff restart).

Without it, the held calls of a bridge that died without withdrawing them (SIGKILL, a crash, a laptop that
never woke up) would wait in the queue until their deadline, and a reviewer could allow a call that nothing
will ever run. A Signoff process that dies closes no connection: its bridges reconnect and follow their calls
again, and nothing was detached.

A call whose *result* the bridge holds for a reviewer is followed the same way: the result lives only in that
bridge. If it goes away and does not come back, the held result leaves the queue (a reviewer cannot release a
result that no bridge has) and the call ends ``failed``: its client never got the result.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from approvals import realtime
from approvals.models import ToolCall
from approvals.services.audit import audit_record
from approvals.services.calls import calls_with_relations

State = ToolCall.State
Review = ToolCall.ResultReview
UNDECIDED = Q(state__in=[State.PENDING, State.ALLOWED], started_at__isnull=True)
"""A call its bridge still waits on: held, or allowed and not yet started."""
RESULT_HELD = Q(state=State.ALLOWED, finished_at__isnull=True, result_review=Review.HELD)
"""A call whose result its bridge holds for a reviewer."""
FOLLOWED = UNDECIDED | RESULT_HELD


def is_followed(call: ToolCall) -> bool:
    """Whether its bridge waits on this call (``FOLLOWED``, for a call in hand)."""
    undecided = call.state in (State.PENDING, State.ALLOWED) and call.started_at is None
    result_held = call.state == State.ALLOWED and call.result_review == Review.HELD
    return undecided or result_held


GONE = "its bridge disconnected and did not come back in time"


def _keys(call_ids: Iterable[str]) -> list[uuid.UUID]:
    keys = []
    for raw in call_ids:
        try:
            keys.append(uuid.UUID(str(raw)))
        except ValueError:
            continue
    return keys


def calls_detach(*, token_id: int, call_ids: Iterable[str], now: datetime | None = None) -> int:
    """The bridge connection that followed these calls closed: its undecided ones, and those whose result it
    holds, are ended after the grace unless followed again. Other tokens' calls, decided calls and calls
    running are left alone. Returns how many."""
    keys = _keys(call_ids)
    if not keys:
        return 0
    until = (now or timezone.now()) + timedelta(seconds=settings.SIGNOFF_DETACHED_CALL_GRACE_SECONDS)
    return ToolCall.objects.filter(FOLLOWED, token_id=token_id, pk__in=keys).update(detached_until=until)


def calls_follow(*, token_id: int, call_ids: Iterable[str]) -> int:
    """A bridge of the token follows these calls again: they are no longer to be cancelled. Returns how many
    were detached."""
    keys = _keys(call_ids)
    if not keys:
        return 0
    return ToolCall.objects.filter(token_id=token_id, pk__in=keys, detached_until__isnull=False).update(
        detached_until=None
    )


def calls_cancel_detached(*, now: datetime | None = None) -> int:
    """End the calls detached from their bridge for longer than the grace (the sweep: Celery beat, or the
    embedded default's in-process sweeper): an undecided call is cancelled; a held result is expired and its
    call failed. Each is audited, leaves the reviewers' queues, and a bridge of its token that comes back
    later is told. Returns how many."""
    now = now or timezone.now()
    # No number of seconds: the grace is the detaching web process's setting, not necessarily this one's.
    due = calls_with_relations().filter(FOLLOWED, detached_until__lte=now)
    ended = 0
    for call in due[:500]:
        with transaction.atomic():
            # Conditional: a decision, a claim, a report or a follow that came first wins.
            if call.result_review == Review.HELD:
                changed = _fail_held_result(call, now=now)
            else:
                changed = _cancel(call, now=now)
            if not changed:
                continue
            ended += 1
            call.refresh_from_db()
            realtime.call_changed(call)
            realtime.decision_changed(call)
    return ended


def _cancel(call: ToolCall, *, now: datetime) -> bool:
    reason = f"cancelled: {GONE}"
    changed = ToolCall.objects.filter(UNDECIDED, pk=call.pk, detached_until__lte=now).update(
        state=State.CANCELLED, reason=reason, finished_at=now, detached_until=None
    )
    if changed:
        audit_record(kind="call.cancelled", team=call.team, token=call.token, call=call, reason=reason)
    return bool(changed)


def _fail_held_result(call: ToolCall, *, now: datetime) -> bool:
    summary = f"not delivered: its result was held for review and {GONE}"
    changed = ToolCall.objects.filter(RESULT_HELD, pk=call.pk, detached_until__lte=now).update(
        state=State.FAILED,
        finished_at=now,
        detached_until=None,
        result_summary=summary,
        result_review=Review.EXPIRED,
        result_reviewed_at=now,
        result_review_reason=GONE,
    )
    if changed:
        audit_record(kind="call.result_expired", team=call.team, token=call.token, call=call, reason=GONE)
        audit_record(kind="call.failed", team=call.team, token=call.token, call=call, summary=summary)
    return bool(changed)

"""Group names and event payloads for the channel layer; only services broadcast, and only on commit.

The channel layer is a hint, not the truth: a lost message costs latency, since bridges and pages
re-sync from the database on every (re)connect (and the queue pages every 30 s).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from approvals.masking import MASK, mask_text
from approvals.models import ToolCall
from approvals.proxies import ASGIApp, Receive, Scope, Send
from approvals.scopes import suggested_constraints
from mcpbridge import protocol
from mcpbridge.inspection import make_visible

log = logging.getLogger(__name__)


def review_group(team_id: int) -> str:
    """Every open reviewer page of a team."""
    return f"review-team-{team_id}"


def user_group(user_id: int) -> str:
    """Every open reviewer page of one user (closed when the user loses access)."""
    return f"review-user-{user_id}"


def bridge_group(token_id: int) -> str:
    """Every bridge connected with one token."""
    return f"bridge-token-{token_id}"


def call_payload(call: ToolCall) -> dict[str, Any]:
    """What a reviewer's page shows of a call. Arguments are untrusted: pages render them as text."""
    return {
        "id": str(call.id),
        "server": call.server,
        "tool": call.tool,
        "arguments": call.arguments,
        "requester": call.requester.get_username(),
        # With four eyes on, the page shows no Allow on the viewer's own calls (the server refuses it anyway).
        "requester_id": call.requester_id,
        "four_eyes": call.team.four_eyes,
        "token": call.token.name,
        "state": call.state,
        "reason": call.reason,
        "risks": call.risks,
        "suggested_constraints": suggested_constraints(call.arguments),
        "created_at": call.created_at.isoformat(),
        "deadline": call.deadline.isoformat(),
        "decided_by": call.decided_by.get_username() if call.decided_by else None,
        # A result held for review: what came back, its findings (where and what), and its own deadline.
        "result_review": call.result_review,
        **(
            {
                "result": held_result_view(call),
                "result_truncated": bool(call.result_held.get("truncated")),
                "result_findings": call.result_findings,
                "result_deadline": call.result_deadline.isoformat() if call.result_deadline else None,
            }
            if call.result_review == ToolCall.ResultReview.HELD
            else {}
        ),
    }


def held_result_view(call: ToolCall) -> list[dict[str, Any]]:
    """The held result as a reviewer's page shows it: each text cut into plain and found parts, every part
    with its hidden characters written out (``<U+200B>``) and the found secrets masked. A found part
    names its finding's kind and detector, for the highlight. Pages set all of it as text, never HTML."""
    by_path: dict[str, list[dict[str, Any]]] = {}
    for finding in call.result_findings:
        if isinstance(finding.get("start"), int) and isinstance(finding.get("end"), int):
            by_path.setdefault(finding.get("path", ""), []).append(finding)
    shown = []
    for held in call.result_held.get("texts", []):
        text, parts = held.get("text", ""), []
        position = 0
        for finding in sorted(by_path.get(held.get("path", ""), []), key=lambda f: (f["start"], -f["end"])):
            start, end = max(finding["start"], position), min(finding["end"], len(text))
            if start >= end:
                continue  # overlaps one already shown, or points past the (cut) text
            if start > position:
                parts.append({"text": make_visible(text[position:start])})
            found = text[start:end]
            parts.append(
                {
                    "text": _masked(found) if finding["kind"] == "secret" else make_visible(found),
                    "kind": finding["kind"],
                    "detector": finding.get("detector", ""),
                }
            )
            position = end
        if position < len(text):
            parts.append({"text": make_visible(text[position:])})
        shown.append({"path": held.get("path", ""), "parts": parts})
    return shown


def _masked(secret: str) -> str:
    masked = mask_text(secret)
    return masked if masked != secret else MASK


def decision_for(call: ToolCall, *, run: bool = False, ref: str | None = None) -> protocol.Decision:
    """The bridge's view of a call's state. An allowed call's carries its result policy, which reads the
    call's ``team`` and ``rule``: the services load both for the consumers, which may not query."""
    held = call.result_review == ToolCall.ResultReview.HELD
    return protocol.Decision(
        call_id=str(call.id),
        state=call.state,  # type: ignore[arg-type]
        reason=call.reason,
        ref=ref,
        deadline=(call.result_deadline if held and call.result_deadline else call.deadline).isoformat(),
        run=run,
        decided_by=call.decided_by.get_username() if call.decided_by else None,
        result_policy=call.result_policy() if call.state == ToolCall.State.ALLOWED else None,  # type: ignore[arg-type]
        result_review=call.result_review or None,  # type: ignore[arg-type]
    )


SEND_TIMEOUT_SECONDS = 5.0
"""How long a thread of its own waits for the serving event loop to take its event."""
_served_on: tuple[asyncio.AbstractEventLoop, int] | None = None
"""The event loop this process serves its sockets on, and that loop's thread (``recording_event_loop``)."""


def recording_event_loop(app: ASGIApp) -> ASGIApp:
    """The ASGI application, noting the event loop it is served on, for ``send``.

    The in-memory layer of the embedded default keeps its messages in asyncio queues of that loop, which are
    not thread-safe: an event sent from a thread of its own (the in-process sweeper) through a loop of that
    thread woke the sockets' loop late, at its next timer, and could be lost to a queue being dropped."""

    # Daphne passes scope, receive and send by name.
    async def served(scope: Scope, receive: Receive, send: Send) -> None:
        global _served_on
        loop = asyncio.get_running_loop()
        if _served_on is None or _served_on[0] is not loop:
            _served_on = (loop, threading.get_ident())
        await app(scope, receive, send)

    return served


def send(group: str, event: dict[str, Any]) -> None:
    """Send to a group now (from sync code). Failures are logged, never raised: the database is the truth.

    From any thread but its own, the event is sent on the loop that serves the sockets (as ``async_to_sync``
    does from the database thread of an async handler, and as it cannot from a thread of its own)."""
    layer = get_channel_layer()
    if layer is None:
        return
    served = _served_on
    try:
        if served is not None and served[1] != threading.get_ident() and served[0].is_running():
            pending = asyncio.run_coroutine_threadsafe(layer.group_send(group, event), served[0])
            pending.result(SEND_TIMEOUT_SECONDS)
        else:
            async_to_sync(layer.group_send)(group, event)
    except Exception:
        log.exception("channel layer send to %s failed", group)


def send_on_commit(group: str, event: dict[str, Any]) -> None:
    """Send to a group once the current transaction commits, so nobody sees a rolled-back change."""
    transaction.on_commit(lambda: send(group, event))


def open_alerts_changed(*, team_id: int, admin_ids: list[int], open_count: int) -> None:
    """Tell the team's admins' open pages how many of its alerts are open (the nav's badge), now: the
    caller runs after the change committed."""
    for admin_id in admin_ids:
        send(user_group(admin_id), {"type": "review.alerts", "team": team_id, "open": open_count})


def review_access_ended(*, user_id: int, team_id: int | None, reason: str) -> None:
    """Close the user's open reviewer pages (of one team, or of all teams), on commit."""
    send_on_commit(user_group(user_id), {"type": "review.closed", "team": team_id, "reason": reason})


def call_frame(call: ToolCall) -> str:
    """The ``call`` frame of a reviewer's page, as sent: the same for every page of the team."""
    return json.dumps({"type": "call", "call": call_payload(call)})


def call_changed(call: ToolCall) -> None:
    """Tell the team's reviewers about a call (new in the queue, or gone from it), on commit.

    The frame is rendered once here rather than by each page's consumer: a group event is copied (in memory)
    or decoded (Redis) once per page, and 100 pages each copying and dumping the call cost ~0.2 ms apiece on
    one event loop, and fed the garbage collector (docs/performance.md, "Reviewers")."""
    send_on_commit(review_group(call.team_id), {"type": "call.update", "text": call_frame(call)})


def decision_changed(call: ToolCall) -> None:
    """Tell the call's bridge about a new state, on commit."""
    send_on_commit(
        bridge_group(call.token_id), {"type": "bridge.decision", "decision": decision_for(call).model_dump()}
    )

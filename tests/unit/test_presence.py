"""A held call whose bridge went away is cancelled after a grace, unless a bridge of its token follows it
again (approvals/services/presence.py): the service, and the bridge socket that detaches and follows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.utils import timezone

from approvals.models import Rule, ToolCall
from approvals.services.calls import call_claim, call_decide
from approvals.services.presence import calls_cancel_detached, calls_detach, calls_follow
from mcpbridge import protocol

from .conftest import SERVER, TOOL_HASH, Issued
from .sockets import receive, receive_until

State = ToolCall.State


@pytest.fixture(autouse=True)
def grace(settings: Any) -> float:
    settings.SIGNOFF_DETACHED_CALL_GRACE_SECONDS = 30.0
    return 30.0


def later(seconds: float) -> Any:
    return timezone.now() + timedelta(seconds=seconds)


@pytest.mark.django_db
def test_a_detached_held_call_is_cancelled_after_the_grace_and_audited(
    member_token: Issued, submit: Any, audit_kinds: Any
) -> None:
    call = submit(member_token.token).call
    assert calls_detach(token_id=member_token.token.pk, call_ids=[str(call.pk)]) == 1
    call.refresh_from_db()
    assert call.detached_until is not None and call.state == State.PENDING

    assert calls_cancel_detached(now=later(29)) == 0  # within the grace: still held
    assert calls_cancel_detached(now=later(31)) == 1
    call.refresh_from_db()
    assert call.state == State.CANCELLED and call.finished_at is not None and call.detached_until is None
    assert call.reason == "cancelled: its bridge disconnected and did not come back in time"
    assert audit_kinds(call)[-1] == "call.cancelled"
    assert calls_cancel_detached(now=later(60)) == 0  # once


@pytest.mark.django_db
def test_a_call_followed_again_is_not_cancelled(member_token: Issued, submit: Any) -> None:
    call = submit(member_token.token).call
    calls_detach(token_id=member_token.token.pk, call_ids=[str(call.pk)])
    assert calls_follow(token_id=member_token.token.pk, call_ids=[str(call.pk)]) == 1
    assert calls_cancel_detached(now=later(31)) == 0
    call.refresh_from_db()
    assert call.state == State.PENDING and call.detached_until is None


@pytest.mark.django_db
def test_another_tokens_forged_and_decided_calls_are_left_alone(
    member_token: Issued, outsider_token: Issued, submit: Any, reviewer: Any
) -> None:
    mine = submit(member_token.token).call
    theirs = submit(outsider_token.token).call
    # Another token's call, malformed and unknown ids: nothing detached.
    forged = ["not-a-uuid", "00000000-0000-0000-0000-000000000000", str(theirs.pk), None]
    assert calls_detach(token_id=member_token.token.pk, call_ids=forged) == 0  # type: ignore[list-item]
    assert calls_follow(token_id=outsider_token.token.pk, call_ids=[str(mine.pk)]) == 0

    # Allowed and started (it runs): not undecided, so never detached.
    call_decide(call_id=str(mine.pk), reviewer=reviewer, allow=True)
    call_claim(token=member_token.token, call_id=str(mine.pk))
    assert calls_detach(token_id=member_token.token.pk, call_ids=[str(mine.pk)]) == 0
    assert calls_cancel_detached(now=later(31)) == 0
    theirs.refresh_from_db()
    assert theirs.state == State.PENDING and theirs.detached_until is None


@pytest.mark.django_db
def test_an_allowed_call_nobody_claimed_is_cancelled_with_its_bridge(
    member_token: Issued, submit: Any, reviewer: Any
) -> None:
    """A reviewer allowed it after its bridge went away: nothing will run it, so it does not stay allowed."""
    call = submit(member_token.token).call
    calls_detach(token_id=member_token.token.pk, call_ids=[str(call.pk)])
    call_decide(call_id=str(call.pk), reviewer=reviewer, allow=True)
    assert calls_cancel_detached(now=later(31)) == 1
    call.refresh_from_db()
    assert call.state == State.CANCELLED and call.started_at is None


@pytest.mark.django_db
def test_the_periodic_sweep_cancels_detached_calls(member_token: Issued, submit: Any) -> None:
    """Celery beat's task (and the embedded default's sweeper) run ``sweep_due``, which includes it."""
    from approvals.tasks import expire_due_calls

    call = submit(member_token.token).call
    calls_detach(token_id=member_token.token.pk, call_ids=[str(call.pk)], now=later(-31))
    assert expire_due_calls() == 1
    call.refresh_from_db()
    assert call.state == State.CANCELLED


# --- the bridge socket --------------------------------------------------------------------------------------
@pytest.fixture
async def sockets() -> AsyncIterator[list[WebsocketCommunicator]]:
    opened: list[WebsocketCommunicator] = []
    yield opened
    for socket in opened:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await socket.disconnect(timeout=3)
    await database_sync_to_async(connections.close_all)()


async def connect_bridge(raw: str, sockets: list[WebsocketCommunicator]) -> WebsocketCommunicator:
    from config.asgi import application

    bridge = WebsocketCommunicator(
        application, "/ws/bridge/", headers=[(b"authorization", f"Bearer {raw}".encode())]
    )
    sockets.append(bridge)
    assert (await bridge.connect(timeout=3))[0]
    hello = protocol.Hello(
        protocol=protocol.PROTOCOL_VERSION,
        bridge_version="test",
        upstream=protocol.UpstreamInfo(name=SERVER, transport="stdio"),
        tools=[protocol.ToolInfo(name="read_file", hash=TOOL_HASH)],
    )
    await bridge.send_to(text_data=protocol.encode(hello))
    assert (await receive(bridge))["type"] == "welcome"
    return bridge


def state_of(call_id: str) -> tuple[str, Any]:
    call = ToolCall.objects.get(pk=call_id)
    return call.state, call.detached_until


@pytest.mark.django_db(transaction=True)
async def test_a_closed_bridge_detaches_its_held_calls_and_a_reconnected_one_follows_them(
    sockets: list[WebsocketCommunicator], member_token: Issued
) -> None:
    first = await connect_bridge(member_token.raw, sockets)
    await first.send_to(text_data=protocol.encode(protocol.Call(ref="c1", tool="read_file", arguments={})))
    held = await receive_until(first, "decision")
    assert held["state"] == "pending"
    await first.disconnect(timeout=3)  # what a killed bridge's socket does, seen from the server
    state, detached = await database_sync_to_async(state_of)(held["call_id"])
    assert state == "pending" and detached is not None

    second = await connect_bridge(member_token.raw, sockets)
    await second.send_to(text_data=protocol.encode(protocol.Status(call_ids=[held["call_id"]])))
    assert (await receive_until(second, "decision"))["state"] == "pending"
    assert await database_sync_to_async(state_of)(held["call_id"]) == ("pending", None)


@pytest.mark.django_db(transaction=True)
async def test_an_auto_allowed_call_is_not_detached(
    sockets: list[WebsocketCommunicator], member_token: Issued
) -> None:
    await database_sync_to_async(Rule.objects.create)(
        team_id=member_token.token.team_id, effect="allow", server=SERVER, tool="*"
    )
    bridge = await connect_bridge(member_token.raw, sockets)
    await bridge.send_to(text_data=protocol.encode(protocol.Call(ref="c1", tool="read_file", arguments={})))
    allowed = await receive_until(bridge, "decision")
    assert allowed["state"] == "allowed" and allowed["run"] is True
    await bridge.disconnect(timeout=3)
    assert await database_sync_to_async(state_of)(allowed["call_id"]) == ("allowed", None)

"""The per-call path without the ORM's compiling, and result reports that do not delay the next decision.

``call_submit`` reads the token's state in one plain statement, ``call_report_result`` reads the call back in
one, and both insert through ``row_insert``: these check that what they read and write is what the ORM reads
and writes. Over the bridge's socket a result report waits a moment for a call that follows it, and is never
lost or reordered with any other frame.
"""

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

from approvals.models import AuditEvent, BridgeToken, Rule, ToolCall
from approvals.services.audit import audit_record, audit_verify
from approvals.services.calls import call_report_result
from mcpbridge import protocol

from .conftest import SERVER, TOOL_HASH, Issued
from .sockets import receive

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_token_expiring_later_is_usable_and_its_call_and_audit_rows_read_back_as_written(
    member_token: Issued, submit: Any
) -> None:
    BridgeToken.objects.filter(pk=member_token.token.pk).update(
        expires_at=timezone.now() + timedelta(hours=1)
    )
    Rule.objects.create(team=member_token.token.team, effect="allow", server=SERVER, tool="*")
    submitted = submit(member_token.token, arguments={"path": "/srv/é", "n": [1, 2.5, None]})
    assert submitted.run is True
    stored = ToolCall.objects.get(pk=submitted.call.pk)
    for field in ToolCall._meta.concrete_fields:
        assert getattr(stored, field.attname) == getattr(submitted.call, field.attname), field.name
    event = audit_record(kind="test.row", team=member_token.token.team, token=member_token.token, note="ü")
    assert AuditEvent.objects.get(pk=event.pk).hash == event.hash
    assert audit_verify().intact


def test_a_reported_result_reads_back_what_the_answer_needs(member_token: Issued, submit: Any) -> None:
    Rule.objects.create(team=member_token.token.team, effect="allow", server=SERVER, tool="*")
    submitted = submit(member_token.token)
    call = call_report_result(
        token=member_token.token, call_id=str(submitted.call.pk), is_error=True, summary="no", duration_ms=7
    )
    assert (call.state, call.reason, call.deadline) == (
        "failed",
        submitted.call.reason,
        submitted.call.deadline,
    )
    assert call.decided_by is None and call.result_review == ""


# --- over the socket --------------------------------------------------------------------------------
@pytest.fixture
async def bridge(member_token: Issued) -> AsyncIterator[WebsocketCommunicator]:
    """A greeted bridge of a team whose rule allows every call of its server."""
    from config.asgi import application

    await database_sync_to_async(Rule.objects.create)(
        team_id=member_token.token.team_id, effect="allow", server=SERVER, tool="*"
    )
    socket = WebsocketCommunicator(
        application, "/ws/bridge/", headers=[(b"authorization", f"Bearer {member_token.raw}".encode())]
    )
    assert (await socket.connect(timeout=3))[0]
    hello = protocol.Hello(
        protocol=protocol.PROTOCOL_VERSION,
        bridge_version="test",
        upstream=protocol.UpstreamInfo(name=SERVER, transport="stdio"),
        tools=[protocol.ToolInfo(name="read_file", hash=TOOL_HASH)],
    )
    await socket.send_to(text_data=protocol.encode(hello))
    assert (await receive(socket))["type"] == "welcome"
    yield socket
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await socket.disconnect(timeout=3)
    await database_sync_to_async(connections.close_all)()


async def run_one(socket: WebsocketCommunicator, ref: str) -> str:
    await socket.send_to(
        text_data=protocol.encode(protocol.Call(ref=ref, tool="read_file", arguments={"r": ref}))
    )
    answer = await receive(socket)
    assert (answer["ref"], answer["state"], answer["run"]) == (ref, "allowed", True)
    return str(answer["call_id"])


def result(call_id: str, ref: str) -> str:
    return protocol.encode(
        protocol.Result(call_id=call_id, ref=ref, is_error=False, summary="ok", duration_ms=1)
    )


def state_of(call_id: str) -> str:
    return ToolCall.objects.get(pk=call_id).state


async def test_a_call_right_after_a_result_report_is_decided_first_and_the_report_is_recorded(
    bridge: WebsocketCommunicator,
) -> None:
    first = await run_one(bridge, "c1")
    await bridge.send_to(text_data=result(first, "done"))
    await bridge.send_to(text_data=protocol.encode(protocol.Call(ref="c2", tool="read_file", arguments={})))
    answers = [await receive(bridge), await receive(bridge)]
    assert [answer["ref"] for answer in answers] == ["c2", "done"]
    assert answers[1]["state"] == "completed"
    assert await database_sync_to_async(state_of)(first) == "completed"


async def test_any_other_frame_after_a_result_report_waits_for_it(bridge: WebsocketCommunicator) -> None:
    first = await run_one(bridge, "c1")
    await bridge.send_to(text_data=result(first, "done"))
    await bridge.send_to(text_data=protocol.encode(protocol.Status(call_ids=[first])))
    done, status = await receive(bridge), await receive(bridge)
    assert (done["ref"], done["state"]) == ("done", "completed")
    assert (status["call_id"], status["state"]) == (first, "completed")


async def test_a_result_report_sent_just_before_the_socket_closes_is_recorded(
    bridge: WebsocketCommunicator,
) -> None:
    first = await run_one(bridge, "c1")
    await bridge.send_to(text_data=result(first, "done"))
    await bridge.disconnect(timeout=3)
    assert await database_sync_to_async(state_of)(first) == "completed"

"""The two websockets through the real ASGI application: the bridge's and the reviewers'.

Every socket is driven with channels' ``WebsocketCommunicator`` against ``config.asgi.application`` (so the
routes' own middleware runs: the bridge's header token, the reviewers' session and Origin check) over the
in-memory channel layer, and always disconnected at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.utils import timezone

from approvals.models import Alert, BridgeToken, Rule, ToolCall
from approvals.services.alerts import alert_acknowledge, alert_raise
from approvals.services.calls import call_decide, call_submit
from approvals.services.tokens import token_revoke
from mcpbridge import protocol

from .conftest import OTHER_TOOL_HASH, SERVER, TOOL_HASH, Issued
from .sockets import expect_close, receive, receive_until

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1")
Open = Callable[..., Awaitable[WebsocketCommunicator]]


def hello(version: int = protocol.PROTOCOL_VERSION) -> str:
    return protocol.encode(
        protocol.Hello(
            protocol=version,
            bridge_version="test",
            upstream=protocol.UpstreamInfo(name=SERVER, transport="stdio"),
            tools=[
                protocol.ToolInfo(name="read_file", hash=TOOL_HASH),
                protocol.ToolInfo(name="write_file", hash=OTHER_TOOL_HASH),
            ],
        )
    )


def call(ref: str = "r1", tool: str = "read_file", **arguments: Any) -> str:
    return protocol.encode(protocol.Call(ref=ref, tool=tool, arguments=arguments or {"path": "/srv/a"}))


@pytest.fixture
async def open_socket() -> AsyncIterator[Open]:
    """Open sockets on the real ASGI application; every one is disconnected at the end of the test."""
    from config.asgi import application

    opened: list[WebsocketCommunicator] = []

    async def _open(path: str, headers: list[tuple[bytes, bytes]], *, accepted: bool = True) -> Any:
        socket = WebsocketCommunicator(application, path, headers=headers)
        opened.append(socket)
        connected, _ = await socket.connect(timeout=3)
        assert connected is accepted
        return socket

    yield _open
    for socket in opened:
        # It may have stopped already: a timed-out receive cancels the application.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await socket.disconnect(timeout=3)
    # The consumers' database work ran in asgiref's worker thread: close its connection, or PostgreSQL
    # refuses to drop the test database at the end of the run.
    await database_sync_to_async(connections.close_all)()


@pytest.fixture
def open_bridge(open_socket: Open) -> Callable[..., Awaitable[WebsocketCommunicator]]:
    async def _bridge(raw: str | None, *, greet: bool = True) -> WebsocketCommunicator:
        headers = [(b"authorization", f"Bearer {raw}".encode())] if raw is not None else []
        socket = await open_socket("/ws/bridge/", headers)
        if greet:
            await socket.send_to(text_data=hello())
            assert (await receive(socket))["type"] == "welcome"
        return socket

    return _bridge


@pytest.fixture
def open_review(open_socket: Open) -> Callable[..., Awaitable[WebsocketCommunicator]]:
    async def _review(cookie: bytes | None, team: str = "alpha", **kwargs: Any) -> WebsocketCommunicator:
        headers = [ORIGIN] + ([(b"cookie", cookie)] if cookie else [])
        return await open_socket(f"/ws/review/?team={team}", headers, **kwargs)

    return _review


@pytest.fixture
def reviewer_cookie(reviewer: Any, session_cookie: Callable[[Any], bytes]) -> bytes:
    return session_cookie(reviewer)


@pytest.fixture
def outsider_cookie(outsider: Any, session_cookie: Callable[[Any], bytes]) -> bytes:
    return session_cookie(outsider)


def _state(call_id: str) -> str:
    return ToolCall.objects.get(pk=call_id).state


state_of = database_sync_to_async(_state)


# --- the bridge's token ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header",
    [
        None,
        b"Bearer sgo_00000000_unknownunknownunknownunknownunknown",
        b"Bearer ",
        b"Basic c2dvXzpwYXNz",
        b"sgo_x",
    ],
    ids=["none", "unknown", "empty", "basic", "no-scheme"],
)
async def test_a_bridge_without_a_usable_token_is_told_why_and_closed_with_4401(open_socket, header) -> None:
    socket = await open_socket("/ws/bridge/", [(b"authorization", header)] if header else [])
    error = await receive(socket)
    assert (error["type"], error["code"]) == ("error", "unauthorized")
    assert "SIGNOFF_TOKEN" in error["message"]
    await expect_close(socket, protocol.CLOSE_UNAUTHORIZED)


async def test_a_revoked_token_is_closed_with_4401_at_connect(open_socket, member_token: Issued) -> None:
    await database_sync_to_async(token_revoke)(token=member_token.token, by=None)
    socket = await open_socket("/ws/bridge/", [(b"authorization", f"Bearer {member_token.raw}".encode())])
    assert (await receive(socket))["code"] == "unauthorized"
    await expect_close(socket, protocol.CLOSE_UNAUTHORIZED)


async def test_a_token_in_the_url_is_ignored(open_socket, member_token: Issued) -> None:
    socket = await open_socket(f"/ws/bridge/?token={member_token.raw}", [])
    assert (await receive(socket))["code"] == "unauthorized"
    await expect_close(socket, protocol.CLOSE_UNAUTHORIZED)


async def test_connecting_records_the_tokens_last_use(open_bridge, member_token: Issued) -> None:
    await open_bridge(member_token.raw)
    token = await database_sync_to_async(BridgeToken.objects.get)(pk=member_token.token.pk)
    assert token.last_used_at is not None


# --- the handshake --------------------------------------------------------------------------------
async def test_hello_is_answered_with_welcome(open_bridge, member_token: Issued) -> None:
    socket = await open_bridge(member_token.raw, greet=False)
    await socket.send_to(text_data=hello())
    welcome = protocol.parse_server_message(await socket.receive_from(timeout=3))
    assert welcome == protocol.Welcome(
        protocol=protocol.PROTOCOL_VERSION,
        team="alpha",
        user="max@example.com",
        token_name="laptop",
        default_deadline_seconds=600,
    )


async def test_a_message_before_hello_gets_hello_required(open_bridge, member_token: Issued) -> None:
    socket = await open_bridge(member_token.raw, greet=False)
    await socket.send_to(text_data=call())
    error = await receive(socket)
    assert (error["type"], error["code"], error.get("ref")) == ("error", "hello_required", "r1")
    await socket.send_to(text_data=hello())
    assert (await receive(socket))["type"] == "welcome"
    assert not await database_sync_to_async(ToolCall.objects.exists)()


async def test_a_wrong_protocol_version_is_closed_with_4400(open_bridge, member_token: Issued) -> None:
    socket = await open_bridge(member_token.raw, greet=False)
    await socket.send_to(text_data=hello(version=protocol.PROTOCOL_VERSION + 1))
    error = await receive(socket)
    assert error["code"] == "unsupported_protocol"
    assert "upgrade" in error["message"]
    await expect_close(socket, protocol.CLOSE_PROTOCOL)


# --- bad frames: a clear error, and the connection stays usable --------------------------------------
async def _still_usable(socket: WebsocketCommunicator, ref: str = "after") -> None:
    await socket.send_to(text_data=call(ref=ref, path=f"/srv/{ref}"))
    decision = await receive(socket)
    assert (decision["type"], decision["ref"], decision["state"]) == ("decision", ref, "pending")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "malformed_json"),
        ("[1, 2, 3]", "malformed_frame"),
        ('{"type": "launch"}', "invalid_message"),
        ('{"type": "call", "ref": "r1"}', "invalid_message"),
        ('{"type": "call", "ref": "r1", "tool": "t", "sudo": true}', "invalid_message"),
        ('{"type": "call", "ref": "r1", "tool": "t", "arguments": {"a": "\\ud800"}}', "invalid_message"),
    ],
    ids=["json", "not-object", "unknown-type", "missing-field", "extra-field", "lone-surrogate"],
)
async def test_a_malformed_frame_gets_an_error_and_the_connection_stays_usable(
    open_bridge, member_token: Issued, frame: str, code: str
) -> None:
    socket = await open_bridge(member_token.raw)
    await socket.send_to(text_data=frame)
    error = await receive(socket)
    assert (error["type"], error["code"]) == ("error", code)
    await _still_usable(socket)


async def test_a_binary_frame_is_parsed_like_text(open_bridge, member_token: Issued) -> None:
    socket = await open_bridge(member_token.raw)
    await socket.send_to(bytes_data=call(ref="bin").encode())
    assert (await receive(socket))["ref"] == "bin"
    await socket.send_to(bytes_data=b"\xff\xfe")
    assert (await receive(socket))["code"] == "malformed_json"
    await _still_usable(socket)


async def test_an_oversized_frame_is_refused_and_the_connection_stays_usable(
    open_bridge, member_token: Issued
) -> None:
    socket = await open_bridge(member_token.raw)
    await socket.send_to(text_data=call(ref="huge", blob="x" * (protocol.MAX_FRAME_BYTES + 1)))
    assert (await receive(socket))["code"] == "frame_too_large"
    await _still_usable(socket)


async def test_oversized_arguments_are_refused_with_the_ref(open_bridge, member_token: Issued) -> None:
    socket = await open_bridge(member_token.raw)
    await socket.send_to(text_data=call(ref="big", blob="x" * (protocol.MAX_ARGUMENTS_BYTES + 1)))
    error = await receive(socket)
    assert (error["code"], error["ref"]) == ("arguments_too_large", "big")
    await _still_usable(socket)
    assert await database_sync_to_async(ToolCall.objects.count)() == 1


async def test_arguments_with_a_nul_character_are_refused_with_the_ref(
    open_bridge, member_token: Issued
) -> None:
    # PostgreSQL cannot store a NUL; refusing it on every database keeps the two setups alike.
    socket = await open_bridge(member_token.raw)
    await socket.send_to(text_data=call(ref="nul", path="/srv/a\u0000.txt"))
    error = await receive(socket)
    assert (error["type"], error["code"], error["ref"]) == ("error", "invalid_message", "nul")
    await _still_usable(socket)


@pytest.mark.parametrize("depth", [5, 15])
async def test_nested_arguments_are_held_and_shown(
    open_bridge, open_review, member_token: Issued, reviewer_cookie: bytes, depth: int
) -> None:
    review = await open_review(reviewer_cookie)
    await receive(review)
    nested: Any = "leaf"
    for _ in range(depth):
        nested = {"a": [nested]}
    socket = await open_bridge(member_token.raw)
    frame = {"type": "call", "ref": "deep", "tool": "read_file", "arguments": {"x": nested}}
    await socket.send_to(text_data=json.dumps(frame))
    assert (await receive(socket))["state"] == "pending"
    assert (await receive_until(review, "call"))["call"]["arguments"] == {"x": nested}


async def test_arguments_nested_too_deep_are_refused_and_the_connection_stays_usable(
    open_bridge, member_token: Issued
) -> None:
    nested: Any = "leaf"
    for _ in range(100):
        nested = {"a": [nested]}
    socket = await open_bridge(member_token.raw)
    frame = {"type": "call", "ref": "deep", "tool": "read_file", "arguments": {"x": nested}}
    await socket.send_to(text_data=json.dumps(frame))
    error = await receive(socket)
    assert (error["type"], error["code"], error["ref"]) == ("error", "invalid_message", "deep")
    assert "nested more than" in error["message"]
    await _still_usable(socket)


async def test_an_unknown_tool_is_denied_with_a_reason_and_the_connection_stays_usable(
    open_bridge, member_token: Issued
) -> None:
    socket = await open_bridge(member_token.raw)
    await socket.send_to(text_data=call(ref="rm", tool="delete_everything"))
    decision = await receive(socket)
    assert (decision["type"], decision["ref"], decision["state"]) == ("decision", "rm", "denied")
    assert decision.get("run", False) is False
    assert "no tool named 'delete_everything'" in decision["reason"]
    await _still_usable(socket)


@pytest.mark.parametrize("kind", ["claim", "withdraw", "result"])
async def test_a_forged_call_id_gets_unknown_call_and_the_connection_stays_usable(
    open_bridge, member_token: Issued, kind: str
) -> None:
    socket = await open_bridge(member_token.raw)
    forged = str(uuid.uuid4())
    frame = {
        "claim": protocol.Claim(call_id=forged, ref="x"),
        "withdraw": protocol.Withdraw(call_id=forged, ref="x"),
        "result": protocol.Result(call_id=forged, ref="x", is_error=False, duration_ms=1),
    }[kind]
    await socket.send_to(text_data=protocol.encode(frame))
    error = await receive(socket)
    assert (error["type"], error["code"], error["ref"]) == ("error", "unknown_call", "x")
    await _still_usable(socket)


async def test_another_bridges_call_id_is_unknown_here(
    open_bridge, member_token: Issued, outsider_token: Issued
) -> None:
    submitted = await database_sync_to_async(call_submit)(
        token=outsider_token.token, server=SERVER, tool="read_file", arguments={}, tool_hash=TOOL_HASH
    )
    foreign = str(submitted.call.pk)
    socket = await open_bridge(member_token.raw)
    await socket.send_to(text_data=protocol.encode(protocol.Withdraw(call_id=foreign, ref="steal")))
    assert (await receive(socket))["code"] == "unknown_call"
    await socket.send_to(text_data=protocol.encode(protocol.Status(call_ids=[foreign])))
    await _still_usable(socket)  # the status of a foreign call is never reported: the next frame is ours
    assert await state_of(foreign) == "pending"


# --- a call's life over both sockets ---------------------------------------------------------------
async def test_a_held_call_reaches_the_teams_reviewers_and_not_another_teams(
    open_bridge, open_review, member_token: Issued, reviewer_cookie: bytes, outsider_cookie: bytes
) -> None:
    ours = await open_review(reviewer_cookie)
    theirs = await open_review(outsider_cookie, team="bravo")
    assert await receive(ours) == {"type": "snapshot", "calls": []}
    assert await receive(theirs) == {"type": "snapshot", "calls": []}

    bridge = await open_bridge(member_token.raw)
    await bridge.send_to(text_data=call(ref="r1", path="/etc/passwd"))
    decision = await receive(bridge)
    assert (decision["state"], decision["ref"]) == ("pending", "r1")

    update = await receive(ours)
    assert update["type"] == "call"
    assert update["call"]["id"] == decision["call_id"]
    assert (update["call"]["server"], update["call"]["tool"]) == (SERVER, "read_file")
    assert update["call"]["arguments"] == {"path": "/etc/passwd"}
    assert update["call"]["requester"] == "max@example.com"
    assert await theirs.receive_nothing(timeout=0.2)


async def test_a_reviewer_sees_the_held_calls_in_the_snapshot_on_connect(
    open_review, member_token: Issued, outsider_token: Issued, reviewer_cookie: bytes
) -> None:
    for token in (member_token.token, outsider_token.token):
        await database_sync_to_async(call_submit)(
            token=token, server=SERVER, tool="read_file", arguments={"who": token.name}, tool_hash=TOOL_HASH
        )
    snapshot = await receive(await open_review(reviewer_cookie))
    assert snapshot["type"] == "snapshot"
    assert [c["arguments"] for c in snapshot["calls"]] == [{"who": "laptop"}]


async def test_a_reviewers_decision_reaches_the_bridge_which_then_runs_the_call_once(
    open_bridge, open_review, member_token: Issued, reviewer_cookie: bytes
) -> None:
    review = await open_review(reviewer_cookie)
    await receive(review)  # snapshot
    bridge = await open_bridge(member_token.raw)
    await bridge.send_to(text_data=call(ref="r1"))
    call_id = (await receive(bridge))["call_id"]
    await receive_until(review, "call")

    await review.send_json_to({"type": "decide", "call_id": call_id, "decision": "allow", "reason": "ok"})
    assert await receive_until(review, "decided") == {
        "type": "decided",
        "call_id": call_id,
        "state": "allowed",
    }

    decision = await receive(bridge)
    assert (decision["type"], decision["call_id"], decision["state"]) == ("decision", call_id, "allowed")
    assert decision["decided_by"] == "rita@example.com"
    assert decision.get("run", False) is False  # the right to run is handed out by a claim, once

    await bridge.send_to(text_data=protocol.encode(protocol.Claim(call_id=call_id, ref="c1")))
    claimed = await receive(bridge)
    assert (claimed["ref"], claimed["run"]) == ("c1", True)
    await bridge.send_to(text_data=protocol.encode(protocol.Claim(call_id=call_id, ref="c2")))
    assert (await receive(bridge)).get("run", False) is False

    result = protocol.Result(call_id=call_id, ref="done", is_error=False, summary="ok", duration_ms=5)
    await bridge.send_to(text_data=protocol.encode(result))
    assert (await receive(bridge))["state"] == "completed"
    assert await state_of(call_id) == "completed"


async def test_a_deny_over_the_socket_reaches_the_bridge_with_the_reason(
    open_bridge, open_review, member_token: Issued, reviewer_cookie: bytes
) -> None:
    review = await open_review(reviewer_cookie)
    bridge = await open_bridge(member_token.raw)
    await bridge.send_to(text_data=call())
    call_id = (await receive(bridge))["call_id"]
    await review.send_json_to({"type": "decide", "call_id": call_id, "decision": "deny", "reason": "no"})
    decision = await receive(bridge)
    assert (decision["state"], decision["reason"]) == ("denied", "denied by a reviewer: no")


async def test_always_allow_over_the_socket_lets_the_next_call_run_at_once(
    open_bridge, open_review, member_token: Issued, reviewer_cookie: bytes
) -> None:
    review = await open_review(reviewer_cookie)
    bridge = await open_bridge(member_token.raw)
    await bridge.send_to(text_data=call(ref="first", path="/srv/a"))
    call_id = (await receive(bridge))["call_id"]
    await review.send_json_to({"type": "decide", "call_id": call_id, "decision": "always_allow"})
    assert (await receive_until(review, "decided"))["state"] == "allowed"
    assert (await receive(bridge))["state"] == "allowed"
    await bridge.send_to(text_data=call(ref="second", path="/srv/b"))
    second = await receive(bridge)
    assert (second["ref"], second["state"], second["run"]) == ("second", "allowed", True)
    assert await database_sync_to_async(Rule.objects.count)() == 1


async def test_a_second_decision_over_the_socket_is_refused(
    open_bridge, open_review, member_token: Issued, reviewer_cookie: bytes
) -> None:
    review = await open_review(reviewer_cookie)
    bridge = await open_bridge(member_token.raw)
    await bridge.send_to(text_data=call())
    call_id = (await receive(bridge))["call_id"]
    await review.send_json_to({"type": "decide", "call_id": call_id, "decision": "deny"})
    await receive_until(review, "decided")
    await review.send_json_to({"type": "decide", "call_id": call_id, "decision": "allow"})
    error = await receive_until(review, "error")
    assert error["call_id"] == call_id and "already decided: denied" in error["message"]
    assert await state_of(call_id) == "denied"


@pytest.mark.parametrize(
    ("message", "text"),
    [
        ("not json", "not JSON"),
        (json.dumps({"type": "hack"}), "unknown message type"),
        (json.dumps({"type": "decide", "call_id": "x", "decision": "maybe"}), "decision must be"),
        (json.dumps({"type": "decide", "call_id": "not-a-uuid", "decision": "allow"}), "no such call"),
        (json.dumps({"type": "decide", "call_id": str(uuid.uuid4()), "decision": "allow"}), "no such call"),
    ],
    # An oversized frame closes the socket instead: tests/unit/test_hardening.py.
    ids=["json", "type", "decision", "malformed-id", "forged-id"],
)
async def test_a_bad_review_message_gets_an_error_and_the_socket_stays_usable(
    open_review, reviewer_cookie: bytes, message: str, text: str
) -> None:
    review = await open_review(reviewer_cookie)
    await receive(review)  # snapshot
    await review.send_to(text_data=message)
    error = await receive(review)
    assert error["type"] == "error" and text in error["message"]
    await review.send_json_to({"type": "decide", "call_id": "x", "decision": "maybe"})
    assert "decision must be" in (await receive(review))["message"]


async def test_a_reviewer_cannot_decide_another_teams_call_over_their_socket(
    open_review, outsider_token: Issued, reviewer_cookie: bytes
) -> None:
    submitted = await database_sync_to_async(call_submit)(
        token=outsider_token.token, server=SERVER, tool="read_file", arguments={}, tool_hash=TOOL_HASH
    )
    review = await open_review(reviewer_cookie)
    await receive(review)
    await review.send_json_to({"type": "decide", "call_id": str(submitted.call.pk), "decision": "allow"})
    assert (await receive(review))["message"] == "no such call in your team"
    assert await state_of(str(submitted.call.pk)) == "pending"


async def test_status_resyncs_the_bridge_from_the_database(
    open_bridge, member_token: Issued, reviewer: Any
) -> None:
    bridge = await open_bridge(member_token.raw)
    await bridge.send_to(text_data=call(ref="r1"))
    call_id = (await receive(bridge))["call_id"]
    await bridge.disconnect()  # the decision is made while the bridge is away: its broadcast is lost
    await database_sync_to_async(call_decide)(call_id=call_id, reviewer=reviewer, allow=False)

    bridge = await open_bridge(member_token.raw)
    await bridge.send_to(text_data=protocol.encode(protocol.Status(call_ids=[call_id, "garbage"])))
    decision = await receive(bridge)
    assert (decision["call_id"], decision["state"]) == (call_id, "denied")
    assert await bridge.receive_nothing(timeout=0.1)


async def test_status_of_an_allowed_call_carries_the_teams_result_policy(
    open_bridge, member_token: Issued, reviewer: Any
) -> None:
    bridge = await open_bridge(member_token.raw)
    await bridge.send_to(text_data=call(ref="r1"))
    call_id = (await receive(bridge))["call_id"]
    await bridge.disconnect()  # allowed while the bridge is away (a restart): it re-syncs with a status
    await database_sync_to_async(call_decide)(call_id=call_id, reviewer=reviewer, allow=True)

    bridge = await open_bridge(member_token.raw)
    await bridge.send_to(text_data=protocol.encode(protocol.Status(call_ids=[call_id])))
    decision = await receive(bridge)
    assert (decision["state"], decision["run"]) == ("allowed", False)
    assert decision["result_policy"] == {
        "instruction": "mask",
        "hidden_text": "mask",
        "secret": "mask",
        "pii": "pass",
    }


async def test_every_answer_about_a_call_a_rule_allowed_carries_the_rules_result_policy(
    open_bridge, member_token: Issued, team_a: Any
) -> None:
    """The submit's answer, a status and a (refused) claim each read the call's rule, in async code."""
    await database_sync_to_async(Rule.objects.create)(
        team=team_a, effect="allow", server=SERVER, tool="read_file", result_secrets="block"
    )
    expected = {"instruction": "mask", "hidden_text": "mask", "secret": "block", "pii": "pass"}
    bridge = await open_bridge(member_token.raw)
    await bridge.send_to(text_data=call(ref="r1"))
    submitted = await receive(bridge)
    assert (submitted["state"], submitted["run"], submitted["result_policy"]) == ("allowed", True, expected)
    call_id = submitted["call_id"]
    await bridge.send_to(text_data=protocol.encode(protocol.Status(call_ids=[call_id])))
    assert (await receive(bridge))["result_policy"] == expected
    await bridge.send_to(text_data=protocol.encode(protocol.Claim(ref="r2", call_id=call_id)))
    claimed = await receive(bridge)  # already handed over with the submit's answer: not run twice
    assert (claimed["ref"], claimed["run"], claimed["result_policy"]) == ("r2", False, expected)


async def test_repeating_a_held_call_reattaches_over_the_socket(open_bridge, member_token: Issued) -> None:
    bridge = await open_bridge(member_token.raw)
    await bridge.send_to(text_data=call(ref="r1"))
    first = await receive(bridge)
    await bridge.send_to(text_data=call(ref="r2"))
    again = await receive(bridge)
    assert (again["call_id"], again["ref"], again["state"]) == (first["call_id"], "r2", "pending")


async def test_withdrawing_over_the_socket_takes_the_call_off_the_reviewers_queue(
    open_bridge, open_review, member_token: Issued, reviewer_cookie: bytes
) -> None:
    review = await open_review(reviewer_cookie)
    await receive(review)
    bridge = await open_bridge(member_token.raw)
    await bridge.send_to(text_data=call())
    call_id = (await receive(bridge))["call_id"]
    await receive_until(review, "call")
    await bridge.send_to(text_data=protocol.encode(protocol.Withdraw(call_id=call_id, ref="w", reason="bye")))
    assert (await receive(bridge))["state"] == "cancelled"
    update = await receive_until(review, "call")
    assert (update["call"]["id"], update["call"]["state"]) == (call_id, "cancelled")


# --- revocation -----------------------------------------------------------------------------------
async def test_revoking_the_token_denies_its_calls_and_closes_the_bridge_with_4403(
    open_bridge, member_token: Issued, admin: Any
) -> None:
    bridge = await open_bridge(member_token.raw)
    await bridge.send_to(text_data=call())
    call_id = (await receive(bridge))["call_id"]

    await database_sync_to_async(token_revoke)(token=member_token.token, by=admin, reason="laptop stolen")

    decision = await receive(bridge)
    assert (decision["call_id"], decision["state"]) == (call_id, "denied")
    error = await receive(bridge)
    assert error["code"] == "revoked" and "laptop stolen" in error["message"]
    await expect_close(bridge, protocol.CLOSE_REVOKED)


async def test_a_revocation_whose_broadcast_was_lost_still_counts(open_bridge, member_token: Issued) -> None:
    bridge = await open_bridge(member_token.raw)
    # Revoked in the database only, as if the channel layer had dropped the message.
    await database_sync_to_async(BridgeToken.objects.filter(pk=member_token.token.pk).update)(
        revoked_at=timezone.now()
    )
    await bridge.send_to(text_data=call())
    assert (await receive(bridge))["code"] == "revoked"
    await expect_close(bridge, protocol.CLOSE_REVOKED)
    assert not await database_sync_to_async(ToolCall.objects.exists)()


# --- who may open a review socket -------------------------------------------------------------------
async def test_a_reviewer_of_another_team_is_refused_with_4403(open_review, outsider_cookie: bytes) -> None:
    review = await open_review(outsider_cookie, team="alpha")
    assert (await receive(review))["type"] == "error"
    await expect_close(review, 4403)


async def test_a_plain_member_is_refused_with_4403(open_review, member: Any, session_cookie) -> None:
    cookie = await database_sync_to_async(session_cookie)(member)
    review = await open_review(cookie)
    assert (await receive(review))["type"] == "error"
    await expect_close(review, 4403)


@pytest.mark.parametrize("team", ["alpha", "nonexistent", ""])
async def test_an_anonymous_socket_is_refused_with_4403(open_review, team_a: Any, team: str) -> None:
    review = await open_review(None, team=team)
    assert (await receive(review))["type"] == "error"
    await expect_close(review, 4403)


async def test_a_review_socket_from_a_foreign_origin_is_refused(open_socket, reviewer_cookie: bytes) -> None:
    headers = [(b"origin", b"https://evil.example"), (b"cookie", reviewer_cookie)]
    await open_socket("/ws/review/?team=alpha", headers, accepted=False)


async def test_withdrawing_an_allowed_call_before_it_runs_cancels_it(
    open_bridge, member_token: Issued, reviewer: Any
) -> None:
    bridge = await open_bridge(member_token.raw)
    await bridge.send_to(text_data=call())
    call_id = (await receive(bridge))["call_id"]
    await database_sync_to_async(call_decide)(call_id=call_id, reviewer=reviewer, allow=True)
    assert (await receive(bridge))["state"] == "allowed"
    await bridge.send_to(text_data=protocol.encode(protocol.Withdraw(call_id=call_id, ref="w")))
    answer = await receive(bridge)
    assert (answer["ref"], answer["state"], answer["decided_by"]) == ("w", "cancelled", "rita@example.com")
    await bridge.send_to(text_data=protocol.encode(protocol.Claim(call_id=call_id, ref="c")))
    assert (await receive(bridge)).get("run", False) is False


async def test_a_reviewers_reason_with_a_nul_character_is_stored_without_it(
    open_bridge, open_review, member_token: Issued, reviewer_cookie: bytes
) -> None:
    review = await open_review(reviewer_cookie)
    bridge = await open_bridge(member_token.raw)
    await bridge.send_to(text_data=call())
    call_id = (await receive(bridge))["call_id"]
    await review.send_json_to(
        {"type": "decide", "call_id": call_id, "decision": "deny", "reason": "no\u0000pe"}
    )
    assert (await receive_until(review, "decided"))["state"] == "denied"
    assert (await receive(bridge))["reason"] == "denied by a reviewer: nope"


@pytest.mark.parametrize("how", ["deactivated", "removed"])
async def test_a_reviewer_who_lost_access_after_connecting_cannot_decide(
    open_bridge, open_review, member_token: Issued, reviewer: Any, reviewer_cookie: bytes, how: str
) -> None:
    from approvals.models import Membership

    review = await open_review(reviewer_cookie)
    await receive(review)
    bridge = await open_bridge(member_token.raw)
    await bridge.send_to(text_data=call())
    call_id = (await receive(bridge))["call_id"]
    if how == "deactivated":
        await database_sync_to_async(type(reviewer).objects.filter(pk=reviewer.pk).update)(is_active=False)
    else:
        await database_sync_to_async(Membership.objects.filter(user=reviewer).delete)()
    await review.send_json_to({"type": "decide", "call_id": call_id, "decision": "allow"})
    assert (await receive_until(review, "error"))["message"] == "no such call in your team"
    assert await state_of(call_id) == "pending"


async def test_a_page_that_asks_again_gets_the_whole_queue(
    open_review, member_token: Issued, reviewer_cookie: bytes
) -> None:
    """The page re-syncs now and then (static/signoff/queue.js): an update the channel layer dropped is
    made good by the next snapshot."""
    review = await open_review(reviewer_cookie)
    assert await receive(review) == {"type": "snapshot", "calls": []}
    # Held without a broadcast reaching this page, as if the channel layer had dropped the update.
    held = await database_sync_to_async(ToolCall.objects.create)(
        team=member_token.token.team,
        token=member_token.token,
        requester=member_token.token.user,
        server=SERVER,
        tool="read_file",
        arguments={"path": "/srv/missed"},
        arguments_hash="x" * 64,
        state=ToolCall.State.PENDING,
        deadline=timezone.now() + timedelta(minutes=5),
    )
    await review.send_json_to({"type": "sync"})
    snapshot = await receive(review)
    assert snapshot["type"] == "snapshot" and [c["id"] for c in snapshot["calls"]] == [str(held.pk)]


# --- alerts, live -------------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
async def test_the_admins_pages_are_told_the_open_alert_count_as_it_changes(
    open_review: Any, admin: Any, team_a: Any, reviewer_cookie: bytes, session_cookie: Callable[[Any], bytes]
) -> None:
    """The nav's Alerts badge follows on the admins' open queue pages; reviewers, who do not see alerts, are
    told nothing."""
    admin_page = await open_review(await database_sync_to_async(session_cookie)(admin))
    assert (await receive(admin_page))["type"] == "snapshot"
    reviewer_page = await open_review(reviewer_cookie)
    assert (await receive(reviewer_page))["type"] == "snapshot"

    raise_alert = database_sync_to_async(alert_raise)
    alert, new = await raise_alert(team=team_a, kind=Alert.Kind.VOLUME, key="k", message="42 calls a minute")
    assert new and await receive_until(admin_page, "alerts") == {"type": "alerts", "open": 1}
    _, new = await raise_alert(team=team_a, kind=Alert.Kind.VOLUME, key="k", message="43 calls a minute")
    assert not new and await admin_page.receive_nothing(timeout=0.2)  # counted up: still one open
    assert await database_sync_to_async(alert_acknowledge)(alert=alert, by=admin)
    assert await receive_until(admin_page, "alerts") == {"type": "alerts", "open": 0}
    assert await reviewer_page.receive_nothing(timeout=0.2)

"""Fail closed against a Signoff that misbehaves: a fake server on loopback answers the real bridge badly.

Whatever the server does wrong, the model gets an error that says why and the upstream never sees the call.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.e2e.conftest import bridge, free_port, text_of

WELCOME = {
    "type": "welcome",
    "protocol": 1,
    "team": "t",
    "user": "u",
    "token_name": "n",
    "default_deadline_seconds": 60,
}

Behaviour = Callable[[ServerConnection, dict[str, Any]], Awaitable[None]]


class GoDown(Exception):
    """Raised by a behaviour: from now on the fake server refuses every connection."""


@asynccontextmanager
async def fake_signoff(on_call: Behaviour, *, welcome: Any = WELCOME) -> AsyncIterator[str]:
    down = False

    async def handler(connection: ServerConnection) -> None:
        nonlocal down
        if down:
            await connection.close(code=1013)
            return
        async for frame in connection:
            message = json.loads(frame)
            if message["type"] == "hello":
                await connection.send(welcome if isinstance(welcome, str) else json.dumps(welcome))
            elif message["type"] == "call":
                try:
                    await on_call(connection, message)
                except GoDown:
                    down = True
                    await connection.close(code=1001)

    port = free_port()
    async with serve(handler, "127.0.0.1", port):
        yield f"http://127.0.0.1:{port}"


async def unreadable_decision(connection: ServerConnection, call: dict[str, Any]) -> None:
    await connection.send(
        json.dumps({"type": "decision", "ref": call["ref"], "call_id": "c", "state": "maybe"})
    )


async def not_json(connection: ServerConnection, call: dict[str, Any]) -> None:
    await connection.send("allowed, probably")
    await connection.send(
        json.dumps({"type": "decision", "ref": call["ref"], "call_id": "c", "state": "sure"})
    )


async def hang_up(connection: ServerConnection, call: dict[str, Any]) -> None:
    await connection.close(code=1011)


async def pending_then_go_down(connection: ServerConnection, call: dict[str, Any]) -> None:
    await connection.send(
        json.dumps({"type": "decision", "ref": call["ref"], "call_id": "c", "state": "pending"})
    )
    raise GoDown


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (unreadable_decision, "cannot read"),
        (not_json, "cannot read"),
        (hang_up, "not run"),
        (pending_then_go_down, "connection to Signoff was lost"),
    ],
)
async def test_a_misbehaving_server_never_lets_the_call_through(
    team_token: str, tmp_path, behaviour: Behaviour, expected: str
) -> None:
    async with (
        fake_signoff(behaviour) as url,
        bridge(
            tmp_path,
            url=url,
            token=team_token,
            bridge_args=("--connect-timeout", "1", "--reconnect-grace", "1"),
        ) as b,
    ):
        result = await b.session.call_tool("echo", {"text": "x"})
    assert result.is_error
    assert expected in text_of(result)
    assert "not run" in text_of(result)
    assert b.upstream_calls() == []


@pytest.mark.parametrize("welcome", ["not json at all", json.dumps({"type": "welcome"}), json.dumps([1, 2])])
async def test_a_bad_welcome_is_an_unreachable_server(team_token: str, tmp_path, welcome: str) -> None:
    async def never(connection: ServerConnection, call: dict[str, Any]) -> None:
        raise AssertionError("no call may be sent before a welcome")

    async with (
        fake_signoff(never, welcome=welcome) as url,
        bridge(tmp_path, url=url, token=team_token, bridge_args=("--connect-timeout", "1")) as b,
    ):
        result = await b.session.call_tool("echo", {"text": "x"})
        again = await b.session.call_tool("echo", {"text": "y"})  # the bridge is still alive
    assert result.is_error and "malformed frame" in text_of(result)
    assert again.is_error
    assert b.upstream_calls() == []


@pytest.fixture
def team_token() -> str:
    return "sgo_0123abcd_fake-token-for-a-fake-server"

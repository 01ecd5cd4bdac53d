"""A call the MCP client gives up on before Signoff answered it is withdrawn, not left in the queue.

The client may cancel a call (or close the bridge's stdin) in the moment between the bridge sending it and
the server's answer naming it. The server holds the call already; before, the bridge dropped the answer, so
the call waited in the reviewers' queue until the bridge's socket closed (then a grace) or, with the bridge
still running, until its deadline. These tests drive the real ``SignoffLink`` against a websocket server on
127.0.0.1 that answers a call only when the test says so.
"""

from __future__ import annotations

import contextlib
import json
import time

import anyio
import pytest
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from mcpbridge import link as link_module
from mcpbridge import protocol
from mcpbridge.link import SignoffLink

from .links import linked, welcome

CALL_ID = "6f1c1b0e-7d0a-4c55-9a53-1f7f1d6c7e10"
REASON = "cancelled by the MCP client"


class SlowServer:
    """Welcomes the bridge, holds back its answer to a call until ``answer_calls`` is set, answers with
    ``call_state``, and cancels withdrawn calls; every frame it receives is kept in ``frames``."""

    def __init__(self, call_state: str = "pending") -> None:
        self.call_state = call_state
        self.frames: list[dict] = []
        self.call_received = anyio.Event()
        self.answer_calls = anyio.Event()
        self.withdrawn = anyio.Event()

    async def handle(self, connection: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):  # the link cancelled at the end of a test
            await connection.recv()  # the hello
            await connection.send(welcome())
            async for raw in connection:
                frame = json.loads(raw)
                self.frames.append(frame)
                if frame["type"] == "call":
                    self.call_received.set()
                    await self.answer_calls.wait()
                    await connection.send(self._decision(self.call_state, frame["ref"]))
                elif frame["type"] == "withdraw":
                    await connection.send(self._decision("cancelled", frame["ref"], frame["reason"]))
                    self.withdrawn.set()

    @staticmethod
    def _decision(state: str, ref: str, reason: str = "") -> str:
        return protocol.encode(
            protocol.Decision(
                call_id=CALL_ID, state=state, reason=reason, ref=ref, deadline="2030-01-01T00:00:00+00:00"
            )
        )

    def withdrawals(self) -> list[dict]:
        return [frame for frame in self.frames if frame["type"] == "withdraw"]


async def submit_then_give_up(
    link: SignoffLink, server: SlowServer, *, withdraw: str | None, answer: bool = True
) -> float:
    """Send a call, cancel it once the server has it and before the answer (which the server then sends, if
    ``answer``); the seconds the cancel took."""
    call = protocol.Call(ref="-", tool="write_file", arguments={"path": "x"})
    async with anyio.create_task_group() as tasks:

        async def submit() -> None:
            await link.request(call, connect_timeout=5, withdraw_if_cancelled=withdraw)

        tasks.start_soon(submit)
        with anyio.fail_after(5):
            await server.call_received.wait()
        started = time.monotonic()
        tasks.cancel_scope.cancel()  # the client gives up: its handler is cancelled
        if answer:
            server.answer_calls.set()  # and the answer is on its way
    return time.monotonic() - started


async def test_a_call_cancelled_before_its_answer_is_withdrawn_once_the_answer_names_it() -> None:
    server = SlowServer()
    async with linked(server.handle) as link:
        await submit_then_give_up(link, server, withdraw=REASON)
        with anyio.fail_after(5):
            await server.withdrawn.wait()
    [withdrawal] = server.withdrawals()
    assert withdrawal["call_id"] == CALL_ID and withdrawal["reason"] == REASON


@pytest.mark.parametrize("state", ["denied", "expired"])
async def test_a_call_already_decided_when_its_answer_comes_is_not_withdrawn(state: str) -> None:
    server = SlowServer(call_state=state)
    async with linked(server.handle) as link:
        await submit_then_give_up(link, server, withdraw=REASON)
        await anyio.sleep(0.3)
    assert server.withdrawals() == []


async def test_without_a_withdraw_reason_a_cancelled_request_withdraws_nothing() -> None:
    server = SlowServer()
    async with linked(server.handle) as link:
        await submit_then_give_up(link, server, withdraw=None)
        await anyio.sleep(0.3)
    assert server.withdrawals() == []


async def test_the_cancel_waits_for_an_answer_that_never_comes_only_a_bounded_time(monkeypatch) -> None:
    monkeypatch.setattr(link_module, "WITHDRAW_SECONDS", 0.5)
    server = SlowServer()
    async with linked(server.handle) as link:
        took = await submit_then_give_up(link, server, withdraw=REASON, answer=False)
        server.answer_calls.set()
    assert 0.4 <= took < 2.0, took
    assert server.withdrawals() == []

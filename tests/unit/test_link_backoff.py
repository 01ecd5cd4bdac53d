"""The bridge's reconnect backoff against a server that refuses it at once (docs/reliability.md, "The database
stops"): it keeps doubling while every connection is refused, and starts over only after a welcome.

Before, a connection refused with an ``unavailable`` error frame counted as a session, so the backoff reset
after each one and every bridge retried about four times a second for as long as the outage lasted. These
tests drive the real ``SignoffLink`` against a websocket server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time

import anyio
import pytest
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from mcpbridge import protocol
from mcpbridge.link import LinkError

from .links import linked, welcome

CLOSE_UNAVAILABLE = 4503


class RefusingServer:
    """Refuses every connection as Signoff does when its database (or Redis) is down, except the ones
    numbered in ``welcome_at``, which are welcomed and then closed by the server."""

    def __init__(self, welcome_at: frozenset[int] = frozenset()) -> None:
        self.attempts: list[float] = []
        self.welcome_at = welcome_at
        self.attempted = anyio.Event()

    async def handle(self, connection: ServerConnection) -> None:
        self.attempts.append(time.monotonic())
        self.attempted.set()
        self.attempted = anyio.Event()
        with contextlib.suppress(ConnectionClosed):  # the link cancelled at the end of a test
            await self._refuse_or_welcome(connection)

    async def _refuse_or_welcome(self, connection: ServerConnection) -> None:
        await connection.recv()  # the hello
        if len(self.attempts) in self.welcome_at:
            await connection.send(welcome())
            await connection.close(code=1011)
            return
        await connection.send(
            protocol.encode(protocol.Error(code="unavailable", message="Signoff cannot reach its database"))
        )
        await connection.close(code=CLOSE_UNAVAILABLE, reason="database unavailable")

    async def wait_attempts(self, count: int, timeout: float) -> None:
        with anyio.fail_after(timeout):
            while len(self.attempts) < count:
                await self.attempted.wait()

    def gaps(self) -> list[float]:
        return [later - earlier for earlier, later in itertools.pairwise(self.attempts)]


async def test_the_backoff_keeps_doubling_while_every_connection_is_refused() -> None:
    server = RefusingServer()
    async with linked(server.handle) as link:
        await server.wait_attempts(4, timeout=5)
    # 0.25 s, 0.5 s, 1 s (±20 %): four attempts take about 1.75 s, where a reset backoff took 0.75 s.
    gaps = server.gaps()
    assert gaps[0] >= 0.19, gaps
    for earlier, later in itertools.pairwise(gaps):
        assert later >= earlier * 1.3, gaps  # doubled, whatever the jitter
    assert server.attempts[3] - server.attempts[0] >= 1.4, gaps
    assert not link.connected and link.fatal is None  # still trying: "unavailable" is not a refusal for good
    assert "database" in link.last_error


async def test_a_refused_bridge_tries_at_most_a_few_times_in_two_seconds() -> None:
    server = RefusingServer()
    async with linked(server.handle):
        await anyio.sleep(2.0)
    assert len(server.attempts) <= 4, server.gaps()  # about 8 before the fix


async def test_the_backoff_starts_over_after_a_welcomed_connection() -> None:
    server = RefusingServer(welcome_at=frozenset({4}))
    async with linked(server.handle):
        await server.wait_attempts(5, timeout=8)
        gaps = server.gaps()
        assert gaps[2] >= 0.75, gaps  # refused three times: the wait had grown to 1 s
        assert gaps[3] <= 0.4, gaps  # the fourth was welcomed (then dropped): back to 0.25 s


async def test_a_call_answered_unavailable_fails_closed() -> None:
    """A request answered with an ``unavailable`` error carrying its ref raises: the call is not run."""

    async def answer_unavailable(connection: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await connection.recv()  # the hello
            await connection.send(welcome())
            async for frame in connection:
                ref = json.loads(frame)["ref"]
                error = protocol.Error(
                    code="unavailable", message="Signoff cannot reach its database", ref=ref
                )
                await connection.send(protocol.encode(error))

    async with linked(answer_unavailable) as link:
        with anyio.fail_after(5), pytest.raises(LinkError, match="cannot reach its database"):
            await link.request(protocol.Call(ref="-", tool="echo", arguments={}), connect_timeout=3)
        assert link.connected  # the connection stays for the calls it still holds

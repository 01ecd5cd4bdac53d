"""The real bridge link (``mcpbridge.link.SignoffLink``) against a websocket server of the test's own on
127.0.0.1: the server's side of the protocol is whatever the test's handler says."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from websockets.asyncio.server import ServerConnection, serve

from mcpbridge import protocol
from mcpbridge.link import SignoffLink


def hello() -> protocol.Hello:
    """The hello the link sends on every connection."""
    return protocol.Hello(
        protocol=protocol.PROTOCOL_VERSION,
        bridge_version="test",
        upstream=protocol.UpstreamInfo(name="s", transport="stdio"),
        tools=[],
    )


def welcome() -> str:
    """The frame with which a server lets the link in."""
    return protocol.encode(
        protocol.Welcome(
            protocol=protocol.PROTOCOL_VERSION,
            team="t",
            user="u",
            token_name="n",
            default_deadline_seconds=9,
        )
    )


@contextlib.asynccontextmanager
async def linked(handle: Callable[[ServerConnection], Awaitable[None]]) -> AsyncIterator[SignoffLink]:
    """The real link, running against a server that serves each connection with ``handle``, until the block
    ends."""
    async with serve(handle, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        link = SignoffLink(url=f"http://127.0.0.1:{port}", token="t", hello=hello)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(link.run)
            yield link
            tasks.cancel_scope.cancel()

"""The bridge tells Signoff its upstream's tools whatever the order of connecting and reading them.

A bridge in front of a slow upstream (a streamable HTTP one, say) can write its hello after ``initialize``
but before the tools are read, and read them while the hello still waits for its welcome, when no frame
can go. Signoff must still learn the tools: otherwise every call is denied as naming an unknown tool.
These tests drive the real bridge and its real link against a websocket server that holds the welcome.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import mcp.types as types
import pytest
from websockets.asyncio.server import ServerConnection, serve

from mcpbridge import protocol
from mcpbridge.proxy import Bridge, BridgeConfig

ECHO = types.Tool(name="echo", input_schema={"type": "object"})
WRITE = types.Tool(name="write_file", input_schema={"type": "object"})


class SlowUpstream:
    """The part of an upstream session ``refresh_tools`` uses, answering with the tools it is given."""

    def __init__(self, *tools: types.Tool) -> None:
        self.tools = list(tools)

    async def list_tools(self, params: Any = None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.tools)


class HeldWelcomeServer:
    """Signoff's bridge endpoint as far as the link sees it, with the welcome held until released."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.hello_received = anyio.Event()
        self.release_welcome = anyio.Event()
        self.frame_received = anyio.Event()

    async def handle(self, connection: ServerConnection) -> None:
        hello = json.loads(await connection.recv())
        self.frames.append(hello)
        self.hello_received.set()
        await self.release_welcome.wait()
        welcome = protocol.Welcome(
            protocol=protocol.PROTOCOL_VERSION, team="t", user="u", token_name="n", default_deadline_seconds=9
        )
        await connection.send(protocol.encode(welcome))
        async for frame in connection:
            self.frames.append(json.loads(frame))
            self.frame_received.set()
            self.frame_received = anyio.Event()

    def told_tools(self) -> list[str]:
        """The tool names Signoff holds now: the last hello or ``tools`` frame wins."""
        names: list[str] = []
        for frame in self.frames:
            if frame["type"] in ("hello", "tools"):
                names = [tool["name"] for tool in frame["tools"]]
        return names

    async def wait_for(self, kind: str) -> dict[str, Any]:
        with anyio.fail_after(5):
            while True:
                for frame in self.frames:
                    if frame["type"] == kind:
                        return frame
                await self.frame_received.wait()


def _initialized() -> types.InitializeResult:
    return types.InitializeResult(
        protocol_version="2025-11-25",
        capabilities=types.ServerCapabilities(tools=types.ToolsCapability(list_changed=True)),
        server_info=types.Implementation(name="slow", version="1.0"),
    )


@pytest.fixture
async def held_welcome() -> Any:
    server = HeldWelcomeServer()
    async with serve(server.handle, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        yield server, f"http://127.0.0.1:{port}"


def _new_bridge(url: str, tasks: anyio.abc.TaskGroup) -> Bridge:
    config = BridgeConfig(name="slow", signoff_url=url, token="t", upstream_command=[], upstream_url="x")
    bridge = Bridge(config)
    bridge._background = tasks
    return bridge


async def _run_bridge(url: str, tasks: anyio.abc.TaskGroup) -> Bridge:
    bridge = _new_bridge(url, tasks)
    tasks.start_soon(bridge.link.run)
    return bridge


async def test_tools_read_while_the_hello_awaits_its_welcome_reach_signoff(held_welcome: Any) -> None:
    server, url = held_welcome
    async with anyio.create_task_group() as tasks:
        bridge = await _run_bridge(url, tasks)
        bridge.upstream = SlowUpstream(ECHO)  # type: ignore[assignment]
        bridge.init = _initialized()  # initialize answered; the tools are not read yet
        with anyio.fail_after(5):
            await server.hello_received.wait()
        assert server.frames[0]["tools"] == []  # the hello went out with no tools
        await bridge.refresh_tools()  # read now, while no frame can go
        tasks.start_soon(bridge.announce)  # what serve() does next
        server.release_welcome.set()
        await server.wait_for("upstream")
        assert server.told_tools() == ["echo"]
        tasks.cancel_scope.cancel()


async def test_a_hello_written_after_the_tools_were_read_needs_no_tools_frame(held_welcome: Any) -> None:
    server, url = held_welcome
    async with anyio.create_task_group() as tasks:
        bridge = _new_bridge(url, tasks)
        bridge.upstream = SlowUpstream(ECHO, WRITE)  # type: ignore[assignment]
        bridge.init = _initialized()
        await bridge.refresh_tools()  # before any connection
        tasks.start_soon(bridge.link.run)
        tasks.start_soon(bridge.announce)
        with anyio.fail_after(5):
            await server.hello_received.wait()
        server.release_welcome.set()
        await server.wait_for("upstream")
        assert server.told_tools() == ["echo", "write_file"]
        assert [frame["type"] for frame in server.frames] == ["hello", "upstream"]
        tasks.cancel_scope.cancel()


async def test_a_tool_list_change_after_the_welcome_is_sent_at_once(held_welcome: Any) -> None:
    server, url = held_welcome
    async with anyio.create_task_group() as tasks:
        bridge = await _run_bridge(url, tasks)
        upstream = SlowUpstream(ECHO)
        bridge.upstream = upstream  # type: ignore[assignment]
        bridge.init = _initialized()
        await bridge.refresh_tools()
        tasks.start_soon(bridge.announce)
        server.release_welcome.set()
        await server.wait_for("upstream")
        upstream.tools.append(WRITE)
        await bridge.refresh_tools()  # what a notifications/tools/list_changed triggers
        with anyio.fail_after(5):
            while server.told_tools() != ["echo", "write_file"]:
                await server.frame_received.wait()
        tasks.cancel_scope.cancel()

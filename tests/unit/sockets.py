"""Reading from channels' WebsocketCommunicator in the socket tests."""

from __future__ import annotations

import json
from typing import Any

from channels.testing import WebsocketCommunicator

Frame = dict[str, Any]


async def receive(socket: WebsocketCommunicator, timeout: float = 3) -> Frame:
    return json.loads(await socket.receive_from(timeout=timeout))


async def receive_until(socket: WebsocketCommunicator, frame_type: str, timeout: float = 3) -> Frame:
    """The next frame of this type, skipping others (their order is not part of the contract)."""
    for _ in range(20):
        frame = await receive(socket, timeout)
        if frame["type"] == frame_type:
            return frame
    raise AssertionError(f"no {frame_type} frame")


async def expect_close(socket: WebsocketCommunicator, code: int) -> None:
    output = await socket.receive_output(timeout=3)
    assert output["type"] == "websocket.close", output
    assert output.get("code") == code

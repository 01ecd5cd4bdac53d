"""The bridge's socket while the database is unreachable (docs/reliability.md, "The database stops").

A bridge connecting then is told ``unavailable`` and closed with 4503, not refused (4401) nor failed with an
HTTP 500; a request on an open socket is answered ``unavailable`` with its ``ref`` (the bridge denies that
call, nothing runs) and the socket stays open for the calls it still holds. The database going away is
simulated by the services raising what Django raises then; the end-to-end test with a real PostgreSQL
killed and restarted is ``tests/e2e/test_database_faults.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import InterfaceError, OperationalError, connections

from approvals import consumers, middleware
from approvals.consumers import CLOSE_UNAVAILABLE
from approvals.models import ToolCall
from approvals.services import calls as call_services

from .conftest import Issued
from .sockets import expect_close, receive
from .test_consumers import call, hello

pytestmark = pytest.mark.django_db(transaction=True)


@contextlib.asynccontextmanager
async def bridge_socket(raw: str) -> AsyncIterator[WebsocketCommunicator]:
    """A bridge's socket on the real ASGI application (its middleware included), disconnected at the end."""
    from config.asgi import application

    socket = WebsocketCommunicator(
        application, "/ws/bridge/", headers=[(b"authorization", f"Bearer {raw}".encode())]
    )
    connected, _ = await socket.connect(timeout=3)
    assert connected
    try:
        yield socket
    finally:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await socket.disconnect(timeout=3)
        await database_sync_to_async(connections.close_all)()


DOWN = OperationalError('connection to server at "127.0.0.1", port 5432 failed: Connection refused')


@pytest.mark.parametrize("error", [DOWN, InterfaceError("connection already closed")], ids=["down", "closed"])
async def test_a_bridge_connecting_while_the_database_is_down_is_told_unavailable(
    member_token: Issued, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def unreachable(raw: str) -> None:
        raise error

    monkeypatch.setattr(middleware, "token_authenticate", unreachable)
    async with bridge_socket(member_token.raw) as socket:
        frame = await receive(socket)
        assert (frame["type"], frame["code"]) == ("error", "unavailable")
        assert "database" in frame["message"] and "Nothing was run" in frame["message"]
        await expect_close(socket, CLOSE_UNAVAILABLE)  # not 4401: the token was not refused, only not checked


async def test_a_call_while_the_database_is_down_is_answered_unavailable_and_the_socket_stays(
    member_token: Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(**kwargs: Any) -> None:
        raise DOWN

    async with bridge_socket(member_token.raw) as socket:
        await socket.send_to(text_data=hello())
        assert (await receive(socket))["type"] == "welcome"
        with monkeypatch.context() as patch:
            patch.setattr(call_services, "call_submit", unreachable)
            await socket.send_to(text_data=call(ref="r1"))
            frame = await receive(socket)
        assert (frame["type"], frame["code"], frame["ref"]) == ("error", "unavailable", "r1")
        assert "database" in frame["message"]
        assert await database_sync_to_async(ToolCall.objects.count)() == 0
        # The database is back: the same socket serves the next call.
        await socket.send_to(text_data=call(ref="r2"))
        decision = await receive(socket)
        assert (decision["type"], decision["ref"], decision["state"]) == ("decision", "r2", "pending")


async def test_a_hello_while_the_database_is_down_is_not_welcomed_and_closed_with_4503(
    member_token: Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(**kwargs: Any) -> None:
        raise DOWN

    monkeypatch.setattr(consumers, "tools_seen", unreachable)
    async with bridge_socket(member_token.raw) as socket:
        await socket.send_to(text_data=hello())
        frame = await receive(socket)
        assert (frame["type"], frame["code"]) == ("error", "unavailable")
        await expect_close(socket, CLOSE_UNAVAILABLE)  # the bridge reconnects with backoff

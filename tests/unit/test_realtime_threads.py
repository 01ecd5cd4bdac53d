"""Events sent from a thread of its own reach the sockets at once on the embedded default's in-memory layer.

The in-process sweeper (approvals/sweeper.py) runs in a thread of its own: the expiries and cancellations it
makes are broadcast from there. The in-memory layer keeps each socket's messages in an asyncio queue of the
loop that serves the sockets, and asyncio queues are not thread-safe. Sent through a loop of the sweeper's
thread, the message was queued without waking the serving loop: a page learnt of it at that loop's next
timer (Daphne's, within a second) or, when its queue was dropped at that moment, never. ``realtime.send``
now hands such events to the serving loop, which ``recording_event_loop`` (config/asgi.py) notes.

Here the serving loop runs in a thread and has no timer at all, so a message that does not wake it is
never received.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from channels.layers import get_channel_layer

from approvals import realtime

GROUP = "review-team-thread-test"


@pytest.fixture
def serving_loop(settings, monkeypatch) -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop in a thread of its own serving a do-nothing ASGI app, as Daphne serves config/asgi.py,
    over the embedded default's in-memory layer."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    monkeypatch.setattr(realtime, "_served_on", None)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="serving-loop", daemon=True)
    thread.start()

    async def nothing(scope: Any, receive: Any, send: Any) -> None:
        return None

    app = realtime.recording_event_loop(nothing)
    served = app(scope={"type": "http"}, receive=None, send=None)  # as Daphne calls it: by name
    asyncio.run_coroutine_threadsafe(served, loop).result(5)
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def listen(loop: asyncio.AbstractEventLoop) -> tuple[threading.Event, list[dict[str, Any]]]:
    """A socket of the serving loop in ``GROUP``, waiting for one message."""
    layer = get_channel_layer()
    received = threading.Event()
    messages: list[dict[str, Any]] = []
    joined = threading.Event()

    async def socket() -> None:
        channel = await layer.new_channel()
        await layer.group_add(GROUP, channel)
        joined.set()
        messages.append(await layer.receive(channel))
        received.set()

    asyncio.run_coroutine_threadsafe(socket(), loop)
    assert joined.wait(5)
    return received, messages


def send_from_a_thread_of_its_own(event: dict[str, Any]) -> None:
    sender = threading.Thread(target=realtime.send, args=(GROUP, event), name="sweeper-like")
    sender.start()
    sender.join(10)
    assert not sender.is_alive()


def test_an_event_sent_from_a_thread_of_its_own_reaches_a_socket_of_the_serving_loop(serving_loop) -> None:
    received, messages = listen(serving_loop)
    send_from_a_thread_of_its_own({"type": "call.update", "text": "expired"})
    assert received.wait(5), "the serving loop was never woken"
    assert messages == [{"type": "call.update", "text": "expired"}]


def test_every_event_of_a_burst_from_a_thread_arrives(serving_loop) -> None:
    for number in range(50):
        received, messages = listen(serving_loop)
        send_from_a_thread_of_its_own({"type": "call.update", "text": str(number)})
        assert received.wait(5), number
        assert messages == [{"type": "call.update", "text": str(number)}]


def test_once_the_serving_loop_stopped_a_thread_sends_on_a_loop_of_its_own(settings, monkeypatch) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    closed = asyncio.new_event_loop()
    closed.close()
    monkeypatch.setattr(realtime, "_served_on", (closed, -1))
    layer = get_channel_layer()

    async def join_and_send() -> dict[str, Any]:
        channel = await layer.new_channel()
        await layer.group_add(GROUP, channel)
        await asyncio.to_thread(realtime.send, GROUP, {"type": "call.update", "text": "x"})
        return await asyncio.wait_for(layer.receive(channel), 5)

    assert asyncio.run(join_and_send()) == {"type": "call.update", "text": "x"}

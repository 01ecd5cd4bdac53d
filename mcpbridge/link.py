"""The bridge's websocket to the Signoff server: connect, re-connect with backoff, request and watch.

Fail closed: every wait here is bounded, and every way it can end without an answer from the server
raises :class:`LinkError` with a reason a person (and a model) can act on.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import websockets
from websockets.asyncio.client import ClientConnection

from mcpbridge import protocol

log = logging.getLogger("mcpbridge.link")


REQUEST_ATTEMPTS = 3
WITHDRAW_SECONDS = 3.0
"""How long a cancelled call's withdrawal may hold up the cancel: its answer, then the withdrawal's."""
BAD_ANSWER = "bad_answer"
"""Not a server code: the bridge's own mark for an answer it could not parse."""
REFUSAL_CODES = frozenset(
    {"unauthorized", "revoked", "unsupported_protocol", "server_out_of_scope", "network_refused"}
)
FATAL_TEXT = {
    protocol.CLOSE_UNAUTHORIZED: "Signoff refused the token in SIGNOFF_TOKEN (unknown, expired or revoked); "
    "ask your Signoff admin for a new one",
    protocol.CLOSE_REVOKED: "Signoff closed this bridge: its token was revoked or its owner removed",
    protocol.CLOSE_PROTOCOL: "Signoff does not speak this bridge's protocol version; upgrade mcpbridge",
    protocol.CLOSE_OUT_OF_SCOPE: "Signoff refused this bridge: its token may not front this server (--name)",
    protocol.CLOSE_NETWORK_REFUSED: "Signoff refused this bridge: it connects from outside the networks its "
    "token may connect from; ask your team's Signoff admins to allow this address",
}


class LinkError(Exception):
    """No usable answer from Signoff: the call must not run. The message says why."""


@dataclass
class CallWatch:
    """The latest state the server told us for one call, with an event set on every change."""

    latest: protocol.Decision
    changed: anyio.Event = field(default_factory=anyio.Event)

    def update(self, decision: protocol.Decision) -> None:
        self.latest = decision
        self.changed.set()
        self.changed = anyio.Event()


def websocket_url(base: str) -> str:
    """``https://host`` → ``wss://host/ws/bridge/`` (http → ws); a ws(s) URL is taken as is."""
    base = base.strip().rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    elif not base.startswith(("ws://", "wss://")):
        raise ValueError(f"SIGNOFF_URL must start with https:// or http://, got {base!r}")
    return (
        base
        if base.endswith(protocol.BRIDGE_PATH.rstrip("/")) or base.endswith(protocol.BRIDGE_PATH)
        else base + protocol.BRIDGE_PATH
    )


class SignoffLink:
    """One long-lived connection to Signoff, shared by every call of this bridge."""

    def __init__(
        self,
        *,
        url: str,
        token: str,
        hello: Callable[[], protocol.Hello],
        answer_timeout: float = 15.0,
    ) -> None:
        self.url = websocket_url(url)
        self._token = token
        self._hello = hello
        self.answer_timeout = answer_timeout
        self._socket: ClientConnection | None = None
        self._connected = anyio.Event()
        self._state_changed = anyio.Event()
        self._replies: dict[str, anyio.Event] = {}
        self._answers: dict[str, protocol.Decision | protocol.Error] = {}
        self._watches: dict[str, CallWatch] = {}
        self._refs = itertools.count(1)
        self._refusal = ""
        self.fatal: str | None = None
        """Set when the server refused us for good (bad or revoked token, protocol version)."""
        self.down_since: float | None = time.monotonic()
        """Monotonic time the link went down, None while connected."""
        self.last_error = "not connected yet"
        self.welcome: protocol.Welcome | None = None

    # --- connection ---------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._socket is not None and self.welcome is not None

    async def run(self) -> None:
        """Keep connected until cancelled or refused for good. Backoff: 0.25 s doubling to 10 s, jittered.

        The backoff starts over only after a connection that was welcomed: one refused or closed at once (the
        server unavailable, its database down) keeps doubling it, so an outage is not hammered."""
        delay = 0.25
        while self.fatal is None:
            try:
                await self._session()
            except websockets.exceptions.ConnectionClosed as exc:
                frame = exc.rcvd
                self._on_close(frame.code if frame else None, frame.reason if frame else "")
            except (
                OSError,
                websockets.exceptions.WebSocketException,
                LinkError,
                TimeoutError,
                protocol.ProtocolError,
            ) as exc:
                self.last_error = _describe_failure(exc)
                log.warning("Signoff link: %s", self.last_error)
            if self.welcome is not None:  # this connection was welcomed: the next one is tried soon
                delay = 0.25
            self._went_down()
            if self.fatal is not None:
                break
            await anyio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, 10.0)

    async def _session(self) -> None:
        async with websockets.connect(
            self.url,
            additional_headers={"Authorization": f"Bearer {self._token}"},
            max_size=protocol.MAX_FRAME_BYTES,
            open_timeout=10,
            ping_interval=20,
            ping_timeout=20,
            user_agent_header="mcpbridge",
        ) as socket:
            # Refused at once (bad token, Redis down…), the socket may be closed already: the server's
            # reason is still there to be read below.
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                await socket.send(protocol.encode(self._hello()))
            with anyio.fail_after(self.answer_timeout):
                first = protocol.parse_server_message(await socket.recv())
            if isinstance(first, protocol.Error):
                await self._read_close(socket, first)
                return
            if not isinstance(first, protocol.Welcome):
                raise LinkError(f"Signoff answered the hello with {first.type!r}")
            self.welcome = first
            self._socket = socket
            self.down_since = None
            self.last_error = ""
            self._connected.set()
            self._signal()
            log.info("connected to Signoff as %s (team %s)", first.user, first.team)
            # Re-attach: ask for the state of every call we are still waiting on.
            pending = [cid for cid, w in self._watches.items() if w.latest.state in ("pending", "allowed")]
            for start in range(0, len(pending), protocol.MAX_STATUS_IDS):
                batch = pending[start : start + protocol.MAX_STATUS_IDS]
                await socket.send(protocol.encode(protocol.Status(call_ids=batch)))
            try:
                async for frame in socket:
                    self._on_frame(frame)
            except websockets.exceptions.ConnectionClosed:
                pass
            self._on_close(socket.close_code, socket.close_reason)

    async def _read_close(self, socket: ClientConnection, error: protocol.Error) -> None:
        """The server refused the hello: wait for its close frame to know whether it is final."""
        try:
            with anyio.move_on_after(2):
                async for _ in socket:
                    pass
        except websockets.exceptions.ConnectionClosed:
            pass
        if error.code in REFUSAL_CODES:
            self._refusal = error.message
        self._on_close(socket.close_code, error.message)
        if self.fatal is None:  # the server's words say more than a close code (e.g. "unavailable")
            self.last_error = error.message

    def _on_close(self, code: int | None, reason: str | None) -> None:
        if code in protocol.FATAL_CLOSE_CODES:
            self.fatal = self._refusal or FATAL_TEXT.get(code, f"Signoff closed the connection ({code})")
            log.error("Signoff refused this bridge: %s", self.fatal)
        else:
            self.last_error = f"connection to Signoff lost (code {code})"

    def _went_down(self) -> None:
        if self._socket is not None or self.welcome is not None:
            self.down_since = time.monotonic()
        self._socket = None
        self.welcome = None
        self._connected = anyio.Event()
        # Requests in flight on the lost connection get no answer: wake their waiters.
        for event in self._replies.values():
            event.set()
        self._signal()

    def _signal(self) -> None:
        self._state_changed.set()
        self._state_changed = anyio.Event()

    def _on_frame(self, frame: str | bytes) -> None:
        try:
            message = protocol.parse_server_message(frame)
        except protocol.ProtocolError as exc:
            log.warning("malformed frame from Signoff: %s", exc.message)
            ref = _ref_of(frame)
            if ref in self._replies:  # fail the request it answers now, rather than at its timeout
                self._answers[ref] = protocol.Error(code=BAD_ANSWER, message=exc.message)
                self._replies[ref].set()
            return
        if isinstance(message, protocol.Error):
            log.warning("Signoff error %s: %s", message.code, message.message)
            if message.code in REFUSAL_CODES:
                self._refusal = message.message
            if message.ref and message.ref in self._replies:
                self._answers[message.ref] = message
                self._replies[message.ref].set()
            return
        if isinstance(message, protocol.Decision):
            # Watches follow the frames in the order they came: the answer to a request, then the pushes after
            # it. Applied when the requester wakes, an answer would overwrite a newer push read meanwhile (a
            # held result blocked at once stayed "held" for the bridge).
            watch = self._watches.get(message.call_id)
            answers = bool(message.ref and message.ref in self._replies)
            if watch is not None:
                watch.update(message)
            elif answers:
                self._watches[message.call_id] = CallWatch(message)
            if answers:
                assert message.ref is not None
                self._answers[message.ref] = message
                self._replies[message.ref].set()

    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109 - a plain bound
        """Wait up to ``timeout`` seconds for a live connection, or raise LinkError."""
        if self.fatal:
            raise LinkError(self.fatal)
        with anyio.move_on_after(timeout):
            while not self.connected:
                if self.fatal:
                    raise LinkError(self.fatal)
                await self._state_changed.wait()
        if not self.connected:
            raise LinkError(self.fatal or f"Signoff at {self.url} is unreachable ({self.last_error})")

    # --- requests -----------------------------------------------------------------------------------
    async def request(
        self, message: protocol.Message, *, connect_timeout: float, withdraw_if_cancelled: str | None = None
    ) -> protocol.Decision:
        """Send a request with a fresh ``ref`` and return the decision answering it.

        Waits up to ``connect_timeout`` for a connection, then up to ``answer_timeout`` for the answer.
        If the connection drops first, the request is sent again on the next one (every request is
        idempotent on the server: a repeated call re-attaches, a repeated claim fails harmlessly), at most
        ``REQUEST_ATTEMPTS`` times.

        A call whose caller is cancelled after sending it (the MCP client gave up, or closed the bridge's
        stdin) is withdrawn with the reason ``withdraw_if_cancelled`` once its answer names it: the server
        holds it already, and it must not wait in the reviewers' queue for a client that is gone.
        """
        for _ in range(REQUEST_ATTEMPTS):
            await self.wait_connected(connect_timeout)
            ref = f"r{next(self._refs)}"
            event = anyio.Event()
            self._replies[ref] = event
            answered_in_time = False
            sent = False
            try:
                socket = self._socket
                assert socket is not None
                await socket.send(protocol.encode(message.model_copy(update={"ref": ref})))
                sent = True
                with anyio.move_on_after(self.answer_timeout):
                    await event.wait()
                    answered_in_time = True
                answer = self._answers.pop(ref, None)
            except websockets.exceptions.ConnectionClosed:
                answer = None
            except anyio.get_cancelled_exc_class():
                if sent and withdraw_if_cancelled is not None:
                    await self._withdraw_when_answered(ref, event, withdraw_if_cancelled)
                raise
            finally:
                self._replies.pop(ref, None)
                self._answers.pop(ref, None)
            if isinstance(answer, protocol.Error):
                if answer.code == BAD_ANSWER:
                    raise LinkError(f"Signoff sent an answer the bridge cannot read ({answer.message})")
                raise LinkError(f"Signoff refused the request: {answer.message}")
            if answer is not None:
                return answer  # its call is watched already (``_on_frame``)
            if self.fatal:
                raise LinkError(self.fatal)
            if not answered_in_time and self.connected:
                raise LinkError(f"no answer from Signoff within {self.answer_timeout:.0f} s")
        raise LinkError(f"the connection to Signoff dropped {REQUEST_ATTEMPTS} times before it answered")

    async def _withdraw_when_answered(self, ref: str, answered: anyio.Event, reason: str) -> None:
        """Withdraw the call that answers ``ref`` once it arrives; bounded, and shielded from the cancel of
        the request that sent it. A call already decided, or handed over to run, is left to the server."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(WITHDRAW_SECONDS):
            await answered.wait()  # set by the answer, or by the connection going down (then no answer)
            answer = self._answers.pop(ref, None)
            if not isinstance(answer, protocol.Decision):
                return
            if answer.run or answer.state in protocol.TERMINAL_STATES:
                self.forget(answer.call_id)  # nobody here waits on it any more
                return
            await self.withdraw(answer.call_id, reason)

    async def withdraw(self, call_id: str, reason: str) -> None:
        """Take a held call off the queue: nobody here waits on it any more. Best effort: a failure is
        logged, and the server's own rules (the detach grace, the deadline) end the call."""
        self.forget(call_id)
        try:
            await self.request(protocol.Withdraw(call_id=call_id, reason=reason), connect_timeout=1.0)
        except LinkError as exc:
            log.info("could not withdraw call %s: %s", call_id, exc)
        finally:
            self.forget(call_id)  # and the watch its answer opened

    async def send(self, message: protocol.Message) -> bool:
        """Fire-and-forget (status polls). False when not connected."""
        socket = self._socket
        if socket is None:
            return False
        try:
            await socket.send(protocol.encode(message))
        except websockets.exceptions.ConnectionClosed:
            return False
        return True

    def watch(self, call_id: str) -> CallWatch:
        """The watch of a call we have submitted."""
        return self._watches[call_id]

    def forget(self, call_id: str) -> None:
        """Stop following a call (it reached a final state, or the client gave up)."""
        self._watches.pop(call_id, None)

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()


def _ref_of(frame: str | bytes) -> str:
    """The ``ref`` of a frame that did not parse as a message, if it is JSON with one."""
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError):
        return ""
    ref = data.get("ref") if isinstance(data, dict) else None
    return ref if isinstance(ref, str) else ""


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, protocol.ProtocolError):
        return f"Signoff answered with a malformed frame ({exc.message})"
    if isinstance(exc, websockets.exceptions.InvalidStatus):
        return f"Signoff answered HTTP {exc.response.status_code} at the bridge endpoint"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__

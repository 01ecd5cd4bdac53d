"""Websocket consumers: they authenticate, parse, call one service and send the answer. No logic here.

``BridgeConsumer`` speaks the protocol of ``mcpbridge.protocol`` (docs/protocol.md) with bridges.
``ReviewConsumer`` feeds a reviewer's page with the team's held calls and takes decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError

from approvals import access, metrics, realtime, scopes, security, selectors
from approvals.logging import log_bind, new_request_id
from approvals.middleware import DATABASE_UNAVAILABLE
from approvals.models import BridgeToken, Team, ToolCall
from approvals.services import calls as call_services
from approvals.services import results as result_services
from approvals.services.inventory import sighting_of, upstream_seen
from approvals.services.networks import token_network_refused
from approvals.services.presence import calls_detach, calls_follow, is_followed
from approvals.services.server_review import unapproved_server_refusal
from approvals.services.tokens import server_in_scope, token_scope_refused, token_touch
from approvals.services.tools import tools_seen
from mcpbridge import protocol

log = logging.getLogger(__name__)


CLOSE_UNAVAILABLE = 4503
"""Signoff cannot serve a bridge now (its channel layer is down): the bridge reconnects with backoff."""
UNAVAILABLE = (
    "Signoff is temporarily unavailable: it cannot reach its message broker (Redis), so no decision "
    "could reach this bridge. Nothing was run; try again shortly"
)
RESULT_DELAY_SECONDS = 0.005
"""How long a bridge's result report waits for a call that follows it (``BridgeConsumer._record_soon``)."""
DATABASE_DOWN = (
    "Signoff is temporarily unavailable: it cannot reach its database, so nothing can be recorded or "
    "decided. Nothing was run; try again shortly"
)


class BridgeConsumer(AsyncWebsocketConsumer):
    """One connected bridge. The token was checked by ``BridgeTokenMiddleware`` at connect."""

    token: BridgeToken | None
    upstream: protocol.UpstreamInfo | None
    tools: dict[str, protocol.ToolInfo]
    report: protocol.UpstreamReport | None
    """The bridge's inventory report of its upstream, once it sent one (docs/inventory.md)."""
    tools_known: bool
    """Whether ``tools`` is the upstream's list, rather than the empty one of a hello sent before the
    upstream answered ``initialize``."""
    recording: asyncio.Task[None] | None = None
    """Records the result reports waiting in ``results`` (``_record_soon``), while it runs."""
    following: set[str]
    """The undecided calls this connection waits on: detached when it closes (services/presence.py)."""

    async def connect(self) -> None:
        self.token = self.scope.get("bridge_token")
        self.gate = security.FrameGate(security.bridge_limits(), close_oversized=False)
        self.upstream = None
        self.tools = {}
        self.report = None
        self.tools_known = False
        self.results: list[protocol.Result] = []
        self.record_now = asyncio.Event()
        self.following = set()
        # Accept first, so the bridge sees why it is refused instead of a bare HTTP 403.
        await self.accept()
        if self.scope.get(DATABASE_UNAVAILABLE):  # the token could not be checked: not refused, not let in
            await self._send(protocol.Error(code="unavailable", message=DATABASE_DOWN))
            await self.close(code=CLOSE_UNAVAILABLE, reason="database unavailable")
            return
        if self.token is None:
            await self._send(
                protocol.Error(
                    code="unauthorized",
                    message="Signoff refused the token: it is unknown, expired or revoked. "
                    "Ask your Signoff admin for a new one and put it in SIGNOFF_TOKEN.",
                )
            )
            await self.close(code=protocol.CLOSE_UNAUTHORIZED, reason="token unknown, expired or revoked")
            return
        # The token's (or team's) allowed networks: refused, audited and alerted in one database call.
        address = (self.scope.get("client") or (None, None))[0]
        refusal = await database_sync_to_async(token_network_refused)(token=self.token, address=address)
        if refusal is not None:
            await self._send(protocol.Error(code="network_refused", message=refusal))
            await self.close(code=protocol.CLOSE_NETWORK_REFUSED, reason="outside the allowed networks")
            self.token = None  # nothing more from this socket is acted on
            return
        try:
            await self.channel_layer.group_add(realtime.bridge_group(self.token.pk), self.channel_name)
        except Exception as exc:  # Redis down: no decision could reach this bridge; it must not wait on us
            log.error("bridge refused: the channel layer is unreachable: %s: %s", type(exc).__name__, exc)
            await self._send(protocol.Error(code="unavailable", message=UNAVAILABLE))
            await self.close(code=CLOSE_UNAVAILABLE, reason="channel layer unavailable")
            # Stop now: this consumer's read from the dead channel layer would only fail again, noisily.
            raise StopConsumer() from None
        # This connection's log lines name the team and the token's owner (approvals/logging.py).
        log_bind(team=self.token.team.slug, user=self.token.user.get_username())
        metrics.socket_opened("bridge")
        self.counted = True
        client = self.scope.get("client") or (None, None)
        await database_sync_to_async(token_touch)(token=self.token, address=client[0])

    async def disconnect(self, code: int) -> None:
        if getattr(self, "counted", False):  # first: a failing group_discard must not leave it counted
            self.counted = False
            metrics.socket_closed("bridge")
        await self._results_recorded()  # the bridge sent them: they are recorded though it left
        if self.token is not None:
            await self._detach_followed()
            await self.channel_layer.group_discard(realtime.bridge_group(self.token.pk), self.channel_name)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs ``close_old_connections`` before every handler, as a hop of its own through the
        # process's one database thread: one more hand-off per frame, queued behind every other socket's
        # queries. Every handler here reaches the database only through ``database_sync_to_async``, which
        # closes old connections itself, before and after.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.token is None or self.gate.closed:
            return
        log_bind(request_id=new_request_id(), call_id=None)  # each message is a request of its own
        frame = text_data if text_data is not None else bytes_data or b""
        refusal = self.gate.check(frame)
        if refusal is not None:
            # With the ref, the bridge fails that one request (a call is denied) now; nothing was stored.
            ref = security.ref_of_refused(frame)
            await self._send(protocol.Error(code=refusal.code, message=refusal.message, ref=ref))
            if refusal.close:
                await self.close(code=security.CLOSE_TOO_MANY_MESSAGES, reason="too many messages")
            return
        try:
            message = protocol.parse_bridge_message(frame)
        except protocol.ProtocolError as exc:
            await self._send(protocol.Error(code=exc.code, message=exc.message, ref=exc.ref))
            return
        log_bind(call_id=getattr(message, "call_id", None))
        if self.upstream is None and not isinstance(message, protocol.Hello):
            await self._send(
                protocol.Error(
                    code="hello_required",
                    message="send hello before anything else",
                    ref=getattr(message, "ref", None),
                )
            )
            return
        if isinstance(message, protocol.Result):
            self._record_soon(message)
            return
        if not isinstance(message, protocol.Call):
            await self._results_recorded()  # every frame but a new call keeps its place after the results
        await self._serve(message)

    async def _serve(self, message: Any) -> None:
        """Handle one frame; what the services refuse, or a database that is down, is answered in words."""
        try:
            await self._dispatch(message)
        except call_services.CallNotFound as exc:
            await self._send(
                protocol.Error(
                    code="unknown_call",
                    message=f"no call {exc} for this token",
                    ref=getattr(message, "ref", None),
                )
            )
        except call_services.CallAlreadyDecided as exc:
            await self._send(realtime.decision_for(exc.call, ref=getattr(message, "ref", None)))
        except call_services.TokenUnusable:
            await self.bridge_revoked({"reason": "the token is no longer valid"})
        except (OperationalError, InterfaceError) as exc:
            # The database is down: this request fails (a call is denied by the bridge, not run); the
            # socket stays, so held calls are still followed once the database is back.
            log.error("bridge %s not served: the database is unreachable: %s", message.type, exc)
            await self._send(
                protocol.Error(code="unavailable", message=DATABASE_DOWN, ref=getattr(message, "ref", None))
            )
            if isinstance(message, protocol.Hello):  # not welcomed: the bridge reconnects with backoff
                self.upstream = None
                await self.close(code=CLOSE_UNAVAILABLE, reason="database unavailable")

    async def _dispatch(self, message: Any) -> None:
        assert self.token is not None
        token = self.token
        if isinstance(message, protocol.Hello):
            await self._hello(message)
        elif isinstance(message, protocol.Tools):
            self.tools = {tool.name: tool for tool in message.tools}
            self.tools_known = True
            await self._pin_tools()
            await self._inventory()
        elif isinstance(message, protocol.UpstreamReport):
            self.report = message
            self.tools_known = True  # sent after initialize, and after the tools
            await self._inventory()
            await self._tell_if_unapproved()
        elif isinstance(message, protocol.Call):
            assert self.upstream is not None
            tool_hash, input_schema, annotations = self._called(message)
            submitted = await database_sync_to_async(call_services.call_submit)(
                token=token,
                server=self.upstream.name,
                tool=message.tool,
                arguments=message.arguments,
                tool_hash=tool_hash,
                input_schema=input_schema,
                annotations=annotations,
                timeout=message.timeout,
            )
            log_bind(call_id=submitted.call.pk)
            await self._send(realtime.decision_for(submitted.call, run=submitted.run, ref=message.ref))
            await self._follow([submitted.call])
        elif isinstance(message, protocol.Claim):
            self.following.discard(message.call_id)
            call, run = await database_sync_to_async(call_services.call_claim)(
                token=token, call_id=message.call_id
            )
            await self._send(realtime.decision_for(call, run=run, ref=message.ref))
        elif isinstance(message, protocol.Result):
            self.following.discard(message.call_id)  # a held result's review ends with the report
            call = await database_sync_to_async(call_services.call_report_result)(
                token=token,
                call_id=message.call_id,
                is_error=message.is_error,
                summary=message.summary,
                duration_ms=message.duration_ms,
                findings=[finding.model_dump() for finding in message.findings],
                action=message.action,
            )
            await self._send(realtime.decision_for(call, ref=message.ref))
        elif isinstance(message, protocol.ResultHold):
            try:
                call = await database_sync_to_async(result_services.result_hold)(token=token, hold=message)
            except result_services.ResultNotHeld as exc:
                call = exc.call  # its state says why (denied, finished, decided): the bridge blocks
            await self._send(realtime.decision_for(call, ref=message.ref))
            await self._follow([call])
        elif isinstance(message, protocol.Withdraw):
            self.following.discard(message.call_id)
            call = await database_sync_to_async(call_services.call_withdraw)(
                token=token, call_id=message.call_id, reason=message.reason
            )
            await self._send(realtime.decision_for(call, ref=message.ref))
        elif isinstance(message, protocol.Status):
            calls = await database_sync_to_async(call_services.call_states_for_bridge)(
                token=token, call_ids=message.call_ids
            )
            for call in calls:
                await self._send(realtime.decision_for(call))
            await self._follow(calls)  # a reconnected bridge asks after the calls it still waits on

    async def _follow(self, calls: list[ToolCall]) -> None:
        """This connection waits on these calls: the undecided ones, and those whose result it holds for a
        reviewer, are detached if it closes, and one detached from an earlier connection of the token is
        followed again (services/presence.py)."""
        waited_on = [call for call in calls if is_followed(call)]
        self.following.update(str(call.pk) for call in waited_on)
        detached = [str(call.pk) for call in waited_on if call.detached_until is not None]
        if detached and self.token is not None:
            await database_sync_to_async(calls_follow)(token_id=self.token.pk, call_ids=detached)

    async def _detach_followed(self) -> None:
        """The bridge left without a word about its undecided calls and held results: they are ended after a
        grace unless a bridge of the token follows them again. With the database down they are left to their
        deadline."""
        assert self.token is not None
        if not self.following:
            return
        try:
            await database_sync_to_async(calls_detach)(token_id=self.token.pk, call_ids=list(self.following))
        except (OperationalError, InterfaceError) as exc:
            log.error("held calls of a closed bridge not detached: the database is unreachable: %s", exc)
        self.following.clear()

    def _record_soon(self, result: protocol.Result) -> None:
        """Record a result report a moment later, after the frames that follow it at once.

        The bridge reports as its client gets the answer, and the client's next call tends to arrive within a
        millisecond; a process's database work runs on one thread, one piece after another, so that call's
        decision would wait behind the report (docs/performance.md). No report is dropped or reordered with
        another: any frame but a new call, and the socket closing, first waits for the reports before it.
        """
        self.results.append(result)
        if self.recording is None:
            self.record_now.clear()
            self.recording = asyncio.create_task(self._record_results())

    async def _record_results(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.record_now.wait(), RESULT_DELAY_SECONDS)
        try:
            while self.results:
                await self._serve(self.results.pop(0))
        except Exception:  # as an error in a handler does: logged, and the bridge reconnects
            log.exception("bridge result report failed")
            await self.close(code=CLOSE_UNAVAILABLE, reason="result report failed")
        finally:
            self.recording = None

    async def _results_recorded(self) -> None:
        """Wait until the reports received so far are recorded (at once, not after their delay)."""
        if self.recording is not None:
            self.record_now.set()
            await self.recording

    def _called(self, call: protocol.Call) -> tuple[str | None, dict[str, Any] | None, dict[str, Any] | None]:
        """The hash, input schema and annotations of what a call names; no hash when there is no such tool.

        A resource read or prompt is decided as its pseudo-tool; an upstream tool may not borrow their names.
        """
        gated = protocol.GATED_REQUESTS.get(call.kind)
        if gated is not None and call.tool == gated.name:
            return gated.hash, gated.input_schema, gated.annotations
        tool = self.tools.get(call.tool) if gated is None else None
        if tool is None or protocol.reserved_name(tool.name):
            return None, None, None
        return tool.hash, tool.input_schema, tool.annotations

    async def _hello(self, hello: protocol.Hello) -> None:
        assert self.token is not None
        if hello.protocol != protocol.PROTOCOL_VERSION:
            await self._send(
                protocol.Error(
                    code="unsupported_protocol",
                    message=f"this server speaks protocol {protocol.PROTOCOL_VERSION}, the bridge "
                    f"{hello.protocol}: upgrade mcpbridge or the server",
                )
            )
            await self.close(code=protocol.CLOSE_PROTOCOL, reason="unsupported protocol version")
            return
        if not server_in_scope(self.token.servers, hello.upstream.name):
            # Refused before anything of the upstream is stored (no tool pins): the bridge fails closed.
            message = await database_sync_to_async(token_scope_refused)(
                token=self.token, server=hello.upstream.name
            )
            log.warning("bridge refused: token %s… may not front %r", self.token.prefix, hello.upstream.name)
            await self._send(protocol.Error(code="server_out_of_scope", message=message))
            await self.close(code=protocol.CLOSE_OUT_OF_SCOPE, reason="server out of the token's scope")
            return
        self.upstream = hello.upstream
        self.tools = {tool.name: tool for tool in hello.tools}
        await self._pin_tools()
        self.tools_known = bool(hello.upstream.server_name or hello.tools)
        team = self.token.team
        await self._send(
            protocol.Welcome(
                protocol=protocol.PROTOCOL_VERSION,
                team=team.slug,
                user=self.token.user.get_username(),
                token_name=self.token.name,
                default_deadline_seconds=team.default_deadline_seconds,
            )
        )
        await self._inventory()  # after the welcome: bookkeeping need not delay the bridge
        log.info(
            "bridge connected: token %s… server %s (%d tools)",
            self.token.prefix,
            hello.upstream.name,
            len(hello.tools),
        )

    async def _pin_tools(self) -> None:
        assert self.token is not None and self.upstream is not None
        await database_sync_to_async(tools_seen)(
            team=self.token.team, server=self.upstream.name, tools=list(self.tools.values())
        )

    async def _inventory(self) -> None:
        """Record the upstream in the team's inventory. Bookkeeping: a failure here is logged, and
        never costs the bridge its connection or a call its answer."""
        assert self.token is not None and self.upstream is not None
        info = sighting_of(
            upstream=self.upstream,
            report=self.report,
            tools=list(self.tools.values()) if self.tools_known else None,
        )
        try:
            await database_sync_to_async(upstream_seen)(token=self.token, info=info)
        except Exception:
            log.exception("could not record upstream %r in the inventory", self.upstream.name)

    async def _tell_if_unapproved(self) -> None:
        """In a team that requires reviewed servers, tell the bridge at once that its server is not
        approved (the bridge logs it; each call is denied with the same words by ``call_submit``). Once
        the server is recorded with its command line, so that the review it needs can be done."""
        assert self.token is not None and self.upstream is not None
        refusal = await database_sync_to_async(unapproved_server_refusal)(
            token=self.token, server=self.upstream.name
        )
        if refusal is not None:
            log.warning("bridge told: server %r is not approved in its team", self.upstream.name)
            await self._send(protocol.Error(code="server_not_approved", message=refusal))

    async def _send(self, message: protocol.Message) -> None:
        await self.send(text_data=protocol.encode(message))

    # --- channel layer events -----------------------------------------------------------------------
    async def bridge_decision(self, event: dict[str, Any]) -> None:
        decision = protocol.Decision(**event["decision"])
        if decision.state not in ("pending", "allowed"):  # over: denied, expired, cancelled
            self.following.discard(decision.call_id)
        await self._send(decision)

    async def bridge_revoked(self, event: dict[str, Any]) -> None:
        await self._send(
            protocol.Error(code="revoked", message=f"Signoff closed this bridge: {event['reason']}")
        )
        await self.close(code=protocol.CLOSE_REVOKED, reason="token revoked")


class ReviewConsumer(AsyncWebsocketConsumer):
    """A reviewer's open queue page for one team (``?team=<slug>``)."""

    team: Team | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        self.gate = security.FrameGate(security.reviewer_limits(), close_oversized=True)
        slug = parse_qs(self.scope.get("query_string", b"").decode()).get("team", [""])[0]
        self.team = await database_sync_to_async(self._team_if_reviewer)(user, slug)
        await self.accept()
        if self.team is None:
            await self.send_json({"type": "error", "message": "You may not review this team's calls."})
            await self.close(code=4403)
            return
        await self.channel_layer.group_add(realtime.review_group(self.team.pk), self.channel_name)
        await self.channel_layer.group_add(realtime.user_group(user.pk), self.channel_name)
        log_bind(team=self.team.slug, user=user.get_username())
        metrics.socket_opened("reviewer")
        self.counted = True
        snapshot = await database_sync_to_async(self._snapshot)()
        await self.send_json({"type": "snapshot", "calls": snapshot})

    @staticmethod
    def _team_if_reviewer(user: Any, slug: str) -> Team | None:
        team = Team.objects.filter(slug=slug).first()
        if team is None or user is None or not access.can_review(user, team):
            return None
        return team

    def _snapshot(self) -> list[dict[str, Any]]:
        assert self.team is not None
        return [realtime.call_payload(call) for call in selectors.queue_for(team=self.team)]

    async def disconnect(self, code: int) -> None:
        if getattr(self, "counted", False):  # first: a failing group_discard must not leave it counted
            self.counted = False
            metrics.socket_closed("reviewer")
        if self.team is not None:
            await self.channel_layer.group_discard(realtime.review_group(self.team.pk), self.channel_name)
            await self.channel_layer.group_discard(
                realtime.user_group(self.scope["user"].pk), self.channel_name
            )

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.team is None or self.gate.closed:
            return
        log_bind(request_id=new_request_id(), call_id=None)  # each message is a request of its own
        refusal = self.gate.check(text_data if text_data is not None else bytes_data or b"")
        if refusal is not None:
            await self.send_json({"type": "error", "code": refusal.code, "message": refusal.message})
            if refusal.close:
                too_large = refusal.code == "frame_too_large"
                await self.close(
                    code=security.CLOSE_FRAME_TOO_LARGE if too_large else security.CLOSE_TOO_MANY_MESSAGES
                )
            return
        raw = text_data if text_data is not None else (bytes_data or b"").decode(errors="replace")
        try:
            message = json.loads(raw)
        except ValueError:
            await self.send_json({"type": "error", "message": "message is not JSON"})
            return
        if isinstance(message, dict) and message.get("type") == "accept_tool":
            await self._accept_tool(str(message.get("call_id", "")))
            return
        if isinstance(message, dict) and message.get("type") == "sync":
            # The page asks again now and then: an update the channel layer dropped is not missed for long.
            await self.send_json(
                {"type": "snapshot", "calls": await database_sync_to_async(self._snapshot)()}
            )
            return
        if isinstance(message, dict) and message.get("type") == "decide_result":
            await self._decide_result(message)
            return
        if not isinstance(message, dict) or message.get("type") != "decide":
            await self.send_json({"type": "error", "message": "unknown message type"})
            return
        call_id = str(message.get("call_id", ""))
        log_bind(call_id=call_id)
        decision = message.get("decision")
        if decision not in {"allow", "deny", "always_allow"}:
            await self.send_json(
                {
                    "type": "error",
                    "call_id": call_id,
                    "message": "decision must be allow, deny or always_allow",
                }
            )
            return
        reason = message.get("reason") if isinstance(message.get("reason"), str) else ""
        scope = message.get("scope", "tool")
        constraints = message.get("constraints")
        if scope not in scopes.SCOPES or not (constraints is None or isinstance(constraints, list)):
            await self.send_json(
                {"type": "error", "call_id": call_id, "message": "scope must be exact, constraints or tool"}
            )
            return
        try:
            call = await database_sync_to_async(call_services.call_decide)(
                call_id=call_id,
                reviewer=self.scope["user"],
                allow=decision != "deny",
                always_allow=decision == "always_allow",
                reason=reason,
                scope=scope,
                constraints=constraints,
            )
        except (
            call_services.InvalidRule,
            call_services.CallNotFound,
            call_services.CallAlreadyDecided,
            PermissionDenied,
        ) as exc:
            await self.send_json(self._refused(call_id, exc))
            return
        await self.send_json({"type": "decided", "call_id": call_id, "state": call.state})

    async def _decide_result(self, message: dict[str, Any]) -> None:
        """A decision on a held result: release, mask or block."""
        call_id = str(message.get("call_id", ""))
        log_bind(call_id=call_id)
        reason = message.get("reason") if isinstance(message.get("reason"), str) else ""
        try:
            call = await database_sync_to_async(result_services.result_decide)(
                call_id=call_id,
                reviewer=self.scope["user"],
                decision=str(message.get("decision", "")),
                reason=reason,
            )
        except (
            ValueError,
            call_services.CallNotFound,
            result_services.ResultNotHeld,
            PermissionDenied,
        ) as exc:
            await self.send_json(self._refused(call_id, exc))
            return
        await self.send_json({"type": "decided", "call_id": call_id, "result_review": call.result_review})

    @staticmethod
    def _refused(call_id: str, exc: Exception) -> dict[str, Any]:
        """The page's error frame for a decision the services refused."""
        error: dict[str, Any] = {"type": "error", "call_id": call_id, "message": str(exc)}
        if isinstance(exc, access.FourEyesRefused):
            error.update(code="four_eyes", message=str(exc.args[0]))
        elif isinstance(exc, call_services.CallNotFound | PermissionDenied):
            error["message"] = "no such call in your team"
        elif isinstance(exc, call_services.CallAlreadyDecided):
            error["message"] = f"already decided: {exc.call.state}"
        elif isinstance(exc, result_services.ResultNotHeld):
            error["message"] = f"already decided: {exc.call.result_review or 'not held'}"
        return error

    async def _accept_tool(self, call_id: str) -> None:
        try:
            accepted = await database_sync_to_async(call_services.call_tool_definition_accept)(
                call_id=call_id, reviewer=self.scope["user"]
            )
        except (call_services.CallNotFound, PermissionDenied) as exc:
            await self.send_json(self._refused(call_id, exc))
            return
        await self.send_json({"type": "tool_accepted", "call_id": call_id, "accepted": accepted})

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content))

    # --- channel layer events -----------------------------------------------------------------------
    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs ``close_old_connections`` before every handler, on the process's one database
        # thread: for a queue update that touches no database that is a hop per page through the thread every
        # socket's queries wait for (100 pages, 100 hops per update). Handlers that do query use
        # ``database_sync_to_async``, which closes old connections itself.
        if message["type"] == "call.update":
            await self.call_update(message)
            return
        await super().dispatch(message)

    async def call_update(self, event: dict[str, Any]) -> None:
        # Rendered once for the whole team (``realtime.call_changed``): every page of it is shown the same.
        await self.send(text_data=event["text"])

    async def review_alerts(self, event: dict[str, Any]) -> None:
        # Sent to the team's admins only (services/alerts.py); a page of another of their teams ignores it.
        if self.team is not None and event.get("team") == self.team.pk:
            await self.send_json({"type": "alerts", "open": event["open"]})

    async def review_closed(self, event: dict[str, Any]) -> None:
        if event.get("team") not in (None, self.team.pk if self.team else None):
            return  # about another team of this user
        await self.send_json({"type": "error", "message": f"Access ended: {event.get('reason', 'revoked')}."})
        await self.close(code=4403)

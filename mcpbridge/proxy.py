"""The MCP side of the bridge: a server to the client, a client to the upstream, and the gate between.

Everything MCP offers is forwarded as is, except ``tools/call``, which is held until Signoff answers.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import anyio
import anyio.abc
import mcp.types as types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server import Server, ServerRequestContext
from mcp.server.lowlevel import NotificationOptions
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from mcpbridge import __version__, describe, inspection, protocol
from mcpbridge.link import WITHDRAW_SECONDS, LinkError, SignoffLink

log = logging.getLogger("mcpbridge")

# Variables the bridge never hands to the upstream: they are Signoff's, not the upstream's.
PRIVATE_ENV = ("SIGNOFF_TOKEN", "SIGNOFF_TOKEN_FILE")
PROGRESS_EVERY = 5.0
SERVER_EXPIRY_GRACE = 5.0
"""Seconds past the server's deadline the bridge waits for the server's own "expired" before giving up."""
HELD_KEEP_SECONDS = 600.0
"""How long a reviewed result waits in the bridge for a client that gave up waiting to repeat the call."""
REPORT_FLUSH_SECONDS = 3.0
"""On exit, how long the bridge waits for results it still has to report to Signoff."""
SUMMARY_LENGTH = 500
CLIENT_CANCELLED = "cancelled by the MCP client"
"""The reason of a held call withdrawn because its client gave up on it (or went away)."""
REFUSED = -32001
"""JSON-RPC error code of a resource read or prompt that Signoff did not allow (a tool call gets a result)."""
UPSTREAM_FAILED = -32002
"""JSON-RPC error code of an allowed resource read or prompt that the upstream failed."""


@dataclass(frozen=True)
class BridgeConfig:
    """What the command line and the environment said."""

    name: str
    signoff_url: str
    token: str
    upstream_command: list[str]
    upstream_url: str | None = None
    timeout: float | None = None
    """The bridge's own deadline for a held call (the server's team deadline applies too)."""
    client_timeout: float = 50.0
    """Answer a held call before the MCP client gives up (Claude Desktop: 60 s)."""
    connect_timeout: float = 5.0
    """How long a call waits for a connection to Signoff before it is denied."""
    reconnect_grace: float = 10.0
    """How long a held call survives a lost connection, waiting for it to come back."""
    poll_interval: float = 15.0
    """How often the state of long-waiting calls is asked for (the channel layer may drop a message)."""


@dataclass
class HeldResult:
    """A result held for review in Signoff. A client that gave up waiting repeats the same call and
    re-attaches here: the call is not run again."""

    call_id: str
    done: anyio.Event = field(default_factory=anyio.Event)
    answer: Any = None
    """Once reviewed: what the client gets, the result or the text saying why it was blocked."""
    deadline: str | None = None


class Upstream(ClientSession):
    """The session to the real server. A relay does not validate results: the real client does."""

    async def validate_tool_result(self, name: str, result: types.CallToolResult) -> None:
        return None


def tool_error(text: str) -> types.CallToolResult:
    """A tool result that tells the model (and the person) the call did not run, and why."""
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def _without_progress(params: Any) -> Any:
    """Drop the caller's progress token: the upstream's progress is re-keyed per request."""
    if params is None:
        return None
    meta = {k: v for k, v in (params.meta or {}).items() if k != "progress_token"}
    return params.model_copy(update={"meta": meta or None})


def _summary(result: types.CallToolResult) -> str:
    parts = []
    for item in result.content:
        if isinstance(item, types.TextContent):
            parts.append(item.text)
        else:
            parts.append(f"[{item.type}]")
    return _cut(" ".join(parts).strip())


def _request_summary(result: types.ReadResourceResult | types.GetPromptResult) -> str:
    """The audit's summary of a resource read or prompt: its text, as a tool result's."""
    parts: list[str] = []
    if isinstance(result, types.ReadResourceResult):
        for item in result.contents:
            parts.append(item.text if isinstance(item, types.TextResourceContents) else f"[blob {item.uri}]")
    else:
        for message in result.messages:
            content = message.content
            parts.append(content.text if isinstance(content, types.TextContent) else f"[{content.type}]")
    return _cut(" ".join(parts).strip())


def _request_texts(result: types.ReadResourceResult | types.GetPromptResult) -> list[tuple[str, str]]:
    """The texts of a resource read or prompt a model would read, with their JSON pointers."""
    if isinstance(result, types.ReadResourceResult):
        return [
            (f"/contents/{index}/text", item.text)
            for index, item in enumerate(result.contents)
            if isinstance(item, types.TextResourceContents)
        ]
    return [
        (f"/messages/{index}/content/text", message.content.text)
        for index, message in enumerate(result.messages)
        if isinstance(message.content, types.TextContent)
    ]


_KIND_ORDER = {"instruction": 0, "hidden_text": 1, "secret": 2, "pii": 3}
_Result = TypeVar("_Result", bound=types.CallToolResult | types.ReadResourceResult | types.GetPromptResult)
"""What an allowed call returns: a tool's result, a resource read's or a prompt's."""


def _acts(policy: Mapping[protocol.FindingKind, protocol.PolicyAction]) -> bool:
    """Whether the policy does anything but pass: then the result is inspected before the client gets it."""
    return any(action != "pass" for action in policy.values())


def _outcome(
    findings: list[inspection.Finding], policy: Mapping[protocol.FindingKind, protocol.PolicyAction]
) -> tuple[protocol.PolicyAction | None, list[inspection.Finding]]:
    """What the policy does with a result's findings: ``block`` if any finding's kind blocks, else ``hold``
    (for a reviewer) if any holds, else ``mask`` (with the findings to mask) if any masks, else ``pass``;
    None when nothing was found."""
    if not findings:
        return None, []
    actions: list[protocol.PolicyAction] = [policy.get(finding.kind, "pass") for finding in findings]
    if "block" in actions:
        return "block", []
    if "hold" in actions:
        return "hold", []
    to_mask = [finding for finding, action in zip(findings, actions, strict=True) if action == "mask"]
    return ("mask" if to_mask else "pass"), to_mask


def _held_key(kind: str, tool: str, arguments: dict[str, Any]) -> str:
    """Which call a held result belongs to, as the client would repeat it."""
    return f"{kind}:{tool}:{protocol.arguments_hash(arguments)}"


def _held_texts(result: Any) -> tuple[list[protocol.HeldText], bool]:
    """The texts of a result a reviewer reads, with their JSON pointers (as findings name them), cut to
    what a frame carries; and whether anything was cut."""
    if isinstance(result, types.CallToolResult):
        strings = inspection.result_strings(result)
    else:
        strings = _request_texts(result)
    texts: list[protocol.HeldText] = []
    budget = protocol.MAX_HELD_BYTES
    truncated = False
    for path, text in strings:
        if len(texts) == protocol.MAX_HELD_TEXTS or budget <= 0:
            truncated = True
            break
        encoded = text.encode("utf-8", "surrogatepass")
        if len(encoded) > budget:
            text = encoded[:budget].decode("utf-8", "ignore")
            truncated = True
        budget -= len(text.encode("utf-8", "surrogatepass"))
        texts.append(protocol.HeldText(path=path[: protocol.MAX_FINDING_PATH_LENGTH], text=text))
    return texts, truncated


def _is_error(result: Any) -> bool:
    return bool(result.is_error) if isinstance(result, types.CallToolResult) else False


def _summary_of(result: Any) -> str:
    return _summary(result) if isinstance(result, types.CallToolResult) else _request_summary(result)


def _labels(findings: list[inspection.Finding]) -> str:
    kinds = sorted({finding.kind for finding in findings}, key=lambda kind: _KIND_ORDER.get(kind, 9))
    return ", ".join(inspection.MASK_LABELS.get(kind, kind) for kind in kinds)


def _blocked(call_id: str, findings: list[inspection.Finding]) -> str:
    detectors = ", ".join(sorted({finding.detector for finding in findings}))
    return (
        f"Signoff blocked this result: it held {_labels(findings)} ({detectors}). The call ran, but its "
        f"result was withheld from the model; a person can read what was found in Signoff (call {call_id})."
    )


def _masked_note(findings: list[inspection.Finding], masked: int) -> str:
    return (
        f"[Signoff masked {masked} part{'s' if masked != 1 else ''} of this result: {_labels(findings)}. "
        "The rest is as the tool returned it.]"
    )


def _as_json(result: Any) -> Any:
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


def _reported_findings(findings: list[inspection.Finding]) -> list[protocol.ResultFinding]:
    """What Signoff is told: the findings that matter most first, as many as a frame carries."""
    ordered = sorted(findings, key=lambda finding: _KIND_ORDER.get(finding.kind, 9))
    return [
        protocol.ResultFinding(
            kind=finding.kind,
            detector=finding.detector[:64],
            path=finding.path[: protocol.MAX_FINDING_PATH_LENGTH],
            excerpt=finding.excerpt[: protocol.MAX_EXCERPT_LENGTH],
            start=finding.start,
            end=finding.end,
        )
        for finding in ordered[: protocol.MAX_RESULT_FINDINGS]
    ]


def _cut(text: str) -> str:
    return text[:SUMMARY_LENGTH] + ("…" if len(text) > SUMMARY_LENGTH else "")


def _tool_info(tool: types.Tool) -> protocol.ToolInfo:
    """What Signoff is told of a tool: a hash of the whole definition, and what reviewers and guards use."""
    definition = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
    annotations = (
        tool.annotations.model_dump(mode="json", by_alias=True, exclude_none=True) if tool.annotations else {}
    )
    schema = definition.get("inputSchema")
    if schema is not None and len(protocol.canonical_json(schema).encode()) > protocol.MAX_SCHEMA_BYTES:
        schema = None
    description = tool.description[: protocol.MAX_DESCRIPTION_LENGTH] if tool.description else None
    return protocol.ToolInfo(
        name=tool.name[: protocol.MAX_NAME_LENGTH],
        hash=protocol.tool_hash(definition),
        title=(tool.title or None),
        annotations=annotations,
        description=description,
        input_schema=schema,
    )


def _fit(tools: list[protocol.ToolInfo], envelope: int = 4096) -> list[protocol.ToolInfo]:
    """The tools as one frame can carry them: without descriptions and schemas if they do not fit."""
    tools = tools[: protocol.MAX_TOOLS]
    size = sum(len(tool.model_dump_json()) for tool in tools) + envelope
    if size <= protocol.MAX_FRAME_BYTES:
        return tools
    log.warning("the upstream's tool definitions are too large to send whole: schemas are left out")
    return [tool.model_copy(update={"description": None, "input_schema": None}) for tool in tools]


def _seconds_until(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return (datetime.fromisoformat(iso) - datetime.now(UTC)).total_seconds()
    except ValueError:
        return None


def _minutes(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class Bridge:
    """One upstream, one Signoff link, one client."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.upstream: Upstream | None = None
        self.init: types.InitializeResult | None = None
        self.tools: dict[str, protocol.ToolInfo] = {}
        self.downstream: Any = None
        self.upstream_gone: str | None = None
        self._background: anyio.abc.TaskGroup | None = None
        self._reporting: set[str] = set()
        self._client_gone = False
        """The client closed stdin: the upstream's stream ending after that is the bridge closing it."""
        self._told_tools: dict[str, protocol.ToolInfo] = {}
        """The tools the current connection was last told (in its hello or a ``tools`` frame)."""
        self._held: dict[str, HeldResult] = {}
        """Results held for review, by the call that produced them (``_held_key``)."""
        self._reported_to: object = None
        """The ``welcome`` of the connection that already has the upstream report (one per connection)."""
        self.link = SignoffLink(url=config.signoff_url, token=config.token, hello=self._hello)

    # --- what Signoff is told ------------------------------------------------------------------------
    def _hello(self) -> protocol.Hello:
        info = self.init.server_info if self.init else None
        # Called on every (re)connect: once welcomed, the new connection gets the inventory report, and the
        # tools again if they were read while the hello waited for its welcome (no frame can go then).
        self._told_tools = dict(self.tools)
        if self._background is not None:
            self._background.start_soon(self.announce)
        return protocol.Hello(
            protocol=protocol.PROTOCOL_VERSION,
            bridge_version=__version__,
            upstream=protocol.UpstreamInfo(
                name=self.config.name,
                transport="http" if self.config.upstream_url else "stdio",
                server_name=(info.name if info else "")[: protocol.MAX_NAME_LENGTH],
                server_version=(info.version if info else "")[: protocol.MAX_NAME_LENGTH],
            ),
            tools=_fit(list(self.tools.values())),
        )

    def upstream_report(self) -> protocol.UpstreamReport:
        """What the upstream is, for the team's inventory: its command line or URL with the secrets
        masked, the names (never the values) of the environment it gets, and its ``initialize`` answer."""
        assert self.init is not None
        info = self.init.server_info
        caps = self.init.capabilities.model_dump(mode="json", by_alias=True, exclude_none=True)
        size = len(protocol.canonical_json(caps).encode())
        if self.config.upstream_url:
            where: dict[str, Any] = {"url": describe.mask_url(self.config.upstream_url)}
        else:
            where = {
                "command": describe.mask_command(self.config.upstream_command),
                "env_names": describe.env_names(_upstream_env()),
            }
        return protocol.UpstreamReport(
            transport="http" if self.config.upstream_url else "stdio",
            server_name=info.name[: protocol.MAX_NAME_LENGTH],
            server_version=info.version[: protocol.MAX_NAME_LENGTH],
            protocol_version=str(self.init.protocol_version)[:40],
            capabilities=describe.capabilities(caps, size),
            **where,
        )

    async def announce(self) -> None:
        """Bring this connection up to date once Signoff has welcomed us: the tools, if they changed since
        the hello was written, and the inventory report once the upstream is initialised. Runs after each
        hello and after the upstream's tools are first read; whichever finds a step due does it."""
        try:
            await self.link.wait_connected(self.link.answer_timeout + 5)
        except LinkError:
            return  # the next connection's hello starts another announce
        if self.tools != self._told_tools:
            await self._tell_tools()
        welcome = self.link.welcome
        if self.init is None or welcome is None or welcome is self._reported_to:
            return
        self._reported_to = welcome
        await self.link.send(self.upstream_report())

    async def _tell_tools(self) -> None:
        """Send the current tools; remembered as told only if a connection took the frame."""
        tools = dict(self.tools)
        if await self.link.send(protocol.Tools(tools=_fit(list(tools.values())))):
            self._told_tools = tools

    async def refresh_tools(self) -> None:
        """Read every page of the upstream's tools and tell Signoff if they changed."""
        assert self.upstream is not None
        if not (self.init and self.init.capabilities.tools):
            return
        tools: dict[str, protocol.ToolInfo] = {}
        cursor: str | None = None
        while True:
            page = await self.upstream.list_tools(
                params=types.PaginatedRequestParams(cursor=cursor) if cursor else None
            )
            for tool in page.tools:
                tools[tool.name] = _tool_info(tool)
            cursor = page.next_cursor
            if not cursor:
                break
        if tools != self.tools:
            self.tools = tools
            await self._tell_tools()

    # --- the gate ----------------------------------------------------------------------------------
    async def call_tool(
        self, ctx: ServerRequestContext, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        """Hold the call until Signoff allows it; run it upstream exactly once; otherwise explain."""
        asked = ("tool", params.name, params.arguments or {})
        key = _held_key(*asked) if self._held else ""  # hashed only while some result is held
        held = self._held.get(key) if key else None
        if held is not None:  # the client repeats a call whose result waits for review: not run again
            answer = await self._await_held(ctx, key, held)
            return tool_error(answer) if isinstance(answer, str) else answer
        decision = await self._gate(ctx, kind="tool", tool=params.name, arguments=params.arguments or {})
        if isinstance(decision, str):
            return tool_error(decision)
        assert self.upstream is not None

        async def relay_progress(progress: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(progress, total, message)

        started = time.monotonic()
        try:
            result = await self.upstream.call_tool(
                params.name,
                params.arguments,
                progress_callback=relay_progress,
                meta=_without_progress(params).meta,
            )
        except Exception as exc:  # the upstream died or broke the protocol: say so, audit it
            reason = self.upstream_gone or f"the upstream MCP server failed: {exc}"
            result = tool_error(f"The call was allowed but failed: {reason}.")
            self._report_soon(decision.call_id, True, _summary(result), started, list)
            return result
        answer = await self._apply_result_policy(ctx, asked, decision, result, started)
        return tool_error(answer) if isinstance(answer, str) else answer

    async def read_resource(
        self, ctx: ServerRequestContext, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        """A resource read, gated like a tool call (``resources/read`` with its ``uri``)."""
        result = await self._gated_request(
            ctx, protocol.RESOURCE_READ, types.ReadResourceRequest(params=_without_progress(params)), params
        )
        assert isinstance(result, types.ReadResourceResult)
        return result

    async def get_prompt(
        self, ctx: ServerRequestContext, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        """A prompt, gated like a tool call (``prompts/get`` with its ``name`` and ``arguments``)."""
        result = await self._gated_request(
            ctx, protocol.PROMPT_GET, types.GetPromptRequest(params=_without_progress(params)), params
        )
        assert isinstance(result, types.GetPromptResult)
        return result

    async def _gated_request(
        self, ctx: ServerRequestContext, gated: protocol.GatedRequest, request: Any, params: Any
    ) -> types.ReadResourceResult | types.GetPromptResult:
        """Decide a non-tool request as its pseudo-tool, then forward it once. A refusal is a JSON-RPC
        error (these requests have no error result), whose message says why, as a tool's would."""
        arguments = gated.arguments_of(params.model_dump(mode="json", by_alias=True, exclude_none=True))
        asked = (gated.kind, gated.name, arguments)
        key = _held_key(*asked) if self._held else ""  # hashed only while some result is held
        held = self._held.get(key) if key else None
        if held is not None:  # the client repeats a request whose result waits for review
            reviewed = await self._await_held(ctx, key, held)
            if isinstance(reviewed, str):
                raise MCPError(REFUSED, reviewed)
            return cast("types.ReadResourceResult | types.GetPromptResult", reviewed)
        decision = await self._gate(ctx, kind=gated.kind, tool=gated.name, arguments=arguments)
        if isinstance(decision, str):
            raise MCPError(REFUSED, decision)
        assert self.upstream is not None
        result_type = types.ReadResourceResult if gated is protocol.RESOURCE_READ else types.GetPromptResult
        started = time.monotonic()
        try:
            result = cast(
                "types.ReadResourceResult | types.GetPromptResult",
                await self.upstream.send_request(request, result_type),
            )
        except Exception as exc:
            reason = self.upstream_gone or f"the upstream MCP server failed: {exc}"
            self._report_soon(decision.call_id, True, reason, started, list)
            raise MCPError(UPSTREAM_FAILED, f"The request was allowed but failed: {reason}.") from exc
        answer = await self._apply_result_policy(ctx, asked, decision, result, started)
        if isinstance(answer, str):
            raise MCPError(REFUSED, answer)
        return answer

    async def _apply_result_policy(
        self,
        ctx: ServerRequestContext,
        asked: tuple[str, str, dict[str, Any]],
        decision: protocol.Decision,
        result: _Result,
        started: float,
    ) -> _Result | str:
        """Inspect what an allowed call returned, apply the decision's result policy, and report both to
        Signoff (``_report_soon``). Returns what the client gets: the result, its findings masked where the
        policy masks (a tool's result then says so in a last text item), or, where it blocks, the text
        saying why, which the caller answers as an error result (a tool) or a JSON-RPC error (a resource
        read or prompt, which have no error result). Where it holds, a reviewer decides which first."""

        def inspect() -> list[inspection.Finding]:
            if isinstance(result, types.CallToolResult):
                return inspection.inspect_result(result)
            return inspection.inspect_strings(_request_texts(result))

        policy = decision.result_policy or {}
        if not _acts(policy):  # pass whatever is found: inspect after the client has its answer
            self._report_soon(decision.call_id, _is_error(result), _summary_of(result), started, inspect)
            return result
        findings = await anyio.to_thread.run_sync(inspect)
        action, to_mask = _outcome(findings, policy)
        if action == "hold":
            key = _held_key(*asked)
            held = HeldResult(decision.call_id)
            self._held[key] = held
            assert self._background is not None
            self._background.start_soon(self._review_held, key, held, result, findings, started)
            return await self._await_held(ctx, key, held)
        return self._act(decision.call_id, result, findings, action, to_mask, started)

    def _act(
        self,
        call_id: str,
        result: _Result,
        findings: list[inspection.Finding],
        action: protocol.PolicyAction | None,
        to_mask: list[inspection.Finding],
        started: float,
        *,
        blocked: str = "",
    ) -> _Result | str:
        """Apply one action to a result, report it, and return what the client gets (``blocked``: why,
        if not the policy)."""
        if action == "block":
            blocked = blocked or _blocked(call_id, findings)
            summary = _cut(blocked) if isinstance(result, types.CallToolResult) else "[blocked]"
            self._report_soon(call_id, True, summary, started, lambda: findings, "block")
            return blocked
        if action == "mask":
            document, masked = inspection.mask_findings(_as_json(result), to_mask)
            result = cast("_Result", type(result).model_validate(document))
            if isinstance(result, types.CallToolResult):
                result.content.append(types.TextContent(type="text", text=_masked_note(to_mask, masked)))
        reported: protocol.ResultAction | None = action if action in ("mask", "pass") else None
        self._report_soon(
            call_id, _is_error(result), _summary_of(result), started, lambda: findings, reported
        )
        return result

    # --- results held for review -------------------------------------------------------------------------
    async def _review_held(
        self,
        key: str,
        held: HeldResult,
        result: _Result,
        findings: list[inspection.Finding],
        started: float,
    ) -> None:
        """Hold the result in Signoff until a reviewer decides, then settle what the client gets: released
        as is, masked, or blocked (also when nobody decided in time or Signoff could not be asked: fail
        closed). Kept for ``HELD_KEEP_SECONDS`` for a client that repeats the call to collect it."""
        review = await self._result_review(held, result, findings)
        if review == "released":
            held.answer = self._act(held.call_id, result, findings, "pass", [], started)
        elif review == "masked":
            held.answer = self._act(held.call_id, result, findings, "mask", findings, started)
        else:
            why = {
                "blocked": "a reviewer blocked it after reading it",
                "expired": "nobody reviewed it before its deadline",
            }.get(review, review)
            text = (
                f"Signoff blocked this result: it was held for review, and {why}. The call ran, but its "
                "result was withheld from the model; a person can read what was found in Signoff "
                f"(call {held.call_id})."
            )
            held.answer = self._act(held.call_id, result, findings, "block", [], started, blocked=text)
        held.done.set()
        await anyio.sleep(HELD_KEEP_SECONDS)
        if self._held.get(key) is held:
            del self._held[key]

    async def _result_review(self, held: HeldResult, result: Any, findings: list[inspection.Finding]) -> str:
        """Send the held result to Signoff and wait for its review: ``released``, ``masked``, ``blocked``,
        ``expired``, or the text of why no review could be had (the result is then blocked)."""
        texts, truncated = _held_texts(result)
        hold = protocol.ResultHold(
            call_id=held.call_id, texts=texts, truncated=truncated, findings=_reported_findings(findings)
        )
        try:
            answer = await self.link.request(hold, connect_timeout=self.config.reconnect_grace)
        except LinkError as exc:
            return f"Signoff could not be asked ({exc})"
        if answer.result_review != "held":
            self.link.forget(held.call_id)
            return answer.result_review or f"Signoff did not hold it ({answer.reason or answer.state})"
        watch = self.link.watch(held.call_id)
        last_poll = time.monotonic()
        try:
            while watch.latest.result_review == "held":
                held.deadline = watch.latest.deadline
                now = time.monotonic()
                left = _seconds_until(watch.latest.deadline)
                if left is not None and left <= -SERVER_EXPIRY_GRACE:
                    return "expired"
                if self.link.fatal:
                    return f"the connection to Signoff ended ({self.link.fatal})"
                down = self.link.down_since
                if down is not None and now - down >= self.config.reconnect_grace:
                    return f"the connection to Signoff was lost while it waited ({self.link.last_error})"
                if now - last_poll >= (1.0 if left is not None and left <= 0 else self.config.poll_interval):
                    last_poll = now
                    await self.link.send(protocol.Status(call_ids=[held.call_id]))
                with anyio.move_on_after(1.0):
                    await watch.changed.wait()
            return watch.latest.result_review or "not held"
        finally:
            self.link.forget(held.call_id)

    async def _await_held(self, ctx: ServerRequestContext, key: str, held: HeldResult) -> Any:
        """Wait for a held result's review; answer the client before it times out (with the text saying
        how to collect it later). Once a client has the reviewed answer, the next repeat runs the call
        anew."""
        started = time.monotonic()
        client_limit = started + self.config.client_timeout
        last_progress = 0.0
        while not held.done.is_set():
            now = time.monotonic()
            if now >= client_limit:
                left = _seconds_until(held.deadline)
                blocked_in = (
                    f" It is blocked in {_minutes(left)} if nobody decides." if left is not None else ""
                )
                return (
                    f"This call ran, and its result is held for review in Signoff (call {held.call_id}): "
                    f"the model gets it only if a reviewer releases it.{blocked_in} To receive it, repeat "
                    "exactly the same call with the same arguments: it is not run again."
                )
            if now - last_progress >= PROGRESS_EVERY:
                last_progress = now
                await ctx.session.report_progress(
                    int(now - started), None, "result held for review in Signoff…"
                )
            with anyio.move_on_after(min(1.0, max(0.01, client_limit - now))):
                await held.done.wait()
        if self._held.get(key) is held:
            del self._held[key]
        return held.answer

    async def _gate(
        self, ctx: ServerRequestContext, *, kind: protocol.CallKind, tool: str, arguments: dict[str, Any]
    ) -> protocol.Decision | str:
        """Ask Signoff and wait while the call is held: the decision that lets this bridge run it now
        (claimed), or the text saying why it must not run."""
        if self.upstream_gone:
            return f"The call was not run: {self.upstream_gone}."
        size = len(protocol.canonical_json(arguments).encode("utf-8", "surrogatepass"))
        if size > protocol.MAX_ARGUMENTS_BYTES:
            return (
                f"The call was not run: its arguments are {size} bytes, more than Signoff accepts "
                f"({protocol.MAX_ARGUMENTS_BYTES} bytes). Split the work into smaller calls."
            )
        try:
            decision = await self.link.request(
                protocol.Call(
                    ref="-",
                    kind=kind,
                    tool=tool,
                    arguments=arguments,
                    timeout=int(self.config.timeout) if self.config.timeout else None,
                ),
                connect_timeout=self.config.connect_timeout,
                withdraw_if_cancelled=CLIENT_CANCELLED,  # the client may give up before the answer comes
            )
        except LinkError as exc:
            return f"The call was not run: Signoff could not approve it ({exc})."
        try:
            outcome = await self._wait(ctx, decision)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(WITHDRAW_SECONDS):
                await self.link.withdraw(decision.call_id, CLIENT_CANCELLED)
            raise
        if isinstance(outcome, str):
            return outcome
        if outcome.state != "allowed":
            self.link.forget(outcome.call_id)
            return self._refusal(outcome)
        return await self._claimed(outcome)

    async def _wait(self, ctx: ServerRequestContext, decision: protocol.Decision) -> protocol.Decision | str:
        """Wait while the call is pending; answer the client (with the text why) before it times out."""
        started = time.monotonic()
        client_limit = started + self.config.client_timeout
        own_deadline = started + self.config.timeout if self.config.timeout else None
        last_progress = 0.0
        last_poll = started
        watch = self.link.watch(decision.call_id)
        while watch.latest.state == "pending":
            now = time.monotonic()
            server_left = _seconds_until(watch.latest.deadline)
            if own_deadline is not None and now >= own_deadline:
                await self.link.withdraw(decision.call_id, "the bridge's own deadline (--timeout) passed")
                return protocol.Decision(call_id=decision.call_id, state="expired")
            if server_left is not None and server_left <= -SERVER_EXPIRY_GRACE:
                # The server should have said "expired" by now; whatever it says later, this call is over.
                self.link.forget(decision.call_id)
                return protocol.Decision(call_id=decision.call_id, state="expired")
            if self.link.fatal:
                return f"The call was not run: {self.link.fatal}."
            if self.link.down_since is not None and now - self.link.down_since >= self.config.reconnect_grace:
                self.link.forget(decision.call_id)
                grace = f"{self.config.reconnect_grace:.0f} s"
                return (
                    "The call was not run: the connection to Signoff was lost while it waited for approval "
                    f"and did not come back within {grace} ({self.link.last_error})."
                )
            if now >= client_limit:
                left = f" It expires in {_minutes(server_left)}." if server_left is not None else ""
                call_id = decision.call_id
                return (
                    f"This call is still waiting for approval in Signoff (call {call_id}); it has not "
                    f"run.{left} To keep waiting, repeat exactly the same call with the same arguments: it "
                    "re-attaches to the held call and, once a reviewer allows it, runs exactly once."
                )
            if now - last_progress >= PROGRESS_EVERY:
                last_progress = now
                waited = int(now - started)
                await ctx.session.report_progress(waited, None, "waiting for approval in Signoff…")
            overdue = server_left is not None and server_left <= 0
            if now - last_poll >= (1.0 if overdue else self.config.poll_interval):
                last_poll = now
                await self.link.send(protocol.Status(call_ids=[decision.call_id]))
            with anyio.move_on_after(min(1.0, max(0.01, client_limit - now))):
                await watch.changed.wait()
        return watch.latest

    async def _claimed(self, decision: protocol.Decision) -> protocol.Decision | str:
        """Claim the allowed call (unless the answer already handed it to us): exactly one claim runs it."""
        if not decision.run:
            try:
                decision = await self.link.request(
                    protocol.Claim(call_id=decision.call_id), connect_timeout=self.config.reconnect_grace
                )
            except LinkError as exc:
                return f"The call was allowed but not run: Signoff could not confirm it ({exc})."
            if not decision.run:
                self.link.forget(decision.call_id)
                if decision.state in ("completed", "failed") or decision.state == "allowed":
                    return "The call was not run again: this approved call has already run once."
                return self._refusal(decision)
        self.link.forget(decision.call_id)
        return decision

    def _report_soon(
        self,
        call_id: str,
        is_error: bool,
        summary: str,
        started: float,
        inspect: Callable[[], list[inspection.Finding]],
        action: protocol.ResultAction | None = None,
    ) -> None:
        """Audit what the upstream answered, without delaying the answer: the client gets it first, and the
        result is inspected (``inspect``) meanwhile, on a worker thread, unless the policy acted on it."""
        duration = int((time.monotonic() - started) * 1000)
        assert self._background is not None
        self._background.start_soon(self._report, call_id, is_error, summary, duration, inspect, action)

    async def _report(
        self,
        call_id: str,
        is_error: bool,
        summary: str,
        duration_ms: int,
        inspect: Callable[[], list[inspection.Finding]],
        action: protocol.ResultAction | None,
    ) -> None:
        self._reporting.add(call_id)
        try:
            try:
                findings = _reported_findings(await anyio.to_thread.run_sync(inspect))
            except Exception as exc:  # a detector must never cost the audit its record
                log.warning("could not inspect the result of call %s: %s", call_id, exc)
                findings = []
            message = protocol.Result(
                call_id=call_id,
                is_error=is_error,
                summary=summary,
                duration_ms=duration_ms,
                findings=findings,
                action=(action or "pass") if findings else None,
            )
            await self.link.request(message, connect_timeout=self.config.reconnect_grace)
        except LinkError as exc:
            log.warning("could not report the result of call %s: %s", call_id, exc)
        finally:
            self._reporting.discard(call_id)
            self.link.forget(call_id)  # its answer is watched like any: the call is over for this bridge

    def _refusal(self, decision: protocol.Decision) -> str:
        reason = decision.reason or decision.state
        if decision.state == "expired":
            return "The call was not run: nobody approved it in Signoff before its deadline."
        if decision.state == "cancelled":
            return f"The call was not run: it was cancelled ({reason})."
        return f"The call was not run. Signoff: {reason}."

    # --- plumbing -------------------------------------------------------------------------------------
    async def on_upstream_message(self, message: Any) -> None:
        """Relay the upstream's notifications to the client; keep tool hashes current."""
        if isinstance(message, Exception):
            log.warning("upstream transport error: %s", message)
            return
        if isinstance(message, types.ProgressNotification):
            return  # relayed per request through progress_callback
        if isinstance(message, types.ToolListChangedNotification):
            try:
                await self.refresh_tools()
            except Exception as exc:
                log.warning("could not re-read the upstream's tools: %s", exc)
        if self.downstream is not None:
            await self.downstream.send_notification(message)

    def build_server(self) -> tuple[Server, NotificationOptions]:
        """An MCP server offering exactly what the upstream offers."""
        assert self.upstream is not None and self.init is not None
        upstream = self.upstream
        caps = self.init.capabilities

        def forward(request_type: Any, result_type: Any) -> Any:
            async def handler(ctx: ServerRequestContext, params: Any) -> Any:
                return await upstream.send_request(
                    request_type(params=_without_progress(params)), result_type
                )

            return handler

        async def on_initialized(ctx: ServerRequestContext, params: Any) -> None:
            self.downstream = ctx.session

        async def on_ping(ctx: ServerRequestContext, params: Any) -> types.EmptyResult:
            if self.upstream_gone:
                raise RuntimeError(self.upstream_gone)
            return await upstream.send_ping()

        handlers: dict[str, Any] = {"on_ping": on_ping}
        if caps.tools:
            handlers.update(
                on_list_tools=forward(types.ListToolsRequest, types.ListToolsResult),
                on_call_tool=self.call_tool,
            )
        if caps.resources:
            handlers.update(
                on_list_resources=forward(types.ListResourcesRequest, types.ListResourcesResult),
                on_list_resource_templates=forward(
                    types.ListResourceTemplatesRequest, types.ListResourceTemplatesResult
                ),
                on_read_resource=self.read_resource,
            )
            if caps.resources.subscribe:
                handlers.update(
                    on_subscribe_resource=forward(types.SubscribeRequest, types.EmptyResult),
                    on_unsubscribe_resource=forward(types.UnsubscribeRequest, types.EmptyResult),
                )
        if caps.prompts:
            handlers.update(
                on_list_prompts=forward(types.ListPromptsRequest, types.ListPromptsResult),
                on_get_prompt=self.get_prompt,
            )
        if caps.completions:
            handlers.update(on_completion=forward(types.CompleteRequest, types.CompleteResult))
        info = self.init.server_info
        server = Server(info.name, version=info.version, instructions=self.init.instructions, **handlers)
        server.add_notification_handler("notifications/initialized", types.NotificationParams, on_initialized)
        options = NotificationOptions(
            prompts_changed=bool(caps.prompts and caps.prompts.list_changed),
            resources_changed=bool(caps.resources and caps.resources.list_changed),
            tools_changed=bool(caps.tools and caps.tools.list_changed),
        )
        return server, options

    def _transport(self) -> Any:
        if self.config.upstream_url:
            return streamable_http_client(self.config.upstream_url)
        command, *args = self.config.upstream_command
        return stdio_client(StdioServerParameters(command=command, args=args, env=_upstream_env()))

    async def serve(self) -> int:
        """Run until the client closes stdin (0) or the upstream goes away (1)."""
        what = self.config.upstream_url or " ".join(self.config.upstream_command)
        exit_code = 0
        async with anyio.create_task_group() as tasks:
            self._background = tasks
            tasks.start_soon(self.link.run)
            try:
                async with self._transport() as streams, anyio.create_task_group() as session_tasks:
                    read = await self._watch_upstream(streams[0], session_tasks, what)
                    async with Upstream(
                        read, streams[1], message_handler=self.on_upstream_message
                    ) as upstream:
                        self.upstream = upstream
                        with anyio.fail_after(30):
                            self.init = await upstream.initialize()
                        await self.refresh_tools()
                        tasks.start_soon(self.announce)
                        server, options = self.build_server()
                        log.info(
                            "fronting %s %s (%d tools) as '%s'",
                            self.init.server_info.name,
                            self.init.server_info.version,
                            len(self.tools),
                            self.config.name,
                        )
                        async with stdio_server() as (client_read, client_write):
                            await server.run(
                                client_read, client_write, server.create_initialization_options(options)
                            )
                        self._client_gone = True  # closing the upstream now is ours, not its exit
                    session_tasks.cancel_scope.cancel()
            except Exception as exc:
                if not self.upstream_gone:
                    log.error("the upstream MCP server (%s) stopped: %s", what, _root_cause(exc))
            if self.upstream_gone:
                exit_code = 1
            with anyio.move_on_after(REPORT_FLUSH_SECONDS):  # let audit reports in flight reach Signoff
                while self._reporting:  # noqa: ASYNC110 - a short, bounded poll at exit
                    await anyio.sleep(0.05)
            tasks.cancel_scope.cancel()
        return exit_code

    async def _watch_upstream(self, read: Any, tasks: anyio.abc.TaskGroup, what: str) -> Any:
        """Relay the upstream's messages, noticing when its stream ends (it exited or hung up).

        Then calls in flight get their error answer, the exit is logged, and the bridge exits with 1:
        an MCP client shows a dead server better than a live one whose every call fails.
        """
        relay_send, relay_read = anyio.create_memory_object_stream[Any](0)

        async def relay() -> None:
            async with relay_send:
                async for message in read:
                    await relay_send.send(message)
            if self._client_gone:
                return
            self.upstream_gone = f"the upstream MCP server ({what}) exited"
            log.error("%s; mcpbridge stops too. Check the server's own messages above.", self.upstream_gone)
            await anyio.sleep(1.0)  # let the answers to calls in flight reach the client
            tasks.cancel_scope.cancel()

        tasks.start_soon(relay)
        return relay_read


def _upstream_env() -> dict[str, str]:
    """The environment a stdio upstream gets: the bridge's own, without Signoff's token."""
    return {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}


def _root_cause(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

"""The wire protocol between mcpbridge and the Signoff server, defined once for both ends.

JSON text frames over ``wss://HOST/ws/bridge/``; the bridge authenticates with
``Authorization: Bearer <token>``. Every frame is an object with a ``type``. ``docs/protocol.md``
describes each message; this module is the executable form of that page. It must not import Django.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

PROTOCOL_VERSION = 1
BRIDGE_PATH = "/ws/bridge/"

# Limits both ends enforce. A frame over MAX_FRAME_BYTES is refused with an error frame.
MAX_FRAME_BYTES = 1024 * 1024
MAX_ARGUMENTS_BYTES = 256 * 1024
MAX_NAME_LENGTH = 128
MAX_REF_LENGTH = 64
MAX_REASON_LENGTH = 1000
MAX_SUMMARY_LENGTH = 2000
MAX_TOOLS = 1000
MAX_STATUS_IDS = 1000
MAX_DESCRIPTION_LENGTH = 2000
MAX_SCHEMA_BYTES = 32 * 1024
MAX_DEPTH = 64
MAX_COMMAND_ARGS = 64
MAX_ARG_LENGTH = 512
MAX_URL_LENGTH = 2048
MAX_ENV_NAMES = 256
MAX_CAPABILITIES_BYTES = 8 * 1024
MAX_RESULT_FINDINGS = 50
MAX_FINDING_PATH_LENGTH = 512
MAX_EXCERPT_LENGTH = 400
MAX_HELD_BYTES = 512 * 1024
"""Most text of a result held for review that the bridge sends (the rest is cut, and marked so)."""
MAX_HELD_TEXTS = 64
"""Deepest nesting of objects and arrays in a frame (arguments are shown to reviewers and stored)."""

# Close codes (4000-4999 are application codes in RFC 6455).
CLOSE_UNAUTHORIZED = 4401
"""The token is unknown, malformed, expired or revoked at connect: the bridge stops reconnecting."""
CLOSE_REVOKED = 4403
"""The token was revoked (or its owner removed) while connected: the bridge stops reconnecting."""
CLOSE_PROTOCOL = 4400
"""The bridge spoke a protocol version the server does not support, or broke the handshake."""
CLOSE_OUT_OF_SCOPE = 4406
"""The token may not front the server the hello announced (``server_out_of_scope``): the bridge stops."""
CLOSE_NETWORK_REFUSED = 4407
"""The bridge connects from outside the networks its token (or team) may connect from (``network_refused``):
the bridge stops; reconnecting from the same address would be refused again."""
FATAL_CLOSE_CODES = frozenset(
    {CLOSE_UNAUTHORIZED, CLOSE_REVOKED, CLOSE_PROTOCOL, CLOSE_OUT_OF_SCOPE, CLOSE_NETWORK_REFUSED}
)

CallState = Literal["pending", "allowed", "denied", "expired", "cancelled", "completed", "failed"]
TERMINAL_STATES: frozenset[str] = frozenset({"denied", "expired", "cancelled", "completed", "failed"})

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- bridge → server ------------------------------------------------------------------------------
class ToolInfo(Message):
    """One upstream tool as the bridge saw it in ``tools/list``."""

    name: Name
    hash: Annotated[str, Field(min_length=64, max_length=64, pattern="^[0-9a-f]{64}$")]
    """SHA-256 of the tool's canonical JSON definition (see :func:`tool_hash`)."""
    title: str | None = Field(default=None, max_length=MAX_REASON_LENGTH)
    annotations: dict[str, Any] = Field(default_factory=dict)
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_LENGTH)
    """Shown to reviewers; cut to MAX_DESCRIPTION_LENGTH by the bridge (the hash covers all of it)."""
    input_schema: dict[str, Any] | None = None
    """The tool's ``inputSchema``, for validating arguments; left out when larger than MAX_SCHEMA_BYTES."""


class UpstreamInfo(Message):
    """What the bridge fronts: the name the user gave it and what the upstream said about itself."""

    name: Name
    transport: Literal["stdio", "http"]
    server_name: str = Field(default="", max_length=MAX_NAME_LENGTH)
    server_version: str = Field(default="", max_length=MAX_NAME_LENGTH)


class UpstreamReport(Message):
    """What the upstream is, for the team's inventory: sent after ``welcome`` once the upstream has
    answered ``initialize`` (docs/inventory.md). Secrets in the command line and URL are masked by the
    bridge (``mcpbridge.describe``); of the environment only variable names are sent, never a value.

    Optional in protocol 1: an older bridge never sends it, and an older server answers it with an
    ``invalid_message`` error that changes nothing (the connection stays open).
    """

    type: Literal["upstream"] = "upstream"
    transport: Literal["stdio", "http"]
    command: list[Annotated[str, Field(max_length=MAX_ARG_LENGTH)]] = Field(
        default_factory=list, max_length=MAX_COMMAND_ARGS
    )
    """The stdio upstream's command and arguments, masked; empty for HTTP."""
    url: str = Field(default="", max_length=MAX_URL_LENGTH)
    """The HTTP upstream's URL, masked; empty for stdio."""
    env_names: list[Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern="^[^=]+$")]] = (
        Field(default_factory=list, max_length=MAX_ENV_NAMES)
    )
    """Names of the environment variables handed to a stdio upstream; never their values."""
    server_name: str = Field(default="", max_length=MAX_NAME_LENGTH)
    server_version: str = Field(default="", max_length=MAX_NAME_LENGTH)
    protocol_version: str = Field(default="", max_length=40)
    """The MCP protocol version the upstream answered ``initialize`` with."""
    capabilities: dict[str, Any] = Field(default_factory=dict)
    """The upstream's ``capabilities`` from ``initialize``, at most MAX_CAPABILITIES_BYTES as JSON."""

    @field_validator("capabilities")
    @classmethod
    def _capabilities_fit(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(canonical_json(value).encode("utf-8", "surrogatepass")) > MAX_CAPABILITIES_BYTES:
            raise ValueError(f"capabilities are larger than {MAX_CAPABILITIES_BYTES} bytes as JSON")
        return value


class Hello(Message):
    """First frame of every connection: protocol version, the upstream and its tools."""

    type: Literal["hello"] = "hello"
    protocol: int
    bridge_version: str = Field(max_length=40)
    upstream: UpstreamInfo
    tools: list[ToolInfo] = Field(max_length=MAX_TOOLS)


class Tools(Message):
    """The upstream's tool list changed (after ``notifications/tools/list_changed``)."""

    type: Literal["tools"] = "tools"
    tools: list[ToolInfo] = Field(max_length=MAX_TOOLS)


CallKind = Literal["tool", "resource", "prompt"]


class Call(Message):
    """A request the client made that must be decided: a ``tools/call``, or (``kind``) a ``resources/read``
    or ``prompts/get``, which go through the same gate as the pseudo-tools of :data:`GATED_REQUESTS`.
    ``ref`` is the bridge's own id for matching the answer.

    Every request that carries a ``ref`` gets exactly one answer (``decision`` or ``error``) echoing it.
    """

    type: Literal["call"] = "call"
    ref: Annotated[str, Field(min_length=1, max_length=MAX_REF_LENGTH)]
    kind: CallKind = "tool"
    tool: Name
    arguments: dict[str, Any] = Field(default_factory=dict)
    timeout: int | None = Field(default=None, ge=1, le=86400)
    """The longest the bridge will wait for a decision (its ``--timeout``); the server takes the smaller
    of this and the team's deadline."""


class Claim(Message):
    """The bridge asks to run an allowed call. Exactly one claim per call succeeds."""

    type: Literal["claim"] = "claim"
    call_id: str = Field(max_length=64)
    ref: str | None = Field(default=None, max_length=MAX_REF_LENGTH)


FindingKind = Literal["instruction", "hidden_text", "secret", "pii"]
ResultAction = Literal["pass", "mask", "block"]
"""What the bridge did with a result's findings."""
PolicyAction = Literal["pass", "mask", "block", "hold"]
"""What a result policy asks for a kind of finding: one of ``ResultAction``, or hold the result for a
reviewer, who then releases (pass), masks or blocks it."""
ResultReview = Literal["held", "released", "masked", "blocked", "expired"]
"""A held result's review: ``held`` until a reviewer decides or its deadline passes (``expired``: blocked)."""


class ResultFinding(Message):
    """Something the bridge's inspection found in a result (``mcpbridge.inspection.Finding``, trimmed)."""

    kind: FindingKind
    detector: str = Field(max_length=64)
    path: str = Field(default="", max_length=MAX_FINDING_PATH_LENGTH)
    """JSON pointer of the string in the result (``/content/0/text``, ``/contents/0/text``)."""
    excerpt: str = Field(default="", max_length=MAX_EXCERPT_LENGTH)
    """The match with a little context: secrets masked, hidden characters made visible."""
    start: int | None = Field(default=None, ge=0)
    end: int | None = Field(default=None, ge=0)
    """Where the match is in the string at ``path`` (code points), for highlighting a held result."""


class Result(Message):
    """The upstream answered an allowed call: a summary and what inspection found in it, for the audit."""

    type: Literal["result"] = "result"
    call_id: str = Field(max_length=64)
    ref: str | None = Field(default=None, max_length=MAX_REF_LENGTH)
    is_error: bool
    summary: str = Field(default="", max_length=MAX_SUMMARY_LENGTH)
    duration_ms: int = Field(ge=0)
    findings: list[ResultFinding] = Field(default_factory=list, max_length=MAX_RESULT_FINDINGS)
    action: ResultAction | None = None
    """What the bridge did with the findings under the call's ``result_policy``; None when none were found."""


class HeldText(Message):
    """One text of a held result, where it is in the result (a JSON pointer, as findings name it)."""

    path: str = Field(default="", max_length=MAX_FINDING_PATH_LENGTH)
    text: str = Field(max_length=MAX_HELD_BYTES)


class ResultHold(Message):
    """The result of an allowed call matched a finding whose policy is ``hold``: the bridge keeps it from
    the client until a reviewer releases, masks or blocks it (``Decision.result_review``), or the
    deadline passes (blocked). The texts are what the reviewer reads; at most ``MAX_HELD_BYTES`` in all."""

    type: Literal["result_hold"] = "result_hold"
    call_id: str = Field(max_length=64)
    ref: str | None = Field(default=None, max_length=MAX_REF_LENGTH)
    texts: list[HeldText] = Field(max_length=MAX_HELD_TEXTS)
    truncated: bool = False
    findings: list[ResultFinding] = Field(min_length=1, max_length=MAX_RESULT_FINDINGS)


class Withdraw(Message):
    """The client cancelled a held call: take it off the queue."""

    type: Literal["withdraw"] = "withdraw"
    call_id: str = Field(max_length=64)
    ref: str | None = Field(default=None, max_length=MAX_REF_LENGTH)
    reason: str = Field(default="", max_length=MAX_REASON_LENGTH)


class Status(Message):
    """Ask for the current state of calls (after a reconnect, or now and then while waiting)."""

    type: Literal["status"] = "status"
    call_ids: list[Annotated[str, Field(max_length=64)]] = Field(max_length=MAX_STATUS_IDS)


BridgeMessage = Annotated[
    Hello | Tools | UpstreamReport | Call | Claim | Result | ResultHold | Withdraw | Status,
    Field(discriminator="type"),
]


# --- server → bridge ------------------------------------------------------------------------------
class Welcome(Message):
    """The server accepted the hello."""

    type: Literal["welcome"] = "welcome"
    protocol: int
    team: str
    user: str
    token_name: str
    default_deadline_seconds: int


class Decision(Message):
    """The state of one call: the answer to ``call``, ``claim`` and ``status``, and every later change.

    ``run`` is true only in the one frame that hands the bridge the right to run the call upstream.
    """

    type: Literal["decision"] = "decision"
    call_id: str
    state: CallState
    reason: str = ""
    ref: str | None = None
    deadline: str | None = None
    run: bool = False
    decided_by: str | None = None
    result_policy: dict[FindingKind, PolicyAction] | None = None
    """For an allowed call: what the bridge does with the result's findings, by kind (docs/inspection.md).
    None (an older server): pass."""
    result_review: ResultReview | None = None
    """Once the bridge held the call's result (``result_hold``): the reviewer's decision on it. While
    ``held``, ``deadline`` is the held result's."""


class Error(Message):
    """A frame the server could not act on. The connection stays open; nothing was lost."""

    type: Literal["error"] = "error"
    code: str
    message: str
    ref: str | None = None


ServerMessage = Annotated[Welcome | Decision | Error, Field(discriminator="type")]

_bridge_adapter: TypeAdapter[BridgeMessage] = TypeAdapter(BridgeMessage)
_server_adapter: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


class ProtocolError(Exception):
    """A frame that is not valid JSON, not a known message, or breaks a limit."""

    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


def _utf8_size(text: str | bytes) -> int:
    """The size of a frame on the wire, in bytes: a text frame travels as UTF-8."""
    if isinstance(text, bytes):
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _load(text: str | bytes) -> Any:
    """Decode a frame into a JSON object, enforcing the frame size limit in bytes."""
    if len(text) > MAX_FRAME_BYTES or _utf8_size(text) > MAX_FRAME_BYTES:
        raise ProtocolError("frame_too_large", f"frame is larger than {MAX_FRAME_BYTES} bytes")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("malformed_json", f"frame is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("malformed_json", "frame is nested too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError("malformed_frame", "frame must be a JSON object")
    # Text that no database, hash or UTF-8 encoder accepts can only come from a \u escape, so the walk
    # runs only when the frame holds one.
    escaped = b"\\u" in text if isinstance(text, bytes) else "\\u" in text
    if escaped and _holds_unstorable_text(data):
        ref = data.get("ref")
        raise ProtocolError(
            "invalid_message",
            "frame holds a string with a NUL character or a lone surrogate, which Signoff cannot store",
            ref=ref if isinstance(ref, str) and not _holds_unstorable_text(ref) else None,
        )
    if _nesting(text) > MAX_DEPTH and _depth(data) > MAX_DEPTH:
        ref = data.get("ref")
        raise ProtocolError(
            "invalid_message",
            f"frame is nested more than {MAX_DEPTH} levels deep",
            ref=ref if isinstance(ref, str) else None,
        )
    return data


def _nesting(text: str | bytes) -> int:
    """An upper bound of the nesting depth, cheap enough for every frame: the count of openings."""
    if isinstance(text, bytes):
        return text.count(b"{") + text.count(b"[")
    return text.count("{") + text.count("[")


def _depth(value: Any) -> int:
    """The real nesting depth of a decoded JSON value (0 for a scalar)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values())
            deepest = max(deepest, level + 1)
        elif isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
            deepest = max(deepest, level + 1)
    return deepest


def _holds_unstorable_text(value: Any) -> bool:
    """True if any string in the decoded JSON value (keys included) has a NUL or a lone surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return True
            try:
                item.encode()
            except UnicodeEncodeError:
                return True
    return False


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "frame"
    return f"{where}: {first['msg']}"


def parse_bridge_message(
    text: str | bytes,
) -> Hello | Tools | UpstreamReport | Call | Claim | Result | ResultHold | Withdraw | Status:
    """Decode one bridge → server frame, or raise :class:`ProtocolError` naming what is wrong."""
    data = _load(text)
    ref = data.get("ref") if isinstance(data.get("ref"), str) else None
    try:
        message = _bridge_adapter.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError("invalid_message", _describe(exc), ref=ref) from None
    if isinstance(message, Call) and len(canonical_json(message.arguments).encode()) > MAX_ARGUMENTS_BYTES:
        raise ProtocolError(
            "arguments_too_large", f"arguments are larger than {MAX_ARGUMENTS_BYTES} bytes", ref=ref
        )
    if (
        isinstance(message, ResultHold)
        and sum(len(held.text.encode()) for held in message.texts) > MAX_HELD_BYTES
    ):
        raise ProtocolError("result_too_large", f"held texts are larger than {MAX_HELD_BYTES} bytes", ref=ref)
    return message


def parse_server_message(text: str | bytes) -> Welcome | Decision | Error:
    """Decode one server → bridge frame, or raise :class:`ProtocolError`."""
    data = _load(text)
    try:
        return _server_adapter.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError("invalid_message", _describe(exc)) from None


def encode(message: Message) -> str:
    """Encode a message as one JSON text frame."""
    return message.model_dump_json(exclude_none=True)


def canonical_json(value: Any) -> str:
    """Stable JSON for hashing: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def arguments_hash(arguments: dict[str, Any]) -> str:
    """SHA-256 of a call's canonical arguments: an approval is bound to exactly these."""
    return hashlib.sha256(canonical_json(arguments).encode()).hexdigest()


def tool_hash(definition: dict[str, Any]) -> str:
    """SHA-256 of a tool's canonical definition (name, description, schemas, annotations)."""
    return hashlib.sha256(canonical_json(definition).encode()).hexdigest()


# --- resources and prompts, gated like tools ---------------------------------------------------------
class GatedRequest(BaseModel):
    """A non-tool request decided like a tool call: the name rules match, and the arguments' schema."""

    model_config = ConfigDict(frozen=True)

    kind: CallKind
    name: str
    input_schema: dict[str, Any]
    annotations: dict[str, Any]

    @property
    def hash(self) -> str:
        """Stands for the tool hash: an approval is bound to it, and it never changes."""
        return tool_hash({"name": self.name, "inputSchema": self.input_schema})

    def arguments_of(self, params: dict[str, Any]) -> dict[str, Any]:
        """The arguments a rule sees, from the request's params (``uri``; or ``name`` and ``arguments``)."""
        return {key: params[key] for key in self.input_schema["properties"] if key in params}


RESOURCE_READ = GatedRequest(
    kind="resource",
    name="resources/read",
    input_schema={
        "type": "object",
        "properties": {"uri": {"type": "string"}},
        "required": ["uri"],
        "additionalProperties": False,
    },
    annotations={"readOnlyHint": True},
)
PROMPT_GET = GatedRequest(
    kind="prompt",
    name="prompts/get",
    input_schema={
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "arguments": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["name"],
        "additionalProperties": False,
    },
    annotations={"readOnlyHint": True},
)
GATED_REQUESTS: dict[str, GatedRequest] = {RESOURCE_READ.kind: RESOURCE_READ, PROMPT_GET.kind: PROMPT_GET}
"""By ``Call.kind``. Their names hold a ``/``, which MCP tool names may not: no upstream tool is mistaken
for one (a tool that names itself so anyway is refused, see ``reserved_name``)."""


def reserved_name(tool: str) -> bool:
    """Whether ``tool`` is the name of a gated non-tool request, which no upstream tool may use."""
    return any(request.name == tool for request in GATED_REQUESTS.values())

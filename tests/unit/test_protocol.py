"""The bridge ↔ server wire protocol: every message survives a round trip, every bad frame is named."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mcpbridge import protocol
from mcpbridge.protocol import ProtocolError

HASH = "0123456789abcdef" * 4

BRIDGE_MESSAGES: list[protocol.Message] = [
    protocol.Hello(
        protocol=protocol.PROTOCOL_VERSION,
        bridge_version="0.1.0",
        upstream=protocol.UpstreamInfo(
            name="files", transport="stdio", server_name="filesystem", server_version="1.2"
        ),
        tools=[
            protocol.ToolInfo(
                name="read_file", hash=HASH, title="Read a file", annotations={"readOnly": True}
            ),
            protocol.ToolInfo(name="write_file", hash=HASH),
        ],
    ),
    protocol.Hello(
        protocol=protocol.PROTOCOL_VERSION,
        bridge_version="0.1.0",
        upstream=protocol.UpstreamInfo(name="remote", transport="http"),
        tools=[],
    ),
    protocol.Tools(tools=[protocol.ToolInfo(name="echo", hash=HASH)]),
    protocol.Call(ref="r1", tool="read_file", arguments={"path": "/srv/a", "n": [1, 2.5, None]}, timeout=55),
    protocol.Call(ref="r2", tool="ping"),
    protocol.Claim(call_id="c0ffee", ref="r3"),
    protocol.Claim(call_id="c0ffee"),
    protocol.Result(call_id="c0ffee", ref="r4", is_error=False, summary="ok", duration_ms=12),
    protocol.Result(call_id="c0ffee", is_error=True, duration_ms=0),
    protocol.Withdraw(call_id="c0ffee", ref="r5", reason="client cancelled"),
    protocol.Status(call_ids=["a", "b"]),
    protocol.Status(call_ids=[]),
]

SERVER_MESSAGES: list[protocol.Message] = [
    protocol.Welcome(
        protocol=1, team="alpha", user="max@example.com", token_name="laptop", default_deadline_seconds=600
    ),
    protocol.Decision(
        call_id="c0ffee",
        state="pending",
        reason="waiting for a reviewer",
        ref="r1",
        deadline="2030-01-01T00:00:00+00:00",
    ),
    protocol.Decision(call_id="c0ffee", state="allowed", run=True, decided_by="rita@example.com"),
    protocol.Decision(call_id="c0ffee", state="expired"),
    protocol.Error(code="unknown_call", message="no such call", ref="r9"),
    protocol.Error(code="hello_required", message="send hello first"),
]


@pytest.mark.parametrize("message", BRIDGE_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_bridge_message_survives_a_round_trip(message: protocol.Message) -> None:
    frame = protocol.encode(message)
    assert json.loads(frame)["type"] == message.type  # type: ignore[attr-defined]
    assert protocol.parse_bridge_message(frame) == message
    assert protocol.parse_bridge_message(frame.encode()) == message


@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_server_message_survives_a_round_trip(message: protocol.Message) -> None:
    frame = protocol.encode(message)
    assert protocol.parse_server_message(frame) == message


def test_every_message_type_has_a_round_trip_case() -> None:
    covered = {type(m) for m in BRIDGE_MESSAGES + SERVER_MESSAGES}
    assert covered == {
        protocol.Hello,
        protocol.Tools,
        protocol.Call,
        protocol.Claim,
        protocol.Result,
        protocol.Withdraw,
        protocol.Status,
        protocol.Welcome,
        protocol.Decision,
        protocol.Error,
    }


def test_encoding_leaves_out_empty_optionals() -> None:
    assert json.loads(protocol.encode(protocol.Claim(call_id="x"))) == {"type": "claim", "call_id": "x"}


def _code(frame: str | bytes, parse: Any = protocol.parse_bridge_message) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse(frame)
    return caught.value


@pytest.mark.parametrize("frame", ["{", "not json", '{"type": "call",}', b"\xff\xfe{}"])
def test_malformed_json_is_refused_as_malformed_json(frame: str | bytes) -> None:
    assert _code(frame).code == "malformed_json"


@pytest.mark.parametrize("frame", ["[]", '"call"', "42", "null", '[{"type": "call"}]'])
def test_a_frame_that_is_not_an_object_is_refused(frame: str) -> None:
    assert _code(frame).code == "malformed_frame"


def test_an_unknown_type_is_refused() -> None:
    error = _code(json.dumps({"type": "launch_missiles", "ref": "r1"}))
    assert error.code == "invalid_message"
    assert error.ref == "r1"


def test_a_frame_without_type_is_refused() -> None:
    assert _code(json.dumps({"ref": "r1", "tool": "x"})).code == "invalid_message"


def test_a_missing_field_is_refused_and_named() -> None:
    error = _code(json.dumps({"type": "call", "ref": "r7"}))
    assert error.code == "invalid_message"
    assert "tool" in error.message
    assert error.ref == "r7"


def test_an_extra_field_is_refused() -> None:
    error = _code(json.dumps({"type": "claim", "call_id": "x", "sudo": True}))
    assert error.code == "invalid_message"
    assert "sudo" in error.message


def test_a_wrongly_typed_field_is_refused() -> None:
    frame = json.dumps({"type": "result", "call_id": "x", "is_error": False, "duration_ms": -1})
    assert _code(frame).code == "invalid_message"


def test_a_server_message_is_not_a_bridge_message_and_vice_versa() -> None:
    assert _code(protocol.encode(protocol.Error(code="x", message="y"))).code == "invalid_message"
    frame = protocol.encode(protocol.Claim(call_id="x"))
    assert _code(frame, protocol.parse_server_message).code == "invalid_message"


def test_an_oversized_frame_is_refused_before_parsing() -> None:
    frame = json.dumps({"type": "status", "call_ids": [], "pad": "x" * protocol.MAX_FRAME_BYTES})
    assert _code(frame).code == "frame_too_large"
    assert _code(frame.encode()).code == "frame_too_large"
    assert _code(frame, protocol.parse_server_message).code == "frame_too_large"


def test_a_frame_over_the_byte_limit_is_refused_even_when_it_has_fewer_characters() -> None:
    # 400,000 three-byte characters: 1.2 MB on the wire, but fewer characters than the limit.
    text = "€" * 400_000
    frame = json.dumps(
        {"type": "call", "ref": "r1", "tool": "t", "arguments": {"t": text}}, ensure_ascii=False
    )
    assert len(frame) < protocol.MAX_FRAME_BYTES < len(frame.encode())
    assert _code(frame).code == "frame_too_large"


def test_oversized_arguments_are_refused_with_the_calls_ref() -> None:
    arguments = {"blob": "x" * (protocol.MAX_ARGUMENTS_BYTES + 1)}
    error = _code(protocol.encode(protocol.Call(ref="big", tool="write_file", arguments=arguments)))
    assert error.code == "arguments_too_large"
    assert error.ref == "big"


def test_arguments_over_the_byte_limit_are_refused_even_when_they_have_fewer_characters() -> None:
    arguments = {"blob": "€" * (protocol.MAX_ARGUMENTS_BYTES // 2)}
    frame = protocol.encode(protocol.Call(ref="big", tool="write_file", arguments=arguments))
    assert _code(frame).code == "arguments_too_large"


def test_arguments_just_under_the_limit_are_accepted() -> None:
    arguments = {"blob": "x" * (protocol.MAX_ARGUMENTS_BYTES - 100)}
    message = protocol.parse_bridge_message(
        protocol.encode(protocol.Call(ref="r", tool="t", arguments=arguments))
    )
    assert isinstance(message, protocol.Call)


def test_too_long_names_and_refs_are_refused() -> None:
    long_tool = json.dumps({"type": "call", "ref": "r", "tool": "t" * (protocol.MAX_NAME_LENGTH + 1)})
    assert _code(long_tool).code == "invalid_message"
    long_ref = json.dumps({"type": "call", "ref": "r" * (protocol.MAX_REF_LENGTH + 1), "tool": "t"})
    assert _code(long_ref).code == "invalid_message"


def test_arguments_hash_does_not_depend_on_key_order() -> None:
    one = {"path": "/srv/a", "options": {"mode": "r", "encoding": "utf-8"}, "n": 1}
    other = {"n": 1, "options": {"encoding": "utf-8", "mode": "r"}, "path": "/srv/a"}
    assert protocol.arguments_hash(one) == protocol.arguments_hash(other)
    assert len(protocol.arguments_hash(one)) == 64


def test_arguments_hash_is_stable_across_runs() -> None:
    # Pinned: a change here breaks re-attaching calls made by bridges of an older version.
    assert protocol.arguments_hash({}) == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert protocol.arguments_hash({"b": 1, "a": "é"}) == protocol.arguments_hash({"a": "é", "b": 1})


@pytest.mark.parametrize(
    "other",
    [{"path": "/srv/b"}, {"path": "/srv/a", "extra": None}, {"path": ["/srv/a"]}, {"Path": "/srv/a"}],
)
def test_arguments_hash_differs_when_arguments_differ(other: dict[str, Any]) -> None:
    assert protocol.arguments_hash({"path": "/srv/a"}) != protocol.arguments_hash(other)


def test_tool_hash_does_not_depend_on_key_order() -> None:
    one = {"name": "t", "description": "d", "inputSchema": {"type": "object", "properties": {}}}
    other = {"inputSchema": {"properties": {}, "type": "object"}, "description": "d", "name": "t"}
    assert protocol.tool_hash(one) == protocol.tool_hash(other)
    assert protocol.tool_hash(one) != protocol.tool_hash({**one, "description": "now also deletes files"})


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "call", "ref": "r1", "tool": "t", "arguments": {"a": "\\ud800"}}',
        '{"type": "call", "ref": "r1", "tool": "t", "arguments": {"\\udc00": 1}}',
        '{"type": "call", "ref": "r1", "tool": "t", "arguments": {"path": "/srv/a\\u0000.txt"}}',
        '{"type": "call", "ref": "r1", "tool": "t\\u0000", "arguments": {}}',
        '{"type": "withdraw", "ref": "r1", "call_id": "x", "reason": "\\u0000"}',
        '{"type": "call", "ref": "r1", "tool": "t", "arguments": {"a": [[{"b": ["\\u0000"]}]]}}',
    ],
    ids=["lone-surrogate", "surrogate-key", "nul-in-arguments", "nul-in-tool", "nul-in-reason", "nested"],
)
def test_text_no_database_can_store_is_refused_with_the_ref(frame: str) -> None:
    # A NUL or a lone surrogate breaks hashing (UTF-8) and PostgreSQL (text, jsonb): refused up front.
    error = _code(frame)
    assert (error.code, error.ref) == ("invalid_message", "r1")
    assert "NUL" in error.message


def test_an_escaped_backslash_before_u0000_is_ordinary_text() -> None:
    frame = r'{"type": "call", "ref": "r", "tool": "t", "arguments": {"a": "C:\\u0000"}}'
    message = protocol.parse_bridge_message(frame)
    assert isinstance(message, protocol.Call)
    assert message.arguments == {"a": "C:\\u0000"}


def test_a_deeply_nested_frame_is_refused_as_malformed_json() -> None:
    assert _code("[" * 100_000).code == "malformed_json"
    assert _code('{"type": "call", "ref": "r", "tool": "t", "arguments": {"a": ' + "[" * 100_000).code == (
        "malformed_json"
    )


def test_escaped_non_ascii_text_is_accepted() -> None:
    frame = '{"type": "call", "ref": "r1", "tool": "t", "arguments": {"a": "\\ud83d\\ude00 caf\\u00e9"}}'
    message = protocol.parse_bridge_message(frame)
    assert isinstance(message, protocol.Call)
    assert message.arguments == {"a": "😀 café"}

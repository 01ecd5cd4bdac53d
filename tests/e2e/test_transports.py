"""What the bridge forwards, over both upstream transports, in front of our upstream and a published one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anyio
import mcp.types as types
import pytest

from approvals.models import Rule, ToolCall
from approvals.services.calls import call_decide, call_tool_definition_accept
from tests.e2e.conftest import (
    BIN,
    PYTHON,
    UPSTREAM,
    SignoffServer,
    TeamSetup,
    bridge,
    child_env,
    free_port,
    reported,
    reviewer_socket,
    text_of,
)


async def test_lists_and_ping_pass_through_untouched(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    """Listing what a server offers is not gated; reading a resource or prompt is (test_resources_prompts)."""
    async with bridge(tmp_path, url=signoff.url, token=team.raw_token) as b:
        tools = await b.session.list_tools()
        resources = await b.session.list_resources()
        prompts = await b.session.list_prompts()
        await b.session.send_ping()
    assert [t.name for t in tools.tools] == ["echo", "write_file", "slow", "crash", "mutate", "grow"]
    assert tools.tools[1].annotations.destructive_hint is True
    assert [str(r.uri) for r in resources.resources] == ["memo://readme"]
    assert [p.name for p in prompts.prompts] == ["greet"]
    assert b.upstream_calls() == []
    assert not ToolCall.objects.filter(team=team.team).exists()


async def test_tool_list_changes_are_forwarded_and_the_new_tool_is_known_to_signoff(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    Rule.objects.create(team=team.team, effect="allow", server="test", tool="*")
    changed = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with bridge(
        tmp_path,
        url=signoff.url,
        token=team.raw_token,
        message_handler=on_message,
        bridge_args=("--client-timeout", "1"),
    ) as b:
        unknown = await b.session.call_tool("extra", {})
        assert unknown.is_error and "no tool named 'extra'" in text_of(unknown)
        assert text_of(await b.session.call_tool("grow", {})) == "grown"
        with anyio.fail_after(10):
            await changed.wait()
        assert "extra" in [t.name for t in (await b.session.list_tools()).tools]
        # The bridge re-read the upstream's tools and told Signoff: the new tool is known now, but a tool that
        # appears on a known server waits for a human even where a rule allows everything.
        with anyio.fail_after(10):
            while True:
                result = await b.session.call_tool("extra", {})
                if "no tool named" not in text_of(result):
                    break
                await anyio.sleep(0.2)
        assert "still waiting for approval" in text_of(result)
        held = ToolCall.objects.get(team=team.team, tool="extra", state="pending")
        assert "new tool on a known server" in held.risks[0]["message"]
        assert call_tool_definition_accept(call_id=str(held.pk), reviewer=team.reviewer)  # an admin
        call_decide(call_id=str(held.pk), reviewer=team.reviewer, allow=True)
        ran = await b.session.call_tool("extra", {})
        again = await b.session.call_tool("extra", {"now": "by the rule"})
    assert text_of(ran) == text_of(again) == "extra ran"


async def test_upstream_progress_is_relayed_after_approval(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    Rule.objects.create(team=team.team, effect="allow", server="test", tool="slow")
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async with bridge(tmp_path, url=signoff.url, token=team.raw_token) as b:
        result = await b.session.call_tool("slow", {"seconds": 0.4}, progress_callback=on_progress)
    assert text_of(result) == "slept 0.4s"
    assert (4, 4) in seen


async def test_streamable_http_upstream(signoff: SignoffServer, team: TeamSetup, tmp_path) -> None:
    port = free_port()
    log = tmp_path / "http-upstream.jsonl"
    upstream = subprocess.Popen(
        [PYTHON, str(UPSTREAM), "--http", str(port)], env=child_env(UPSTREAM_LOG=str(log))
    )
    try:
        await anyio.to_thread.run_sync(lambda: _wait_port(port))
        async with (
            reviewer_socket(signoff, team.reviewer, team.team.slug) as reviewer,
            bridge(
                tmp_path,
                url=signoff.url,
                token=team.raw_token,
                name="remote",
                upstream=["--upstream-url", f"http://127.0.0.1:{port}/mcp"],
            ) as b,
            anyio.create_task_group() as tasks,
        ):
            outcome: dict = {}

            async def call() -> None:
                outcome["result"] = await b.session.call_tool("echo", {"text": "over http"})

            tasks.start_soon(call)
            held = await reviewer.pending_call("echo")
            assert held["server"] == "remote"
            assert not log.exists()
            await reviewer.decide(held["id"], "allow")
        assert text_of(outcome["result"]) == "over http"
        assert len(log.read_text().splitlines()) == 1
        # The client hung up, the upstream did not: the bridge must not blame it.
        assert "exited" not in b.stderr()
    finally:
        upstream.terminate()
        upstream.wait(10)


def _wait_port(port: int) -> None:
    import socket
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


async def test_published_pypi_server_behind_the_bridge(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    """mcp-server-time, installed from PyPI, approved by a reviewer."""
    server_time = BIN / "mcp-server-time"
    assert server_time.exists(), "mcp-server-time comes with the dev extra"
    async with (
        reviewer_socket(signoff, team.reviewer, team.team.slug) as reviewer,
        bridge(
            tmp_path,
            url=signoff.url,
            token=team.raw_token,
            name="time",
            upstream=["--", str(server_time), "--local-timezone", "UTC"],
        ) as b,
        anyio.create_task_group() as tasks,
    ):
        names = {t.name for t in (await b.session.list_tools()).tools}
        assert {"get_current_time", "convert_time"} <= names
        outcome: dict = {}

        async def call() -> None:
            outcome["result"] = await b.session.call_tool("get_current_time", {"timezone": "Europe/Paris"})

        tasks.start_soon(call)
        held = await reviewer.pending_call("get_current_time")
        assert held["server"] == "time"
        await reviewer.decide(held["id"], "allow")
    payload = json.loads(text_of(outcome["result"]))
    assert payload["timezone"] == "Europe/Paris"
    assert (await reported(held["id"])).state == "completed"


def test_nothing_but_mcp_reaches_stdout(signoff: SignoffServer, team: TeamSetup, tmp_path) -> None:
    """Drive the bridge by hand: every stdout line must be a JSON-RPC message, logs go to stderr."""
    Rule.objects.create(team=team.team, effect="allow", server="test", tool="echo")
    env = {**os.environ, "SIGNOFF_URL": signoff.url, "SIGNOFF_TOKEN": team.raw_token}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "raw"}},
        },
    ]
    process = subprocess.Popen(
        [str(BIN / "mcpbridge"), "--name", "test", "--log-level", "DEBUG", "--", PYTHON, str(UPSTREAM)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert process.stdin and process.stdout
    replies = []
    for message in messages:
        process.stdin.write(json.dumps(message) + "\n")
        process.stdin.flush()
        if "id" in message:
            replies.append(json.loads(process.stdout.readline()))
    rest, stderr = process.communicate(timeout=20)  # closes stdin: the client is gone
    assert process.returncode == 0, stderr
    for line in rest.splitlines():
        assert json.loads(line)["jsonrpc"] == "2.0"
    assert replies[0]["result"]["serverInfo"]["name"] == "signoff-test-upstream"
    assert replies[1]["result"]["content"][0]["text"] == "raw"
    assert "connected to Signoff" in stderr
    assert team.raw_token not in stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {"SIGNOFF_URL": "http://x", "SIGNOFF_TOKEN": "t"}, "give the upstream"),
        (["--", "true"], {"SIGNOFF_TOKEN": "t"}, "set SIGNOFF_URL"),
        (["--", "true"], {"SIGNOFF_URL": "http://x"}, "set SIGNOFF_TOKEN"),
        (["--", "true"], {"SIGNOFF_URL": "ftp://x", "SIGNOFF_TOKEN": "t"}, "must start with https://"),
    ],
)
def test_misconfiguration_exits_with_a_message_that_says_what_to_fix(
    args: list[str], env: dict[str, str], message: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SIGNOFF_")}
    result = subprocess.run(
        [str(BIN / "mcpbridge"), *args], env={**clean, **env}, capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr


def test_help_explains_the_bridge() -> None:
    result = subprocess.run([sys.executable, "-m", "mcpbridge", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for words in (
        "SIGNOFF_URL",
        "SIGNOFF_TOKEN",
        "--upstream-url",
        "--client-timeout",
        "claude_desktop_config",
    ):
        assert words in result.stdout

"""Faults on real processes: the server killed or restarted mid-wait, the upstream crashing, revocation."""

from __future__ import annotations

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from approvals.models import Rule, ToolCall
from approvals.services.tokens import token_revoke
from tests.e2e.conftest import (
    SignoffServer,
    TeamSetup,
    bridge,
    reported,
    reviewer_socket,
    running_server,
    text_of,
)


async def test_server_killed_mid_wait_denies_the_call(team: TeamSetup, tmp_path) -> None:
    with running_server("killed") as server:
        async with (
            bridge(
                tmp_path, url=server.url, token=team.raw_token, bridge_args=("--reconnect-grace", "2")
            ) as b,
            anyio.create_task_group() as tasks,
        ):
            outcome: dict = {}

            async def call() -> None:
                outcome["result"] = await b.session.call_tool("write_file", {"path": "p", "content": "c"})

            tasks.start_soon(call)
            with anyio.fail_after(10):
                while not ToolCall.objects.filter(team=team.team).exists():
                    await anyio.sleep(0.1)
            server.kill()
    result = outcome["result"]
    assert result.is_error
    assert "connection to Signoff was lost" in text_of(result) and "not run" in text_of(result)
    assert b.upstream_calls() == []


async def test_bridge_reattaches_after_a_server_restart_and_runs_the_allowed_call(
    team: TeamSetup, tmp_path
) -> None:
    with running_server("restarted") as server:
        async with (
            bridge(
                tmp_path, url=server.url, token=team.raw_token, bridge_args=("--reconnect-grace", "30")
            ) as b,
            anyio.create_task_group() as tasks,
        ):
            outcome: dict = {}

            async def call() -> None:
                outcome["result"] = await b.session.call_tool("echo", {"text": "survived"})

            tasks.start_soon(call)
            with anyio.fail_after(10):
                while not ToolCall.objects.filter(team=team.team).exists():
                    await anyio.sleep(0.1)
            server.kill()
            server.start()  # same port: the bridge reconnects by itself
            async with reviewer_socket(server, team.reviewer, team.team.slug) as reviewer:
                held = await reviewer.pending_call("echo")
                assert (await reviewer.decide(held["id"], "allow"))["state"] == "allowed"
    assert text_of(outcome["result"]) == "survived"
    assert len(b.upstream_calls()) == 1
    assert (await reported(held["id"])).state == ToolCall.State.COMPLETED


async def test_revoked_token_is_refused_at_connect(signoff: SignoffServer, team: TeamSetup, tmp_path) -> None:
    token_revoke(token=team.token, by=team.reviewer)
    async with bridge(tmp_path, url=signoff.url, token=team.raw_token) as b:
        result = await b.session.call_tool("echo", {"text": "x"})
    assert result.is_error and "refused the token" in text_of(result)
    assert b.upstream_calls() == []
    assert "refused" in b.stderr()


async def test_token_revoked_while_connected_refuses_the_next_call(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    Rule.objects.create(team=team.team, effect="allow", server="test", tool="echo")
    async with bridge(tmp_path, url=signoff.url, token=team.raw_token) as b:
        assert text_of(await b.session.call_tool("echo", {"text": "before"})) == "before"
        token_revoke(token=team.token, by=team.reviewer)
        after = await b.session.call_tool("echo", {"text": "after"})
    assert after.is_error and "not run" in text_of(after)
    assert [c["arguments"]["text"] for c in b.upstream_calls()] == ["before"]


async def test_upstream_crash_is_reported_and_the_bridge_exits(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    Rule.objects.create(team=team.team, effect="allow", server="test", tool="*")
    async with bridge(tmp_path, url=signoff.url, token=team.raw_token) as b:
        with anyio.fail_after(20):
            crashed = await b.session.call_tool("crash", {})
        assert crashed.is_error
        assert "failed" in text_of(crashed)
        # A call in the moment before the bridge exits is told why; then the bridge is gone, so the
        # client sees a dead server instead of hanging on it.
        late = await b.session.call_tool("echo", {"text": "still there?"})
        assert late.is_error and "exited" in text_of(late)
        await anyio.sleep(1.5)
        with anyio.fail_after(10), pytest.raises(MCPError):
            await b.session.call_tool("echo", {"text": "and now?"})
    assert "upstream MCP server" in b.stderr() and "exited" in b.stderr()
    row = ToolCall.objects.get(team=team.team, tool="crash")
    assert row.state == ToolCall.State.FAILED

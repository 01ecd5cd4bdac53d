"""Resource reads and prompts go through the same gate as tool calls (issue 7, point 3).

Through the real bridge and a real Daphne: a ``resources/read`` is decided as the pseudo-tool
``resources/read`` with its ``uri`` as argument, a ``prompts/get`` as ``prompts/get`` with ``name`` and
``arguments``; rules match them like tools (globs on the URI included), reviewers see them held, and a refusal
reaches the client as an error that says why, while the upstream never sees the request.
"""

from __future__ import annotations

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from approvals.models import AuditEvent, Rule, ToolCall
from tests.e2e.conftest import (
    ARTIFACTS,
    SignoffServer,
    TeamSetup,
    bridge,
    browser_login,
    reviewer_socket,
    start_call,
)


async def test_a_resource_read_is_held_until_a_reviewer_allows_it(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    async with (
        reviewer_socket(signoff, team.reviewer, team.team.slug) as reviewer,
        bridge(tmp_path, url=signoff.url, token=team.raw_token) as b,
        anyio.create_task_group() as tasks,
    ):
        outcome = start_call(tasks, b.session.read_resource, "memo://readme")
        held = await reviewer.pending_call("resources/read")
        assert held["arguments"] == {"uri": "memo://readme"}
        assert b.upstream_calls() == []  # held: the upstream has not seen it
        await reviewer.decide(held["id"], "allow")
        result = await outcome.wait()
    assert result.contents[0].text == "hello from a resource"
    assert b.upstream_calls()[0]["tool"] == "resources/read"
    call = await ToolCall.objects.aget(pk=held["id"])
    assert (call.tool, call.state) == ("resources/read", "completed")
    assert call.result_summary == "hello from a resource"
    kinds = [kind async for kind in AuditEvent.objects.filter(call=call).values_list("kind", flat=True)]
    assert kinds == ["call.pending", "call.allowed", "call.started", "call.completed"]


async def test_a_denied_resource_read_is_an_error_naming_the_reason_and_never_reaches_the_upstream(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    await Rule.objects.acreate(
        team=team.team,
        effect="deny",
        server="test",
        tool="resources/read",
        constraints=[{"path": "uri", "op": "glob", "value": "memo://*"}],
        note="no memos for models",
    )
    async with bridge(tmp_path, url=signoff.url, token=team.raw_token) as b:
        with pytest.raises(MCPError) as refused:
            await b.session.read_resource("memo://readme")
        assert b.upstream_calls() == []
    assert "not run" in refused.value.message and "rule" in refused.value.message
    call = await ToolCall.objects.aget(team=team.team, tool="resources/read")
    assert call.state == "denied" and call.arguments == {"uri": "memo://readme"}


async def test_rules_match_resource_uris_and_prompt_names(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    await Rule.objects.acreate(
        team=team.team,
        effect="allow",
        server="test",
        tool="resources/read",
        constraints=[{"path": "uri", "op": "prefix", "value": "memo://"}],
    )
    await Rule.objects.acreate(
        team=team.team,
        effect="allow",
        server="test",
        tool="prompts/get",
        constraints=[{"path": "name", "op": "equals", "value": "greet"}],
    )
    async with bridge(tmp_path, url=signoff.url, token=team.raw_token) as b:
        contents = await b.session.read_resource("memo://readme")
        prompt = await b.session.get_prompt("greet", {"who": "Ada"})
    assert contents.contents[0].text == "hello from a resource"
    assert prompt.messages[0].content.text == "Hello!"
    assert [(c["tool"], c["arguments"]) for c in b.upstream_calls()] == [
        ("resources/read", {"uri": "memo://readme"}),
        ("prompts/get", {"name": "greet", "arguments": {"who": "Ada"}}),
    ]
    states = {
        tool: state
        async for tool, state in ToolCall.objects.filter(team=team.team).values_list("tool", "state")
    }
    assert states == {"resources/read": "completed", "prompts/get": "completed"}


async def test_in_whitelist_mode_an_unmatched_prompt_is_refused(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    team.team.mode = "whitelist"
    await team.team.asave(update_fields=["mode"])
    async with bridge(tmp_path, url=signoff.url, token=team.raw_token) as b:
        with pytest.raises(MCPError) as refused:
            await b.session.get_prompt("greet")
        assert b.upstream_calls() == []
    assert "not run" in refused.value.message


async def test_a_reviewer_allows_a_held_resource_read_in_the_browser(
    signoff: SignoffServer, team: TeamSetup, browser, tmp_path
) -> None:
    page = await browser_login(browser, signoff, team.reviewer)
    await page.wait_for_selector("#socket-status[data-state=live]")
    async with (
        bridge(tmp_path, url=signoff.url, token=team.raw_token) as b,
        anyio.create_task_group() as tasks,
    ):
        outcome = start_call(tasks, b.session.read_resource, "memo://readme")
        card = page.locator("li.call")
        await card.wait_for()
        assert await card.locator(".call-tool").text_content() == "resources/read"
        assert "memo://readme" in await card.locator(".call-arguments").text_content()
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "queue-held-resource.png"), full_page=True)
        await card.get_by_role("button", name="Allow", exact=True).click()
        await card.wait_for(state="detached")
        result = await outcome.wait()
    assert result.contents[0].text == "hello from a resource"

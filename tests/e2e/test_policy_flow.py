"""Policy through the real bridge: argument constraints, risk badges, and the rug-pull defence."""

from __future__ import annotations

import json

import anyio
import mcp.types as types

from approvals.models import Rule, ToolCall, ToolPin
from tests.e2e.conftest import (
    ARTIFACTS,
    SignoffServer,
    TeamSetup,
    bridge,
    browser_login,
    reviewer_socket,
    text_of,
)


async def test_a_rule_with_a_directory_constraint_allows_inside_and_holds_the_rest(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    Rule.objects.create(
        team=team.team,
        effect="allow",
        server="test",
        tool="write_file",
        constraints=[{"path": "path", "op": "within", "value": "/srv/project"}],
    )
    Rule.objects.create(
        team=team.team,
        effect="deny",
        server="test",
        tool="write_file",
        constraints=[{"path": "path", "op": "prefix", "value": "/etc/"}],
    )
    async with bridge(
        tmp_path, url=signoff.url, token=team.raw_token, bridge_args=("--client-timeout", "1")
    ) as b:
        inside = await b.session.call_tool("write_file", {"path": "/srv/project/notes.txt", "content": "a"})
        escape = await b.session.call_tool(
            "write_file", {"path": "/srv/project/../secrets.txt", "content": "b"}
        )
        denied = await b.session.call_tool("write_file", {"path": "/etc/passwd", "content": "c"})
    assert text_of(inside) == "wrote 1 bytes to /srv/project/notes.txt"
    assert "still waiting for approval" in text_of(escape)
    assert denied.is_error and "denied by rule" in text_of(denied)
    assert [c["arguments"]["path"] for c in b.upstream_calls()] == ["/srv/project/notes.txt"]
    held = ToolCall.objects.get(team=team.team, state="pending")
    assert any(risk["kind"] == "traversal" for risk in held.risks)
    assert any(risk["kind"] == "destructiveHint" for risk in held.risks)


async def test_a_changed_tool_definition_is_held_even_where_a_rule_allows_it(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    Rule.objects.create(team=team.team, effect="allow", server="test", tool="*")
    changed = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with (
        reviewer_socket(signoff, team.reviewer, team.team.slug) as reviewer,
        bridge(
            tmp_path,
            url=signoff.url,
            token=team.raw_token,
            bridge_args=("--client-timeout", "1"),
            message_handler=on_message,
        ) as b,
    ):
        assert text_of(await b.session.call_tool("echo", {"text": "before"})) == "before"
        await b.session.call_tool("mutate", {})
        with anyio.fail_after(10):
            await changed.wait()
        with anyio.fail_after(10):
            while not ToolPin.objects.get(team=team.team, tool="echo").changed:
                await anyio.sleep(0.1)
        held = await b.session.call_tool("echo", {"text": "after the rug pull"})
        assert "still waiting for approval" in text_of(held)
        card = await reviewer.pending_call("echo")
        assert card["risks"][0]["kind"] == "tool_changed"
        await reviewer.connection.send(f'{{"type": "accept_tool", "call_id": "{card["id"]}"}}')
        accepted = await reviewer.next(lambda m: m["type"] == "tool_accepted")
        assert accepted["accepted"] is True
        await reviewer.decide(card["id"], "deny", reason="checked the new definition first")
        again = await b.session.call_tool("echo", {"text": "accepted now"})
    assert text_of(again) == "accepted now"
    assert [c["arguments"]["text"] for c in b.upstream_calls() if c["tool"] == "echo"] == [
        "before",
        "accepted now",
    ]
    pin = ToolPin.objects.get(team=team.team, tool="echo")
    assert not pin.changed and pin.approved_by == team.reviewer
    assert "~/.ssh" in pin.approved_definition["description"]


async def test_risk_badges_show_next_to_the_arguments_in_the_browser(
    signoff: SignoffServer, team: TeamSetup, browser, tmp_path
) -> None:
    page = await browser_login(browser, signoff, team.reviewer)
    await page.wait_for_selector("#socket-status[data-state=live]")
    async with bridge(
        tmp_path, url=signoff.url, token=team.raw_token, bridge_args=("--client-timeout", "2")
    ) as b:
        await b.session.call_tool(
            "write_file", {"path": "../../../etc/cron.d/x", "content": "* * * * * root sh"}
        )
        card = page.locator("li.call")
        await card.wait_for()
        assert await card.locator(".risk[data-kind=traversal]").count() == 1
        assert "/path" in await card.locator(".risk[data-kind=traversal]").text_content()
        assert await card.locator(".risk[data-kind=destructiveHint]").count() == 1
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "queue-risks.png"), full_page=True)


async def test_always_allow_this_exact_call_in_the_browser(
    signoff: SignoffServer, team: TeamSetup, browser, tmp_path
) -> None:
    page = await browser_login(browser, signoff, team.reviewer)
    await page.wait_for_selector("#socket-status[data-state=live]")
    arguments = {"path": "/srv/project/a.txt", "content": "hello"}
    async with bridge(
        tmp_path, url=signoff.url, token=team.raw_token, bridge_args=("--client-timeout", "1")
    ) as b:
        async with anyio.create_task_group() as tasks:
            outcome: dict = {}

            async def call() -> None:
                outcome["first"] = await b.session.call_tool("write_file", arguments)

            tasks.start_soon(call)
            card = page.locator("li.call")
            await card.wait_for()
            await card.locator("summary", has_text="Always allow").click()
            suggested = await card.locator(".always-form textarea").input_value()
            assert '"op": "within"' in suggested and '"/srv/project"' in suggested
            await page.screenshot(path=str(ARTIFACTS / "queue-always-allow.png"), full_page=True)
            await card.get_by_role("button", name="Allow and create the rule").click()
            await card.wait_for(state="detached")
        again = await b.session.call_tool("write_file", arguments)
        other = await b.session.call_tool("write_file", {**arguments, "content": "changed"})
    assert text_of(outcome["first"]) == text_of(again) == "wrote 5 bytes to /srv/project/a.txt"
    assert "still waiting for approval" in text_of(other)
    rule = Rule.objects.get(team=team.team)
    assert rule.constraints == [{"path": "", "op": "equals", "value": arguments}]


async def test_always_allow_with_edited_constraints_must_match_the_held_call(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    async with (
        reviewer_socket(signoff, team.reviewer, team.team.slug) as reviewer,
        bridge(tmp_path, url=signoff.url, token=team.raw_token, bridge_args=("--client-timeout", "1")) as b,
    ):
        await b.session.call_tool("write_file", {"path": "/srv/project/a.txt", "content": "x"})
        card = await reviewer.pending_call("write_file")

        async def always(constraints: object) -> dict:
            await reviewer.connection.send(
                json.dumps(
                    {
                        "type": "decide",
                        "call_id": card["id"],
                        "decision": "always_allow",
                        "scope": "constraints",
                        "constraints": constraints,
                    }
                )
            )
            return await reviewer.next(
                lambda m: m["type"] in {"decided", "error"} and m.get("call_id") == card["id"]
            )

        broken = await always([{"path": "path", "op": "within"}])
        assert broken["type"] == "error" and "constraints[0]" in broken["message"]
        elsewhere = await always([{"path": "path", "op": "within", "value": "/home"}])
        assert elsewhere["type"] == "error" and "do not match the held call" in elsewhere["message"]
        assert ToolCall.objects.get(pk=card["id"]).state == "pending"
        fine = await always([{"path": "path", "op": "within", "value": "/srv/project"}])
        assert fine == {"type": "decided", "call_id": card["id"], "state": "allowed"}
        inside = await b.session.call_tool("write_file", {"path": "/srv/project/sub/b.txt", "content": "y"})
        outside = await b.session.call_tool("write_file", {"path": "/srv/other.txt", "content": "z"})
    assert text_of(inside) == "wrote 1 bytes to /srv/project/sub/b.txt"
    assert "still waiting" in text_of(outside)

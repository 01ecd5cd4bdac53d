"""A token scoped to servers, and the four-eyes rule, with the real bridge, Daphne and a headless Chromium.

A bridge whose token may not front its server (``--name``) is refused at its hello and fails closed: every
tool call gets a tool error saying why, and the upstream never sees a call. In a four-eyes team the reviewer
who made a call sees no Allow on it; another reviewer allows it and it runs.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from approvals.models import AuditEvent, Team, ToolCall
from approvals.services.tokens import token_issue
from tests.e2e.conftest import SignoffServer, TeamSetup, bridge, browser_login, reported, text_of

SHOTS = Path("/tmp/shots")


async def test_a_bridge_whose_token_is_for_another_server_fails_closed_and_says_why(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    token, raw = token_issue(team=team.team, user=team.member, name="ci", servers=["git-*", "docs"])
    async with bridge(tmp_path, url=signoff.url, token=raw, name="files") as b:
        first = await b.session.call_tool("write_file", {"path": "/srv/x", "content": "y"})
        again = await b.session.call_tool("echo", {"text": "and this one?"})
        listed = await b.session.list_tools()  # everything but tools/call still passes through
    for result in (first, again):
        text = text_of(result)
        assert result.is_error and text.startswith("The call was not run"), text
        assert "may only front git-*, docs" in text and "'files'" in text, text
    assert {tool.name for tool in listed.tools} >= {"echo", "write_file"}
    assert b.upstream_calls() == []
    assert not ToolCall.objects.filter(token=token).exists()
    assert AuditEvent.objects.filter(kind="token.scope_refused", token_id=token.pk).count() == 1  # no retry
    assert "refused this bridge" in b.stderr()


async def test_a_bridge_for_a_server_in_the_scope_works(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    _, raw = token_issue(team=team.team, user=team.member, name="ci", servers=["docs", "fi*"])
    async with bridge(
        tmp_path, url=signoff.url, token=raw, name="files", bridge_args=("--client-timeout", "0.5")
    ) as b:
        held = await b.session.call_tool("echo", {"text": "in scope"})
    assert "still waiting for approval" in text_of(held)
    assert ToolCall.objects.get(token__name="ci", team=team.team).server == "files"


async def test_a_member_issues_a_scoped_token_in_the_browser(
    signoff: SignoffServer, team: TeamSetup, browser
) -> None:
    page = await browser_login(browser, signoff, team.member)
    await page.fill("input[name=name]", "laptop, files only")
    await page.fill("input[name=servers]", "files git-* bad;name")
    await page.click("text=Issue token")
    assert "is not a server name" in await page.text_content(".field-error")
    await page.fill("input[name=servers]", "files, git-*")
    await page.click("text=Issue token")
    scope_text = " ".join((await page.text_content(".token-scope")).split())
    assert "fronts only the servers files, git-*" in scope_text
    assert '"--name",\n        "files"' in await page.text_content("#snippet-desktop")
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "token-issued-scoped.png"), full_page=True)
    await page.goto(signoff.url + "/tokens/")
    row = page.locator("tr", has_text="laptop, files only")
    assert await row.locator(".token-servers").text_content() == "files, git-*"
    await page.screenshot(path=str(SHOTS / "tokens-scoped.png"), full_page=True)


async def test_with_four_eyes_the_requester_sees_no_allow_and_another_reviewer_allows(
    signoff: SignoffServer, team: TeamSetup, browser, tmp_path
) -> None:
    Team.objects.filter(pk=team.team.pk).update(four_eyes=True)
    # The team's admin (a reviewer) runs a bridge of their own.
    _, raw = token_issue(team=team.team, user=team.reviewer, name="ada-laptop")
    own = await browser_login(browser, signoff, team.reviewer)
    other = await browser_login(browser, signoff, team.reviewer2)
    for page in (own, other):
        await page.wait_for_selector("#socket-status[data-state=live]")
    async with bridge(tmp_path, url=signoff.url, token=raw) as b, anyio.create_task_group() as tasks:
        outcome: dict = {}

        async def call() -> None:
            outcome["result"] = await b.session.call_tool("write_file", {"path": "/srv/a", "content": "b"})

        tasks.start_soon(call)
        mine = own.locator("li.call")
        await mine.wait_for()
        assert await mine.locator(".call-requester").text_content() == team.reviewer.email
        assert await mine.get_by_role("button", name="Allow", exact=True).count() == 0
        assert await mine.locator("details.always").count() == 0
        assert await mine.locator(".four-eyes-note").is_visible()
        assert (
            await mine.locator(".four-eyes-note").text_content() == "four eyes: another reviewer must approve"
        )
        assert await mine.get_by_role("button", name="Deny").is_visible()
        SHOTS.mkdir(parents=True, exist_ok=True)
        await mine.screenshot(path=str(SHOTS / "four-eyes-own-call.png"))

        theirs = other.locator("li.call")
        await theirs.wait_for()
        assert await theirs.locator(".four-eyes-note").count() == 0
        await theirs.screenshot(path=str(SHOTS / "four-eyes-other-reviewer.png"))
        await theirs.get_by_role("button", name="Allow", exact=True).click()
        await mine.wait_for(state="detached", timeout=5000)  # gone from the requester's page too
    assert not outcome["result"].is_error, text_of(outcome["result"])
    assert [c["tool"] for c in b.upstream_calls()] == ["write_file"]
    call = await reported(str(ToolCall.objects.get(team=team.team, tool="write_file").pk))
    assert call.decided_by == team.reviewer2 and call.requester == team.reviewer

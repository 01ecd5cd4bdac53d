"""The reviewer's page in a real headless Chromium: log in, see calls arrive live, decide them."""

from __future__ import annotations

import anyio

from approvals.models import ToolCall
from tests.e2e.conftest import ARTIFACTS, SignoffServer, TeamSetup, bridge, browser_login, reported, text_of

HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'


async def test_reviewer_allows_a_call_in_the_browser_and_the_model_gets_the_result(
    signoff: SignoffServer, team: TeamSetup, browser, tmp_path
) -> None:
    page = await browser_login(browser, signoff, team.reviewer)
    # The Content-Security-Policy (docs/security.md) blocks nothing the pages need: Chromium reports every
    # violation on the console ("Refused to … because it violates the following Content Security Policy").
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    await page.reload()
    await page.wait_for_selector("#socket-status[data-state=live]")
    assert await page.text_content("#queue-empty") is not None
    async with (
        bridge(tmp_path, url=signoff.url, token=team.raw_token) as b,
        anyio.create_task_group() as tasks,
    ):
        outcome: dict = {}

        async def call() -> None:
            outcome["result"] = await b.session.call_tool("echo", {"text": HOSTILE})

        tasks.start_soon(call)
        card = page.locator("li.call")
        await card.wait_for()
        assert await card.locator(".call-tool").text_content() == "echo"
        assert await card.locator(".call-requester").text_content() == team.member.email
        # Untrusted arguments are shown as text, never run as markup.
        assert HOSTILE.replace('"', '\\"') in await card.locator(".call-arguments").text_content()
        assert await page.evaluate("window.__pwned") is None
        assert await page.locator(".call-arguments img, .call-arguments script").count() == 0
        assert await page.title() == "(1) Queue · " + team.team.name + " · Signoff"
        assert await page.text_content("#pending-count") == "1"
        assert "expires in" in await card.locator(".call-deadline").text_content()
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "queue-held-call.png"), full_page=True)
        assert b.upstream_calls() == []
        await card.get_by_role("button", name="Allow", exact=True).click()
        await card.wait_for(state="detached")
    assert text_of(outcome["result"]) == HOSTILE
    assert len(b.upstream_calls()) == 1
    call = await reported(str(ToolCall.objects.get(team=team.team).pk))
    assert call.state == "completed" and call.decided_by == team.reviewer

    await page.click("text=History")
    row = page.locator("table.history tbody tr").first
    assert "Completed" in await row.text_content()
    assert await page.evaluate("window.__pwned") is None
    await page.screenshot(path=str(ARTIFACTS / "history.png"), full_page=True)
    assert not [text for text in console if "Content Security Policy" in text], console


async def test_a_decision_removes_the_call_from_every_other_reviewers_page_at_once(
    signoff: SignoffServer, team: TeamSetup, browser, tmp_path
) -> None:
    first = await browser_login(browser, signoff, team.reviewer)
    second = await browser_login(browser, signoff, team.reviewer2)
    for page in (first, second):
        await page.wait_for_selector("#socket-status[data-state=live]")
    async with (
        bridge(tmp_path, url=signoff.url, token=team.raw_token) as b,
        anyio.create_task_group() as tasks,
    ):
        outcome: dict = {}

        async def call() -> None:
            outcome["result"] = await b.session.call_tool("write_file", {"path": "/srv/a", "content": "b"})

        tasks.start_soon(call)
        await first.locator("li.call").wait_for()
        await second.locator("li.call").wait_for()
        await first.fill("li.call input[name=reason]", "not on a Friday")
        await first.get_by_role("button", name="Deny").click()
        # The other reviewer's page drops the card live, without a reload.
        await second.locator("li.call").wait_for(state="detached", timeout=5000)
        assert await second.text_content("#pending-count") == "0"
        assert await second.is_visible("#queue-empty")
    assert outcome["result"].is_error and "not on a Friday" in text_of(outcome["result"])
    assert b.upstream_calls() == []

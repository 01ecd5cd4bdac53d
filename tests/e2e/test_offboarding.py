"""Offboarding takes effect at once: removing a member or revoking a token closes bridges and denies calls.

With Redis the admin acts on one Daphne (``admin_server``) while the bridge is connected to another (the
channel layer carries it across); on the embedded default both are the same process. The 1 s bound across
processes is measured in ``test_revocation_cross_process.py``.
"""

from __future__ import annotations

import contextlib
import time

import anyio

from approvals.models import BridgeToken, Membership, ToolCall
from tests.e2e.conftest import (
    ARTIFACTS,
    SignoffServer,
    TeamSetup,
    bridge,
    browser_login,
    text_of,
)

# Far below the bridge's 15 s status poll: only a pushed event can explain an answer this fast.
AT_ONCE = 5.0


async def hold_call_then(b, action) -> tuple[object, float]:
    """Start a call, wait until it is held, run ``action``, return the call's result and how long it took."""
    outcome: dict = {}
    async with anyio.create_task_group() as tasks:

        async def call() -> None:
            outcome["result"] = await b.session.call_tool("write_file", {"path": "/srv/x", "content": "y"})
            outcome["done"] = time.monotonic()

        tasks.start_soon(call)
        with anyio.fail_after(10):
            while not ToolCall.objects.filter(
                state="pending", tool="write_file", token__user__email__startswith="dev-"
            ).exists():
                await anyio.sleep(0.05)
        started = time.monotonic()
        await action()
    return outcome["result"], outcome["done"] - started


async def test_removing_a_member_in_the_browser_closes_their_bridge_and_denies_their_call_at_once(
    signoff: SignoffServer, admin_server: SignoffServer, team: TeamSetup, browser, tmp_path
) -> None:
    page = await browser_login(browser, admin_server, team.reviewer)  # the team's admin
    page.on("dialog", lambda dialog: dialog.accept())  # "Remove …? Their tokens here are revoked…"
    await page.goto(admin_server.url + "/members/")
    row = page.locator(f"tr[data-member='{team.member.username}']")
    await row.wait_for()
    async with bridge(tmp_path, url=signoff.url, token=team.raw_token) as b:

        async def remove() -> None:
            await row.get_by_role("button", name="Remove").click()
            await page.wait_for_selector(".flash-success")

        result, took = await hold_call_then(b, remove)
        after = await b.session.call_tool("echo", {"text": "still here?"})
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "members-after-removal.png"), full_page=True)
    assert result.is_error and "removed from the team" in text_of(result), text_of(result)
    assert took < AT_ONCE
    assert after.is_error and "not run" in text_of(after)
    assert b.upstream_calls() == []
    assert not Membership.objects.filter(team=team.team, user=team.member).exists()
    assert BridgeToken.objects.get(pk=team.token.pk).revoked_at is not None
    assert "closed this bridge" in b.stderr() or "refused" in b.stderr()


async def test_revoking_a_token_on_the_tokens_page_denies_its_held_call_at_once(
    signoff: SignoffServer, admin_server: SignoffServer, team: TeamSetup, browser, tmp_path
) -> None:
    page = await browser_login(browser, admin_server, team.reviewer)
    page.on("dialog", lambda dialog: dialog.accept())
    await page.goto(admin_server.url + "/tokens/")
    row = page.locator(f"tr[data-token='{team.token.prefix}']")
    await row.wait_for()
    async with bridge(tmp_path, url=signoff.url, token=team.raw_token) as b:

        async def revoke() -> None:
            await row.get_by_role("button", name="Revoke").click()
            await page.wait_for_selector(".flash-success")

        result, took = await hold_call_then(b, revoke)
    assert result.is_error and "not run" in text_of(result)
    assert took < AT_ONCE
    assert b.upstream_calls() == []
    assert "revoked" in await page.locator(f"tr[data-token='{team.token.prefix}']").text_content()


async def test_a_member_issues_a_token_in_the_browser_and_it_works_in_a_bridge(
    signoff: SignoffServer, team: TeamSetup, browser, tmp_path
) -> None:
    page = await browser_login(browser, signoff, team.member)
    assert page.url == signoff.url + "/tokens/"  # a plain member lands on their tokens
    await page.fill("input[name=name]", "laptop, Claude Desktop")
    await page.select_option("select[name=expires_in_days]", "30")
    await page.click("text=Issue token")
    raw = await page.input_value("#raw-token")
    assert raw.startswith("sgo_")
    desktop = await page.text_content("#snippet-desktop")
    assert raw in desktop and '"command": "mcpbridge"' in desktop
    assert f'"SIGNOFF_URL": "{signoff.url}"' in desktop
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "token-issued.png"), full_page=True)
    await page.goto(signoff.url + "/tokens/")
    assert raw not in await page.content()  # shown once, never again
    with contextlib.suppress(Exception):
        await page.close()
    async with bridge(tmp_path, url=signoff.url, token=raw, bridge_args=("--client-timeout", "0.5")) as b:
        held = await b.session.call_tool("echo", {"text": "with my new token"})
    assert "still waiting for approval" in text_of(held)
    token = BridgeToken.objects.get(name="laptop, Claude Desktop")
    assert token.user == team.member and token.expires_at is not None and token.last_used_at is not None


async def test_a_token_stops_at_its_expiry_closing_its_bridge(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from approvals.services.tokens import token_issue

    token, raw = token_issue(team=team.team, user=team.member, name="short-lived")
    async with bridge(tmp_path, url=signoff.url, token=raw) as b:
        # It expires once its bridge is connected (however long a loaded machine took to start it).
        with anyio.fail_after(15):
            while BridgeToken.objects.get(pk=token.pk).last_used_at is None:
                await anyio.sleep(0.1)
        BridgeToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() + timedelta(seconds=2))
        with anyio.fail_after(30):  # the server's sweeper (or Celery beat) revokes it within seconds
            result = await b.session.call_tool("write_file", {"path": "/srv/x", "content": "y"})
        after = await b.session.call_tool("echo", {"text": "again"})
    assert result.is_error and "the token expired" in text_of(result)
    assert after.is_error and "not run" in text_of(after)
    assert b.upstream_calls() == []

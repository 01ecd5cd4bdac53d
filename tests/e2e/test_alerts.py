"""Alerts through the real bridge: a rug pull (a tool that changes its own definition) raises a
``tool_changed`` alert, which the team's admin sees appear live on the open queue page's Alerts badge, then
on the Alerts page in Chromium, and acknowledges."""

from __future__ import annotations

from pathlib import Path

import anyio
import mcp.types as types

from approvals.models import Alert, AuditEvent, Rule
from tests.e2e.conftest import SignoffServer, TeamSetup, bridge, browser_login, text_of

SHOTS = Path("/tmp/shots")


async def test_a_changed_tool_definition_alerts_the_admin_who_acknowledges_it_in_the_browser(
    signoff: SignoffServer, team: TeamSetup, browser, tmp_path
) -> None:
    Rule.objects.create(team=team.team, effect="allow", server="test", tool="*")
    page = await browser_login(browser, signoff, team.reviewer)  # the team's admin, on the queue page
    await page.goto(f"{signoff.url}/?team={team.team.slug}")
    await page.wait_for_selector("#socket-status[data-state=live]")
    assert await page.locator("nav .nav-badge").count() == 0
    changed = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with bridge(
        tmp_path,
        url=signoff.url,
        token=team.raw_token,
        bridge_args=("--client-timeout", "1"),
        message_handler=on_message,
    ) as b:
        assert text_of(await b.session.call_tool("echo", {"text": "before"})) == "before"
        assert Alert.objects.filter(team=team.team).count() == 0  # first sight of the server: trusted
        await b.session.call_tool("mutate", {})
        with anyio.fail_after(10):
            await changed.wait()
        with anyio.fail_after(15):
            while not Alert.objects.filter(team=team.team, kind="tool_changed").exists():
                await anyio.sleep(0.1)
    alert = Alert.objects.get(team=team.team, kind="tool_changed")
    assert (alert.key, alert.state, alert.count) == ("test/echo", "open", 1)
    assert AuditEvent.objects.filter(team=team.team, kind="alert.raised", data__alert=alert.pk).exists()

    badge = page.locator("nav .nav-badge")  # pushed to the open page: no reload
    await badge.wait_for(timeout=10_000)
    assert (await badge.text_content() or "").strip() == "1"
    assert await badge.get_attribute("title") == "1 open alert"
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "alerts-badge-live.png"))
    await page.click("nav >> text=Alerts")
    row = page.locator(f"tr.alert-row[data-alert='{alert.pk}']")
    await row.wait_for()
    assert await row.get_attribute("data-state") == "open"
    text = await row.text_content() or ""
    assert "Tool definition changed" in text and "“echo”" in text and "“test”" in text
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "alerts-open.png"), full_page=True)

    await row.locator("button", has_text="Acknowledge").click()
    await page.wait_for_selector(".flash-success")
    acknowledged = page.locator(f"tr.alert-row[data-alert='{alert.pk}']")
    assert await acknowledged.get_attribute("data-state") == "acknowledged"
    assert await page.locator("nav .nav-badge").count() == 0
    await page.screenshot(path=str(SHOTS / "alerts-acknowledged.png"), full_page=True)

    alert.refresh_from_db()
    assert (alert.state, alert.acknowledged_by) == ("acknowledged", team.reviewer)
    event = AuditEvent.objects.get(team=team.team, kind="alert.acknowledged")
    assert (event.actor_id, event.data["alert"]) == (team.reviewer.pk, alert.pk)

    # The thresholds are the team's settings.
    await page.click("nav >> text=Settings")
    await page.fill("input[name=alert_calls_per_token_hour]", "50")
    await page.click("text=Save settings")
    await page.wait_for_selector(".flash-success")
    await page.screenshot(path=str(SHOTS / "alerts-settings.png"), full_page=True)
    team.team.refresh_from_db()
    assert (team.team.alert_calls_per_token_hour, team.team.alert_denials_per_10_minutes) == (50, 20)

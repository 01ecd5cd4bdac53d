"""Rate limits through the real bridge (issue 5, point 1): the call over the limit is denied at once, the
model reads the limit and its reset, and the upstream never sees the call; one limit counted by two Daphne
processes (with ``REDIS_URL``: ``signoff`` and ``admin_server``, counting in Redis; on the embedded default
both fixtures are the one process, and the same test runs there).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import anyio

from approvals.models import Alert, ToolCall
from approvals.services.limits import limit_create
from approvals.services.rules import rule_create
from approvals.services.tokens import token_issue
from tests.e2e.conftest import ARTIFACTS, SignoffServer, TeamSetup, bridge, browser_login, text_of

SHOTS = Path("/tmp/shots")
RESET = re.compile(r"resets at \d\d:\d\d:00 UTC \(in \d+ s\)")


async def fresh_minute() -> None:
    """Start near the beginning of a UTC minute, so that the calls below fall in one window."""
    second = time.time() % 60
    if second > 45:
        await anyio.sleep(60.2 - second)


def ran(*bridges: Any) -> list[str]:
    return [call["arguments"]["text"] for b in bridges for call in b.upstream_calls()]


async def test_the_call_over_a_per_token_limit_is_denied_with_the_limit_and_its_reset(
    signoff: SignoffServer, team: TeamSetup, tmp_path, browser
) -> None:
    rule_create(team=team.team, by=team.reviewer, effect="allow", server="test", tool="*")
    limit = limit_create(
        team=team.team, by=team.reviewer, scope="token", server="test", window="minute", max_calls=2
    )
    await fresh_minute()
    async with bridge(tmp_path, url=signoff.url, token=team.raw_token) as b:
        first = await b.session.call_tool("echo", {"text": "one"})
        second = await b.session.call_tool("echo", {"text": "two"})
        third = await b.session.call_tool("echo", {"text": "three"})
        assert (text_of(first), text_of(second)) == ("one", "two")  # a rule allows them, the limit counts
        assert third.is_error
        message = text_of(third)
        assert message.startswith(
            f"The call was not run. Signoff: rate limit #{limit.pk}: 2 calls per minute per token on test/* "
            "reached; resets at "
        ), message
        assert RESET.search(message), message
        assert ran(b) == ["one", "two"]  # the upstream never ran the third
    denied = ToolCall.objects.get(team=team.team, state="denied")
    assert denied.decided_via == "system" and denied.arguments == {"text": "three"}
    alert = Alert.objects.get(team=team.team, kind="rate_limit")
    assert alert.count == 1 and alert.key == f"{limit.pk}:{team.token.pk}"

    # The admin's Limits page: the limit, its count in this window, and the controls.
    page = await browser_login(browser, signoff, team.reviewer)
    await page.goto(signoff.url + "/rules/")
    await page.click("text=Rate limits")
    await page.wait_for_url(signoff.url + "/limits/")
    row = page.locator(f"tr[data-limit='{limit.pk}']")
    usage = " ".join((await row.locator(".limit-usage").text_content() or "").split())
    assert usage.startswith("100% 2 / 2 (token “laptop”) resets "), usage
    SHOTS.mkdir(parents=True, exist_ok=True)
    ARTIFACTS.mkdir(exist_ok=True)
    for folder in (SHOTS, ARTIFACTS):
        await page.screenshot(path=str(folder / "limits.png"), full_page=True)
    await page.click("text=New limit")
    await page.fill("input[name=max_calls]", "500")
    await page.select_option("select[name=window]", "hour")
    await page.select_option("select[name=scope]", "team")
    await page.fill("input[name=note]", "the team's hourly budget")
    for folder in (SHOTS, ARTIFACTS):
        await page.screenshot(path=str(folder / "limits-new.png"), full_page=True)
    await page.click("button[type=submit]")
    await page.wait_for_url(signoff.url + "/limits/")
    assert "is saved" in (await page.locator(".flash-success").text_content() or "")
    assert await page.locator("table.limits tbody tr").count() == 2
    await page.context.close()


async def test_one_limit_is_counted_by_two_server_processes(
    signoff: SignoffServer, admin_server: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    rule_create(team=team.team, by=team.reviewer, effect="allow", server="test", tool="echo")
    limit = limit_create(team=team.team, by=team.reviewer, scope="team", window="minute", max_calls=3)
    _, other_raw = token_issue(team=team.team, user=team.reviewer2, name="second laptop")
    await fresh_minute()
    async with (
        bridge(tmp_path, url=signoff.url, token=team.raw_token) as a,
        bridge(tmp_path, url=admin_server.url, token=other_raw) as b,
    ):
        results = [
            await a.session.call_tool("echo", {"text": "a1"}),
            await b.session.call_tool("echo", {"text": "b1"}),
            await a.session.call_tool("echo", {"text": "a2"}),
            await b.session.call_tool("echo", {"text": "b2"}),  # the team's fourth: over the limit
            await a.session.call_tool("echo", {"text": "a3"}),
        ]
        assert [r.is_error for r in results] == [False, False, False, True, True]
        for denied in results[3:]:
            assert f"rate limit #{limit.pk}: 3 calls per minute per team on */* reached" in text_of(denied)
        assert sorted(ran(a, b)) == ["a1", "a2", "b1"]
    denied_calls = ToolCall.objects.filter(team=team.team, state="denied")
    assert sorted(c.arguments["text"] for c in denied_calls) == ["a3", "b2"]
    alert = Alert.objects.get(team=team.team, kind="rate_limit")  # one alert for both processes' hits
    assert alert.count == 2 and alert.key == f"{limit.pk}:{team.team.pk}"

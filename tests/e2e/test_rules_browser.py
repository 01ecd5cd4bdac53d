"""An admin writes a rule in the browser, tries it in the dry run, and the bridge's next call obeys it."""

from __future__ import annotations

import json

from approvals.models import Rule
from tests.e2e.conftest import ARTIFACTS, SignoffServer, TeamSetup, bridge, browser_login, text_of


async def test_admin_creates_a_constrained_rule_dry_runs_it_and_the_bridge_obeys(
    signoff: SignoffServer, team: TeamSetup, browser, tmp_path
) -> None:
    page = await browser_login(browser, signoff, team.reviewer)  # the team's admin
    await page.goto(signoff.url + "/rules/new/")
    await page.select_option("select[name=effect]", "allow")
    await page.fill("input[name=server]", "test")
    await page.fill("input[name=tool]", "write_file")
    await page.fill(
        "textarea[name=constraints]", json.dumps([{"path": "path", "op": "within", "value": "/srv/project"}])
    )
    await page.fill("input[name=note]", "project files only")
    await page.click("text=Create rule")
    await page.wait_for_selector(".flash-success")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.goto(signoff.url + "/rules/")
    await page.screenshot(path=str(ARTIFACTS / "rules-list.png"), full_page=True)
    assert "project files only" in await page.content()

    await page.goto(signoff.url + "/rules/dry-run/")
    await page.fill("input[name=server]", "test")
    await page.fill("input[name=tool]", "write_file")
    await page.fill(
        "textarea[name=arguments]", json.dumps({"path": "/srv/project/../../etc/x", "content": "y"})
    )
    await page.click("text=Try it")
    result = page.locator(".dry-run-result")
    await result.wait_for()
    assert await result.get_attribute("data-outcome") == "review"
    await page.screenshot(path=str(ARTIFACTS / "rules-dry-run.png"), full_page=True)

    async with bridge(
        tmp_path, url=signoff.url, token=team.raw_token, bridge_args=("--client-timeout", "1")
    ) as b:
        inside = await b.session.call_tool("write_file", {"path": "/srv/project/ok.txt", "content": "z"})
        outside = await b.session.call_tool(
            "write_file", {"path": "/srv/project/../../etc/x", "content": "y"}
        )
    assert text_of(inside) == "wrote 1 bytes to /srv/project/ok.txt"
    assert "still waiting for approval" in text_of(outside)
    rule = Rule.objects.get(team=team.team)
    assert rule.created_by == team.reviewer and rule.calls.count() == 1

"""Issue 8 through the real bridge and the real UI: a published server started with a too-broad root and a
secret in its arguments, in a team that uses only approved servers. The bridge is told it is not approved
and every call is denied naming whom to ask; the admin sees the least-privilege warnings in Chromium, signs
the security checklist off, and the same bridge's next call runs. The secret never reaches Signoff."""

from __future__ import annotations

import json
from pathlib import Path

import anyio

from approvals.models import AuditEvent, Rule, ServerReview, Team, Upstream, UpstreamUse
from tests.e2e.conftest import PYTHON, UPSTREAM, SignoffServer, TeamSetup, bridge, browser_login, text_of

SHOTS = Path("/tmp/shots")
SECRET = "ghp_" + "Q7x2Lm9Tq4Wv7Yb1Nc3Rd5Hs6Jg0Zx8f0Q2k"
NAME = "review-files"


async def recorded_with_command() -> Upstream:
    with anyio.fail_after(15):
        while True:
            found = Upstream.objects.filter(name=NAME).first()
            if found is not None and "command" in found.reported:
                return found
            await anyio.sleep(0.1)


async def stderr_says(b: object, text: str) -> str:
    with anyio.fail_after(15):
        while text not in (err := b.stderr()):  # type: ignore[attr-defined]
            await anyio.sleep(0.1)
    return err


async def test_an_unapproved_server_is_refused_until_an_admin_signs_its_checklist_off(
    signoff: SignoffServer, team: TeamSetup, browser, tmp_path
) -> None:
    Team.objects.filter(pk=team.team.pk).update(require_reviewed_servers=True)
    Rule.objects.create(team=team.team, effect="allow", server=NAME, tool="echo")
    upstream = ["--", PYTHON, str(UPSTREAM), "--root", "/", "--api-key", SECRET]
    async with bridge(tmp_path, url=signoff.url, token=team.raw_token, name=NAME, upstream=upstream) as b:
        stderr = await stderr_says(b, "server_not_approved")
        assert f"the server '{NAME}' is not approved" in stderr and team.reviewer.email in stderr

        refused = await b.session.call_tool("echo", {"text": "hi"})
        assert refused.is_error
        assert f"the server '{NAME}' is not approved for use in the team {team.team.name}" in text_of(refused)
        assert team.reviewer.email in text_of(refused)  # whom to ask
        assert b.upstream_calls() == [], "a call to an unapproved server must not reach it"
        recorded = await recorded_with_command()
        assert recorded.command[-4:] == ["--root", "/", "--api-key", "[masked]"]

        page = await browser_login(browser, signoff, team.reviewer)  # the team's admin
        await page.click("nav >> text=Inventory")
        row = page.locator(f"tr.inventory-row[data-server='{NAME}']")
        await row.wait_for()
        assert "Not reviewed" in (await row.locator(".inventory-status").text_content() or "")
        assert "2 warnings" in (await row.locator(".inventory-warnings").text_content() or "")
        await page.click("text=With warnings only")
        await page.click("button:has-text('Filter')")
        await row.wait_for()
        await row.locator("a", has_text=NAME).click()
        await page.wait_for_selector("h1 >> text=" + NAME)
        broad = page.locator(".privilege-warning[data-warning='broad_root']")
        broad_text = await broad.text_content() or ""
        assert "'/'" in broad_text and "whole disk" in broad_text
        secret = page.locator(".privilege-warning[data-warning='secret_in_arguments']")
        assert "environment variable" in (await secret.text_content() or "")
        assert "every call to" in (await page.locator(".server-review").text_content() or "")

        # The checklist: a "no" is accepted only with a note saying why.
        for radio in await page.locator(".checklist-answer input[value='yes']").all():
            await radio.check()
        await page.locator("tr[data-question='least_privilege'] input[value='no']").check()
        await page.click("button:has-text('Approve this server')")
        await page.wait_for_selector("tr[data-question='least_privilege'].has-error")
        assert "why the risk is accepted" in (await page.locator(".form-error").text_content() or "")
        assert not ServerReview.objects.exists()
        assert await page.locator("tr[data-question='audited'] input[value='yes']").is_checked()  # kept
        await page.fill(
            "input[name='note-least_privilege']", "rooted at / for the demo machine only; narrowing next week"
        )
        await page.click("button:has-text('Approve this server')")
        await page.wait_for_selector(".flash-success")
        assert "Approved" in (await page.locator(".review-status").text_content() or "")
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "server-review.png"), full_page=True)

        review = ServerReview.objects.get()
        assert review.approved and review.author_id == team.reviewer.pk
        assert review.answers["least_privilege"]["answer"] == "no"
        event = AuditEvent.objects.get(team=team.team, kind="upstream.reviewed")
        assert event.data["approved"] is True and event.data["no"] == ["least_privilege"]

        # The same bridge, not restarted: its calls now run.
        allowed = await b.session.call_tool("echo", {"text": "hi"})
        assert text_of(allowed) == "hi"
        assert [call["tool"] for call in b.upstream_calls()] == ["echo"]

    stored = json.dumps(
        [*Upstream.objects.values(), *UpstreamUse.objects.values(), *ServerReview.objects.values()],
        default=str,
    )
    assert SECRET not in stored and SECRET not in json.dumps(list(AuditEvent.objects.values("data")))

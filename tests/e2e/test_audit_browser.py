"""An auditor in a real headless Chromium: filters the Audit page by tool, searches an argument, downloads
the CSV export, and never sees the secret an agent put in a call's arguments (on screen or in the file)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from django.utils import timezone

from approvals.models import AuditEvent
from approvals.services.calls import call_decide, call_submit
from approvals.services.teams import member_add, user_get_or_create
from tests.e2e.conftest import ARTIFACTS, PASSWORD, SignoffServer, TeamSetup, browser_login

SHOTS = Path("/tmp/shots")
SECRET = "sgo_0badc0de_Zt6qk2Y3vQ9pL0mN8xR4sW7uE1iO5aD3"
SECRET_TAIL = SECRET[len("sgo_0badc0de") :]
HOSTILE = '<img src=x onerror="window.__pwned=1">'


def _submit(team: TeamSetup, tool: str, arguments: dict) -> str:
    return str(
        call_submit(
            token=team.token, server="files", tool=tool, arguments=arguments, tool_hash="a" * 64
        ).call.pk
    )


async def _shoot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SHOTS / name), full_page=True)
    await page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def _calls_with_a_secret(team: TeamSetup) -> tuple[Any, str]:
    """An auditor, and three calls of the team: one of them leaks a bridge token, and was denied.
    Made through the services, in a thread of their own (they broadcast, which needs no running loop)."""
    auditor = user_get_or_create(email=f"aud-{team.team.slug}@example.com", password=PASSWORD)
    member_add(team=team.team, user=auditor, role="auditor")
    _submit(team, "read_file", {"path": "/srv/project/README.md"})
    leaky = _submit(
        team,
        "write_file",
        {"path": "/srv/project/deploy.env", "content": f"SIGNOFF_TOKEN={SECRET}\nDEBUG=0", "note": HOSTILE},
    )
    call_decide(call_id=leaky, reviewer=team.reviewer, allow=False, reason="no credentials in the repo")
    _submit(team, "write_file", {"path": "/srv/project/notes.txt", "content": "hello"})
    return auditor, leaky


async def test_an_auditor_filters_searches_and_exports_with_secrets_masked(
    signoff: SignoffServer, team: TeamSetup, browser
) -> None:
    auditor, leaky = await sync_to_async(_calls_with_a_secret)(team)

    page = await browser_login(browser, signoff, auditor)
    await page.click("nav.nav >> text=Audit")
    await page.wait_for_selector("table.audit-calls")
    assert await page.locator("table.audit-calls tbody tr").count() == 3
    assert "3 calls." in await page.text_content("#audit-count")

    await page.fill("input[name=tool]", "write_file")
    await page.fill("input[name=q]", "deploy.env")
    await page.click("button:has-text('Filter')")
    await page.wait_for_url(lambda url: "q=deploy.env" in url)
    rows = page.locator("table.audit-calls tbody tr")
    assert await rows.count() == 1
    row_text = await rows.first.text_content()
    assert "write_file" in row_text and "deploy.env" in row_text
    assert "sgo_0badc0de…[masked]" in row_text and SECRET_TAIL not in await page.content()
    assert await page.evaluate("window.__pwned") is None  # arguments are text, never markup
    await _shoot(page, "audit-calls.png")

    async with page.expect_download() as download_info:
        await page.click(".audit-export >> text=CSV")
    download = await download_info.value
    today = timezone.now().date().isoformat()
    assert download.suggested_filename == f"signoff-calls-{team.team.slug}-{today}.csv"
    text = Path(await download.path()).read_text(encoding="utf-8")
    exported = list(csv.DictReader(io.StringIO(text)))
    assert [(r["id"], r["tool"], r["state"]) for r in exported] == [(leaky, "write_file", "denied")]
    arguments = json.loads(exported[0]["arguments"])
    assert arguments["content"] == "SIGNOFF_TOKEN=sgo_0badc0de…[masked]\nDEBUG=0"
    assert SECRET_TAIL not in text and exported[0]["masked"] == "true"
    export = AuditEvent.objects.filter(team_id=team.team.pk, kind="audit.exported").get()
    assert export.actor_id == auditor.pk
    assert (export.data["what"], export.data["format"]) == ("calls", "csv")
    assert export.data["filters"] == {"tool": "write_file", "q": "deploy.env"}

    # The row's details: arguments, decision and the call's place in the audit chain.
    await rows.first.locator("text=Details").click()
    await page.wait_for_selector("#call-arguments")
    assert "sgo_0badc0de…[masked]" in await page.text_content("#call-arguments")
    assert "no credentials in the repo" in await page.text_content(".call-reason")
    assert await page.locator("table.audit-call-events tbody tr").count() == 2  # pending, denied
    assert SECRET_TAIL not in await page.content()
    await _shoot(page, "audit-call-detail.png")

    await page.goto(signoff.url + f"/audit/?team={team.team.slug}&what=events")
    await page.wait_for_selector("table.audit-events")
    assert await page.locator("td.audit-kind", has_text="audit.exported").count() == 1
    assert SECRET_TAIL not in await page.content()
    await _shoot(page, "audit-events.png")

    # History: auditors read it too (and see no button that would change anything).
    await page.click("nav.nav >> text=History")
    row = page.locator("table.history tbody tr").first
    assert "Denied" in await row.text_content()
    assert SECRET_TAIL not in await page.content()
    assert await page.locator("main form[method=post]").count() == 0
    await _shoot(page, "history-auditor.png")

    # A bad filter is a message on the page, not an error page.
    await page.goto(signoff.url + f"/audit/?team={team.team.slug}&since=yesterday")
    assert "Enter a date" in await page.text_content(".audit-filters")

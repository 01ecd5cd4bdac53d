"""The inventory through the real bridge (issue 8, points 1 and 5): a server started with a secret in its
arguments and one in its environment is listed with the argument masked and the variable's name only; the
secret never reaches Signoff's database; restarted with a new version, the change is in its history. The
admin sees both in Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from approvals.models import AuditEvent, Rule, Upstream, UpstreamChange, UpstreamUse
from tests.e2e.conftest import PYTHON, UPSTREAM, SignoffServer, TeamSetup, bridge, browser_login, text_of

SHOTS = Path("/tmp/shots")
SECRET = "sk-live-9c1f4e7a2b8d3f6e0a5c7b9d"
ENV_SECRET = "hunter2-env-value-never-sent"
NAME = "inv-files"


def upstream_command(version: str) -> list[str]:
    return ["--", PYTHON, str(UPSTREAM), "--api-key", SECRET, "--server-version", version]


async def reported(team: TeamSetup, version: str) -> Upstream:
    """The team's entry once the bridge's report of this version reached Signoff."""
    with anyio.fail_after(15):
        while True:
            found = Upstream.objects.filter(team=team.team, name=NAME, server_version=version).first()
            if found is not None and "command" in found.reported:
                return found
            await anyio.sleep(0.1)


def stored_text() -> str:
    """Everything the inventory and the audit log hold, as one text to search."""
    rows = [
        *Upstream.objects.values(),
        *UpstreamUse.objects.values(),
        *UpstreamChange.objects.values(),
        *AuditEvent.objects.values("data"),
    ]
    return json.dumps(rows, default=str)


async def test_the_inventory_shows_a_masked_server_and_its_version_history(
    signoff: SignoffServer, team: TeamSetup, browser, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INVENTORY_DB_PASSWORD", ENV_SECRET)  # the bridge hands its environment upstream
    Rule.objects.create(team=team.team, effect="allow", server=NAME, tool="echo")
    async with bridge(
        tmp_path, url=signoff.url, token=team.raw_token, name=NAME, upstream=upstream_command("1.0.0")
    ) as b:
        assert text_of(await b.session.call_tool("echo", {"text": "hi"})) == "hi"
        first = await reported(team, "1.0.0")
    assert first.transport == "stdio"
    assert first.command[-4:] == ["--api-key", "[masked]", "--server-version", "1.0.0"]
    assert "INVENTORY_DB_PASSWORD" in first.env_names and "SIGNOFF_TOKEN" not in first.env_names
    assert first.server_name == "signoff-test-upstream" and first.protocol_version
    assert "tools" in first.capabilities
    assert first.tools["write_file"]["annotations"] == {"destructiveHint": True}
    assert AuditEvent.objects.filter(team=team.team, kind="upstream.first_seen", data__server=NAME).exists()

    async with bridge(
        tmp_path, url=signoff.url, token=team.raw_token, name=NAME, upstream=upstream_command("2.0.0")
    ):
        await reported(team, "2.0.0")
    change = UpstreamChange.objects.get(upstream=first)
    assert {"field": "server_version", "before": "1.0.0", "after": "2.0.0"} in change.changes
    assert AuditEvent.objects.filter(team=team.team, kind="upstream.changed", data__server=NAME).exists()
    stored = stored_text()
    assert SECRET not in stored and ENV_SECRET not in stored

    page = await browser_login(browser, signoff, team.reviewer)  # the team's admin
    await page.click("nav >> text=Inventory")
    row = page.locator(f"tr.inventory-row[data-server='{NAME}']")
    await row.wait_for()
    text = await row.text_content() or ""
    assert "2.0.0" in text and "completed 1" in text
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "inventory.png"), full_page=True)

    await row.locator("a", has_text=NAME).click()
    await page.wait_for_selector("h1 >> text=" + NAME)
    command = await page.locator(".inventory-command").text_content() or ""
    assert "--api-key [masked]" in command and SECRET not in command
    env = await page.locator(".inventory-env").text_content() or ""
    assert "INVENTORY_DB_PASSWORD" in env and ENV_SECRET not in env
    marked = page.locator(".inventory-env code.env-secret", has_text="INVENTORY_DB_PASSWORD")
    assert await marked.count() == 1  # its name says it holds a secret
    history = await page.locator(".inventory-history").text_content() or ""
    assert "1.0.0 → 2.0.0" in history
    destructive = page.locator("tr[data-tool='write_file'] .hint-destructive")
    assert (await destructive.text_content() or "").strip() == "destructive"
    assert SECRET not in await page.content() and ENV_SECRET not in await page.content()
    await page.screenshot(path=str(SHOTS / "inventory-server.png"), full_page=True)

    await page.click("text=See this server's calls on the Audit page")
    await page.wait_for_url(lambda url: "/audit/" in url and f"server={NAME}" in url)
    assert await page.locator("text=echo").count() >= 1

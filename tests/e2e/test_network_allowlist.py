"""Network allowlists and trusted proxies with the real bridge, real Daphne processes and a headless Chromium.

A bridge whose token may connect only from other networks is refused at connect (``network_refused``, close
4407) and fails closed: every tool call gets a tool error saying why, the upstream never sees a call, the
refusal is audited once (the bridge does not retry) and the team's admins are alerted. Behind a reverse proxy
the forwarded address counts only when the proxy is in ``SIGNOFF_TRUSTED_PROXIES``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import websockets

from approvals.models import Alert, AuditEvent, BridgeToken, ToolCall
from approvals.services.networks import token_networks_change
from approvals.services.tokens import token_issue
from mcpbridge import protocol
from tests.e2e.conftest import SignoffServer, TeamSetup, bridge, browser_login, running_server, text_of

SHOTS = Path("/tmp/shots")


def _limited_token(team: TeamSetup, networks: list[str], name: str = "ci") -> tuple[BridgeToken, str]:
    token, raw = token_issue(team=team.team, user=team.member, name=name)
    token_networks_change(token=token, networks=networks, by=team.reviewer)  # the team's admin
    return token, raw


async def test_a_bridge_from_outside_the_tokens_networks_fails_closed_and_says_why(
    signoff: SignoffServer, team: TeamSetup, tmp_path: Path
) -> None:
    token, raw = _limited_token(team, ["10.0.0.0/8"])
    async with bridge(tmp_path, url=signoff.url, token=raw, name="files") as b:
        first = await b.session.call_tool("write_file", {"path": "/srv/x", "content": "y"})
        again = await b.session.call_tool("echo", {"text": "and this one?"})
    for result in (first, again):
        text = text_of(result)
        assert result.is_error and text.startswith("The call was not run"), text
        assert "connects from 127.0.0.1, outside the networks this token may connect from" in text, text
        assert "(10.0.0.0/8)" in text and f"ask the admins of the team “{team.team.name}”" in text, text
    assert b.upstream_calls() == []
    assert not ToolCall.objects.filter(token=token).exists()
    events = AuditEvent.objects.filter(kind="token.network_refused", token_id=token.pk)
    assert [event.data["address"] for event in events] == ["127.0.0.1"]  # final: no retry
    alert = Alert.objects.get(team=team.team, kind=Alert.Kind.NETWORK, token=token)
    assert alert.state == Alert.State.OPEN and "127.0.0.1" in alert.message
    stderr = b.stderr()
    assert "Signoff refused this bridge" in stderr and "127.0.0.1" in stderr, stderr


async def test_a_bridge_from_inside_the_tokens_networks_works(
    signoff: SignoffServer, team: TeamSetup, tmp_path: Path
) -> None:
    token, raw = _limited_token(team, ["127.0.0.0/8"])
    async with bridge(
        tmp_path, url=signoff.url, token=raw, name="files", bridge_args=("--client-timeout", "0.5")
    ) as b:
        held = await b.session.call_tool("echo", {"text": "from loopback"})
    assert "still waiting for approval" in text_of(held)
    assert ToolCall.objects.get(token=token).server == "files"
    assert not AuditEvent.objects.filter(kind="token.network_refused", token_id=token.pk).exists()


# --- a reverse proxy's forwarded address ----------------------------------------------------------------
def _hello() -> str:
    return protocol.encode(
        protocol.Hello(
            protocol=protocol.PROTOCOL_VERSION,
            bridge_version="e2e",
            upstream=protocol.UpstreamInfo(name="files", transport="stdio"),
            tools=[],
        )
    )


async def _connect(server: SignoffServer, raw: str, forwarded_for: str) -> tuple[dict[str, Any], int | None]:
    """Open /ws/bridge/ as a proxy would forward it; the first frame after the hello, and the close code if
    the server closed."""
    async with websockets.connect(
        f"ws://127.0.0.1:{server.port}/ws/bridge/",
        additional_headers={"Authorization": f"Bearer {raw}", "X-Forwarded-For": forwarded_for},
    ) as connection:
        # A refused bridge gets its error at once, maybe before the hello arrives: the frame stays readable.
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await connection.send(_hello())
        first = json.loads(await connection.recv())
        if first["type"] == "error":
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                await connection.recv()
            return first, connection.close_code
        return first, None


async def test_a_forwarded_address_counts_only_from_a_trusted_proxy(
    signoff: SignoffServer, team: TeamSetup
) -> None:
    token, raw = _limited_token(team, ["10.0.0.0/8"])
    # The shared server trusts no proxy: the header is the client's own claim, and 127.0.0.1 is refused.
    first, code = await _connect(signoff, raw, "10.1.2.3")
    assert (first["code"], code) == ("network_refused", protocol.CLOSE_NETWORK_REFUSED)
    assert "connects from 127.0.0.1" in first["message"]
    with running_server("trusted-proxy", SIGNOFF_TRUSTED_PROXIES="127.0.0.1/32") as proxied:
        first, code = await _connect(proxied, raw, "10.1.2.3")
        assert first["type"] == "welcome" and code is None, first
        token.refresh_from_db()
        assert token.last_used_ip == "10.1.2.3"
        # The right-most address that is no trusted proxy's counts, not one the client put first.
        first, code = await _connect(proxied, raw, "10.9.9.9, 192.0.2.7")
        assert (first["code"], code) == ("network_refused", protocol.CLOSE_NETWORK_REFUSED)
        assert "connects from 192.0.2.7" in first["message"]
    addresses = AuditEvent.objects.filter(kind="token.network_refused", token_id=token.pk).order_by("pk")
    assert [event.data["address"] for event in addresses] == ["127.0.0.1", "192.0.2.7"]


# --- the tokens page -----------------------------------------------------------------------------------
async def test_a_member_limits_a_tokens_networks_in_the_browser(
    signoff: SignoffServer, team: TeamSetup, browser: Any
) -> None:
    page = await browser_login(browser, signoff, team.member)
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    await page.goto(signoff.url + "/tokens/")
    row = page.locator("tr", has_text="laptop")
    assert (await row.locator(".token-networks-list").text_content()) == "the team's"
    await row.locator("input[name=networks]").fill("10.0.0.0/8 nonsense")
    await row.get_by_role("button", name="Save").click()
    refused = await page.text_content(".flash-error")
    assert "nothing changed" in refused and "'nonsense' is not a network" in refused, refused
    row = page.locator("tr", has_text="laptop")
    await row.locator("input[name=networks]").fill("10.1.2.3/8, 2001:db8::/32")
    await row.get_by_role("button", name="Save").click()
    assert "may now connect from 10.0.0.0/8, 2001:db8::/32" in await page.text_content(".flash-success")
    row = page.locator("tr", has_text="laptop")
    assert (await row.locator(".token-networks-list").text_content()) == "10.0.0.0/8, 2001:db8::/32"
    assert await row.locator("input[name=networks]").input_value() == "10.0.0.0/8 2001:db8::/32"
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "tokens-networks.png"), full_page=True)
    assert BridgeToken.objects.get(pk=team.token.pk).allowed_networks == ["10.0.0.0/8", "2001:db8::/32"]
    assert not violations, violations


async def test_an_admin_sets_the_teams_networks_and_approved_servers_only_in_the_browser(
    signoff: SignoffServer, team: TeamSetup, browser: Any
) -> None:
    page = await browser_login(browser, signoff, team.reviewer)  # the team's admin
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    await page.goto(signoff.url + "/settings/")
    await page.fill("textarea[name=allowed_networks_text]", "10.0.0.0/8\n192.168.1.7")
    await page.check("input[name=require_reviewed_servers]")
    await page.click("text=Save settings")
    assert "Settings saved" in await page.text_content(".flash-success")
    assert await page.input_value("textarea[name=allowed_networks_text]") == "10.0.0.0/8\n192.168.1.7/32"
    assert await page.is_checked("input[name=require_reviewed_servers]")
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "team-settings-networks.png"), full_page=True)
    team.team.refresh_from_db()
    assert team.team.allowed_networks == ["10.0.0.0/8", "192.168.1.7/32"]
    assert team.team.require_reviewed_servers
    assert not violations, violations

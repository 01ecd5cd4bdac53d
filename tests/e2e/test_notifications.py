"""Notifications end to end: a call held through the real bridge reaches a real HTTP receiver (in this test
process) as a signed webhook and as a Slack-compatible message; the receiver checks the signature and the
timestamp itself, with the documented recipe. On the embedded default Daphne delivers from a thread; with
PostgreSQL + Redis the real Celery worker does (the ``celery_worker`` fixture, started with ``signoff``).

The queue page in a real headless Chromium: the pending count in the tab title, a desktop notification and
the sound for a newly held call; the Notifications page: add a webhook, see its secret once, send a test
message, rotate the secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio

from approvals.models import NotificationChannel, ToolCall
from approvals.services import notifications
from tests.e2e.conftest import (
    ARTIFACTS,
    SignoffServer,
    TeamSetup,
    bridge,
    browser_login,
    reviewer_socket,
)

SHOTS = Path("/tmp/shots")
SECRET_ARGUMENT = "hunter2hunter2"


# --- the receiver: what a customer's endpoint does ------------------------------------------------------
def verify(secret: str, timestamp: str, signature: str, body: bytes) -> bool:
    """The recipe of docs/notifications.md, written out independently of Signoff's code."""
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
        return False  # stale or replayed
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest("sha256=" + expected, signature)


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    port: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # path -> status (default 200)
    got: list[Delivery] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Delivery]:
        return [d for d in self.got if d.path == path]

    async def wait_for(self, path: str, count: int = 1, timeout: float = 30.0) -> list[Delivery]:
        with anyio.fail_after(timeout):
            while len(self.at(path)) < count:
                await anyio.sleep(0.05)
        return self.at(path)


@contextlib.contextmanager
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.got.append(Delivery(self.path, dict(self.headers.items()), body))
            self.send_response(state.statuses.get(self.path, 200))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


async def channel_sent(channel: NotificationChannel, timeout: float = 15.0) -> NotificationChannel:
    """The channel once its delivery was recorded (after the receiver answered)."""
    with anyio.fail_after(timeout):
        while (row := NotificationChannel.objects.get(pk=channel.pk)).last_sent_at is None:
            await anyio.sleep(0.05)
    return row


# --- a held call reaches the receiver ----------------------------------------------------------------
async def test_a_held_call_reaches_a_signed_webhook_and_a_slack_channel(
    signoff: SignoffServer, team: TeamSetup, tmp_path: Path
) -> None:
    with receiver() as hook:
        webhook, secret = notifications.channel_create(
            team=team.team,
            by=team.reviewer,
            kind="webhook",
            name="ops endpoint",
            target=hook.url("/signoff/webhook"),
            events=["call.held"],
        )
        slack, _ = notifications.channel_create(
            team=team.team,
            by=team.reviewer,
            kind="slack",
            name="#reviews",
            target=hook.url("/slack/T000/B000"),
            events=["call.held", "alert"],
        )
        # Subscribed to alerts only: a held call is not for it.
        notifications.channel_create(
            team=team.team,
            by=team.reviewer,
            kind="slack",
            name="alerts",
            target=hook.url("/alerts"),
            events=["alert"],
        )
        assert secret
        async with (
            reviewer_socket(signoff, team.reviewer, team.team.slug) as reviewer,
            bridge(tmp_path, url=signoff.url, token=team.raw_token, name="files") as b,
            anyio.create_task_group() as tasks,
        ):
            outcome: dict[str, Any] = {}

            async def call() -> None:
                outcome["result"] = await b.session.call_tool(
                    "echo", {"text": f"deploy with password={SECRET_ARGUMENT}"}
                )

            tasks.start_soon(call)
            held = await reviewer.pending_call("echo")
            [signed] = await hook.wait_for("/signoff/webhook")
            [chat] = await hook.wait_for("/slack/T000/B000")
            answer = await reviewer.decide(held["id"], "deny", "not now")
            assert answer["type"] == "decided"

        # The signed webhook: a fresh timestamp, a valid signature, the call and its link.
        assert verify(
            secret, signed.headers["X-Signoff-Timestamp"], signed.headers["X-Signoff-Signature"], signed.body
        )
        assert not verify(
            "0" * 64,
            signed.headers["X-Signoff-Timestamp"],
            signed.headers["X-Signoff-Signature"],
            signed.body,
        )
        assert signed.headers["X-Signoff-Event"] == "call.held"
        body = signed.json()
        assert body["event"] == "call.held" and body["team"] == {
            "slug": team.team.slug,
            "name": team.team.name,
        }
        assert body["call"]["id"] == held["id"]
        assert (body["call"]["server"], body["call"]["tool"]) == ("files", "echo")
        assert body["call"]["requester"] == team.member.email
        assert body["link"].endswith(f"/?team={team.team.slug}#call-{held['id']}")
        assert body["call"]["url"].endswith(f"/calls/{held['id']}/")
        assert body["subject"] == f"Held: files/echo by {team.member.email}"
        assert body["id"] == signed.headers["X-Signoff-Delivery"]
        # The Slack-compatible one: the text with the link.
        text = chat.json()["text"]
        assert text.startswith(f"*Held: files/echo by {team.member.email}*")
        assert text.endswith(body["link"])
        # Arguments leave the server masked.
        for delivery in (signed, chat):
            assert SECRET_ARGUMENT not in delivery.body.decode()
        assert "password=[masked]" in body["call"]["arguments"]["text"]
        assert hook.at("/alerts") == []
        assert (await channel_sent(webhook)).last_error == ""
        assert (await channel_sent(slack)).last_error == ""
        assert ToolCall.objects.get(pk=held["id"]).state == "denied"


# --- the browser ---------------------------------------------------------------------------------------
RECORDER = """
window.__shown = [];
window.__played = 0;
const RealNotification = window.Notification;
if (RealNotification) {
  class Recorded {
    constructor(title, options) {
      window.__shown.push({ title, body: options && options.body, tag: options && options.tag });
    }
    addEventListener() {}
    close() {}
    static get permission() { return RealNotification.permission; }
    static requestPermission() { return RealNotification.requestPermission(); }
  }
  window.Notification = Recorded;
}
HTMLMediaElement.prototype.play = function () { window.__played += 1; return Promise.resolve(); };
"""


async def test_the_queue_counts_held_calls_in_the_title_and_notifies_the_desktop(
    signoff: SignoffServer, team: TeamSetup, browser: Any, tmp_path: Path
) -> None:
    page = await browser_login(browser, signoff, team.reviewer)
    await page.context.grant_permissions(["notifications"], origin=signoff.url)
    await page.context.add_init_script(RECORDER)
    await page.goto(f"{signoff.url}/?team={team.team.slug}")
    await page.wait_for_selector("#socket-status[data-state=live]")
    base_title = f"Queue · {team.team.name} · Signoff"
    assert await page.title() == base_title
    desktop = page.locator("#notify-desktop")
    sound = page.locator("#notify-sound")
    assert await desktop.text_content() == "Enable desktop notifications"
    await desktop.click()
    await page.wait_for_function(
        "document.getElementById('notify-desktop').getAttribute('aria-pressed') === 'true'"
    )
    assert await desktop.text_content() == "Desktop notifications: on"
    await sound.click()
    assert await sound.get_attribute("aria-pressed") == "true"
    played_sample = await page.evaluate("window.__played")
    assert played_sample == 1  # turning it on plays it once

    # Remembered in this browser: a reload keeps both on.
    await page.reload()
    await page.wait_for_selector("#socket-status[data-state=live]")
    assert await desktop.get_attribute("aria-pressed") == "true"
    assert await sound.get_attribute("aria-pressed") == "true"
    assert await page.evaluate("window.__shown.length") == 0

    async with (
        bridge(tmp_path, url=signoff.url, token=team.raw_token, name="files") as b,
        anyio.create_task_group() as tasks,
    ):

        async def call() -> None:
            await b.session.call_tool("echo", {"text": "<b>hello</b>"})

        tasks.start_soon(call)
        card = page.locator("li.call")
        await card.wait_for()
        await page.wait_for_function(f"document.title === {json.dumps('(1) ' + base_title)}")
        shown = await page.evaluate("window.__shown")
        assert shown == [
            {
                "title": "Held: files / echo",
                "body": f"{team.member.email} (token laptop) · 1 waiting",
                "tag": f"signoff-call-{await card.get_attribute('data-call-id')}",
            }
        ]
        assert await page.evaluate("window.__played") == 1  # this page's own count, after the reload
        assert await card.get_attribute("id") == f"call-{await card.get_attribute('data-call-id')}"
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "queue-notify.png"), full_page=True)
        await card.get_by_role("button", name="Deny").click()
        await card.wait_for(state="detached")
        await page.wait_for_function(f"document.title === {json.dumps(base_title)}")
    # Switching desktop notifications off is remembered too.
    await desktop.click()
    assert await desktop.get_attribute("aria-pressed") == "false"
    assert await page.evaluate("localStorage.getItem('signoff.notify.desktop')") == "off"


async def test_an_admin_manages_channels_on_the_notifications_page(
    signoff: SignoffServer, team: TeamSetup, browser: Any
) -> None:
    with receiver() as hook:
        hook.statuses["/broken"] = 500
        page = await browser_login(browser, signoff, team.reviewer)
        await page.goto(f"{signoff.url}/notifications/?team={team.team.slug}")
        assert "No channels yet" in await page.text_content("main")

        # A signed webhook: its secret is shown once, with the recipe.
        await page.select_option("select[name=kind]", "webhook")
        await page.fill("input[name=name]", "ops <endpoint>")
        await page.fill("input[name=target]", hook.url("/hook"))
        await page.check("input[name=events][value=alert]")
        await page.click("button:text('Add channel')")
        await page.wait_for_selector("#webhook-secret")
        secret = await page.input_value("#webhook-secret")
        channel = NotificationChannel.objects.get(team=team.team, kind="webhook")
        assert secret == channel.secret and channel.events == ["call.held", "alert"]
        assert "openssl dgst -sha256 -hmac" in await page.text_content("#recipe-shell")
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "notifications-secret.png"), full_page=True)
        await page.click("text=Back to the notifications")
        assert secret not in await page.content()

        # Test messages: delivered, signed with that secret; and a failing one shows its error.
        row = page.locator("tr", has_text="ops <endpoint>")
        await row.get_by_role("button", name="Send test message").click()
        assert "Test message delivered" in await page.text_content(".flash")
        [test] = hook.at("/hook")
        assert verify(
            secret, test.headers["X-Signoff-Timestamp"], test.headers["X-Signoff-Signature"], test.body
        )
        assert test.json()["event"] == "test"

        await page.select_option("select[name=kind]", "slack")
        await page.fill("input[name=name]", "broken chat")
        await page.fill("input[name=target]", hook.url("/broken"))
        await page.click("button:text('Add channel')")
        await (
            page.locator("tr", has_text="broken chat").get_by_role("button", name="Send test message").click()
        )
        assert "answered HTTP 500" in await page.text_content(".flash")

        await page.select_option("select[name=kind]", "email")
        await page.fill("input[name=name]", "reviewers by mail")
        await page.fill("input[name=target]", "rev@example.com, oncall@example.com")
        await page.click("button:text('Add channel')")
        assert "reviewers by mail" in await page.text_content("table.notify-channels")

        # An address that is not http(s) is refused with a reason.
        await page.select_option("select[name=kind]", "webhook")
        await page.fill("input[name=name]", "sneaky")
        await page.fill("input[name=target]", "file:///etc/passwd")
        await page.click("button:text('Add channel')")
        assert "Only http:// and https://" in await page.text_content("main")

        await page.goto(f"{signoff.url}/notifications/?team={team.team.slug}")
        await page.screenshot(path=str(SHOTS / "notifications.png"), full_page=True)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "notifications.png"), full_page=True)

        # Rotating asks first, then shows the new secret once.
        page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await row.get_by_role("button", name="Rotate secret").click()
        await page.wait_for_selector("#webhook-secret")
        rotated = await page.input_value("#webhook-secret")
        assert rotated != secret and rotated == NotificationChannel.objects.get(pk=channel.pk).secret

"""Offboarding crosses Daphne processes at once (DESIGN §5; issue 4).

With ``REDIS_URL`` set, the bridge and the reviewers' pages are connected to one Daphne (``signoff``, "B")
while the admin acts through another (``admin_server``, "A"): the event goes A → Redis → B. On the embedded
default (in-memory channel layer, one process) A and B are the same Daphne: the same tests then run within
that process.

The close is pushed: nothing polls for revoked tokens, so without the push the socket would stay open and the
10 s liveness bound below fails. How fast it is (well under the 1 s of the issue) is measured by
``bench/revocation.py`` and recorded in ``docs/performance.md``, not asserted here, where a loaded CI machine
would make a timed bound flaky.

The admin acts as a browser does, over HTTP on A: the tokens page's Revoke, the members page's Remove, and
Django's admin unticking *Active* on a user. The bridge's side is driven at the protocol level (a websocket
that says ``hello`` and holds a ``call``), so the moment its socket closes is measured exactly; what the real
``mcpbridge`` makes of that close is covered by ``test_offboarding.py``.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
import websockets
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from approvals.models import Membership, ToolCall
from approvals.services.teams import user_get_or_create
from mcpbridge import protocol
from tests.e2e.conftest import (
    PASSWORD,
    SignoffServer,
    TeamSetup,
    browser_login,
    reviewer_socket,
    session_cookie,
)

TOOL_HASH = "c" * 64


# --- the bridge's side, at the protocol level ---------------------------------------------------------------
@dataclass
class HeldBridge:
    """A bridge socket that holds one call; it records every frame and when and how its socket closed."""

    socket: Any
    call_id: str
    frames: list[dict[str, Any]] = field(default_factory=list)
    closed: anyio.Event = field(default_factory=anyio.Event)
    close_code: int | None = None

    async def read(self) -> None:
        try:
            async for frame in self.socket:
                self.frames.append(json.loads(frame))
        except websockets.exceptions.ConnectionClosed:
            pass
        self.close_code = self.socket.close_code
        self.closed.set()

    def decision(self) -> dict[str, Any]:
        """The pushed decision about the held call."""
        return next(f for f in self.frames if f["type"] == "decision" and f["call_id"] == self.call_id)

    def error(self) -> dict[str, Any]:
        return next(f for f in self.frames if f["type"] == "error")


@contextlib.asynccontextmanager
async def held_bridge(server: SignoffServer, raw_token: str) -> AsyncIterator[HeldBridge]:
    """Connect to ``server`` as a bridge fronting ``files``, hold a ``write_file`` call, watch the socket."""
    async with websockets.connect(
        f"ws://127.0.0.1:{server.port}{protocol.BRIDGE_PATH}",
        additional_headers={"Authorization": f"Bearer {raw_token}"},
    ) as socket:
        hello = protocol.Hello(
            protocol=protocol.PROTOCOL_VERSION,
            bridge_version="test",
            upstream=protocol.UpstreamInfo(name="files", transport="stdio"),
            tools=[protocol.ToolInfo(name="write_file", hash=TOOL_HASH)],
        )
        await socket.send(protocol.encode(hello))
        assert isinstance(protocol.parse_server_message(await socket.recv()), protocol.Welcome)
        call = protocol.Call(ref="r1", tool="write_file", arguments={"path": f"/srv/{secrets.token_hex(3)}"})
        await socket.send(protocol.encode(call))
        held = protocol.parse_server_message(await socket.recv())
        assert isinstance(held, protocol.Decision) and held.state == "pending", held
        bridge = HeldBridge(socket, held.call_id)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(bridge.read)
            yield bridge
            tasks.cancel_scope.cancel()


# --- the admin's side, over HTTP on A ---------------------------------------------------------------------
class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a form's 302 is the answer we check, not a page to load


class AdminWeb:
    """A logged-in browser's HTTP: its session cookie, and the CSRF token the pages' forms carry."""

    def __init__(self, server: SignoffServer, cookie: str) -> None:
        self.base = server.url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _KeepRedirects
        )
        self.cookie = cookie

    def request(self, path: str, *, post: bool = False) -> int:
        csrf = next((c.value for c in self.jar if c.name == "csrftoken"), "")
        request = urllib.request.Request(
            self.base + path,
            data=b"" if post else None,
            headers={"Cookie": self.cookie + (f"; csrftoken={csrf}" if csrf else ""), "X-CSRFToken": csrf},
        )
        try:
            with self.opener.open(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    async def post(self, path: str) -> int:
        return await anyio.to_thread.run_sync(lambda: self.request(path, post=True))


@contextlib.asynccontextmanager
async def admin_web(server: SignoffServer, user: Any, team_slug: str) -> AsyncIterator[AdminWeb]:
    web = AdminWeb(server, await sync_to_async(session_cookie)(user))
    assert await anyio.to_thread.run_sync(lambda: web.request(f"/tokens/?team={team_slug}")) == 200
    yield web


async def act_and_wait_for_close(action: Callable[[], Awaitable[None]], bridge: HeldBridge) -> None:
    """Run the admin's request, then wait for the bridge's socket to be closed by the server."""
    await action()
    with anyio.fail_after(10):
        await bridge.closed.wait()


def expect_revoked(bridge: HeldBridge, reason: str) -> None:
    """The held call was denied with the reason, then the socket was told why and closed."""
    assert bridge.close_code == protocol.CLOSE_REVOKED
    decision = bridge.decision()
    assert (decision["state"], decision["reason"]) == ("denied", f"denied: {reason}")
    assert bridge.error()["code"] == "revoked" and reason in bridge.error()["message"]
    row = ToolCall.objects.get(pk=bridge.call_id)
    assert (row.state, row.reason) == ("denied", f"denied: {reason}")


# --- the three offboardings -------------------------------------------------------------------------------
async def test_revoking_the_token_on_a_closes_its_bridge_on_b(
    signoff: SignoffServer, admin_server: SignoffServer, team: TeamSetup
) -> None:
    async with (
        admin_web(admin_server, team.reviewer, team.team.slug) as web,
        held_bridge(signoff, team.raw_token) as bridge,
    ):

        async def revoke() -> None:
            assert await web.post(f"/tokens/{team.token.pk}/revoke/") == 302

        await act_and_wait_for_close(revoke, bridge)
    expect_revoked(bridge, f"revoked by {team.reviewer.username}")


async def test_removing_the_member_on_a_closes_their_bridge_and_their_review_page_on_b(
    signoff: SignoffServer, admin_server: SignoffServer, team: TeamSetup
) -> None:
    # The member also reviews (role reviewer), so they have a queue page open on B too.
    await sync_to_async(Membership.objects.filter(team=team.team, user=team.member).update)(role="reviewer")
    membership = await sync_to_async(Membership.objects.get)(team=team.team, user=team.member)
    async with (
        admin_web(admin_server, team.reviewer, team.team.slug) as web,
        reviewer_socket(signoff, team.member, team.team.slug) as removed_page,
        reviewer_socket(signoff, team.reviewer2, team.team.slug) as staying_page,
        held_bridge(signoff, team.raw_token) as bridge,
    ):
        for page in (removed_page, staying_page):
            assert (await page.pending_call("write_file"))["id"] == bridge.call_id

        async def remove() -> None:
            assert await web.post(f"/members/{membership.pk}/remove/") == 302

        page_closed = anyio.Event()

        async def watch_page() -> None:
            message = await removed_page.next(lambda m: m["type"] == "error", timeout=10)
            assert message["message"] == "Access ended: removed from the team."
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await removed_page.connection.recv()
            page_closed.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watch_page)
            await act_and_wait_for_close(remove, bridge)
            with anyio.fail_after(10):
                await page_closed.wait()
        assert removed_page.connection.close_code == 4403

        # Calls keep flowing to the reviewer who stays, and no longer to the removed one.
        other = await sync_to_async(_other_bridge_token)(team)
        async with held_bridge(signoff, other) as second:
            assert (await staying_page.pending_call("write_file"))["id"] == second.call_id
    expect_revoked(bridge, f"{team.member.username} was removed from the team")
    # Reconnecting does not bring the page back.
    async with reviewer_socket(signoff, team.member, team.team.slug) as again:
        refused = await again.next()
        assert refused["type"] == "error"
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await again.connection.recv()
        assert again.connection.close_code == 4403


def _other_bridge_token(team: TeamSetup) -> str:
    from approvals.services.tokens import token_issue

    _, raw = token_issue(team=team.team, user=team.reviewer2, name="second")
    return raw


async def test_deactivating_the_user_in_djangos_admin_on_a_closes_their_bridge_on_b(
    signoff: SignoffServer, admin_server: SignoffServer, team: TeamSetup, browser
) -> None:
    operator = await sync_to_async(_operator)()
    page = await browser_login(browser, admin_server, operator)
    await page.goto(f"{admin_server.url}/admin/auth/user/{team.member.pk}/change/")
    await page.wait_for_selector("#id_is_active")
    await page.uncheck("#id_is_active")
    async with held_bridge(signoff, team.raw_token) as bridge:

        async def deactivate() -> None:
            await page.click("input[name=_save]")

        await act_and_wait_for_close(deactivate, bridge)
        await page.wait_for_selector(".messagelist .success")
    expect_revoked(bridge, f"{team.member.username} was deactivated")
    assert not get_user_model().objects.get(pk=team.member.pk).is_active


def _operator() -> Any:
    """A Django-admin superuser (no team of their own)."""
    user = user_get_or_create(email=f"ops-{secrets.token_hex(3)}@example.com", password=PASSWORD)
    user.is_staff = user.is_superuser = True
    user.save(update_fields=["is_staff", "is_superuser"])
    return user

"""Offboarding takes effect at once: removing a member, demoting a reviewer, deactivating a user (by the
service, by saving the user, by the command) and logging out close the open sockets concerned.

Sockets are driven with channels' ``WebsocketCommunicator`` against ``config.asgi.application`` over the
in-memory channel layer, and always disconnected at the end (as in ``test_consumers.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from io import StringIO
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import Client
from django.urls import reverse

from approvals.models import AuditEvent, BridgeToken, Membership, ToolCall
from approvals.services.teams import member_add, member_remove, user_deactivate
from approvals.services.tokens import token_authenticate, token_issue
from mcpbridge import protocol

from .conftest import OTHER_TOOL_HASH, SERVER, TOOL_HASH, Issued
from .sockets import expect_close, receive, receive_until

pytestmark = pytest.mark.django_db
sockets = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1")
Open = Callable[..., Awaitable[WebsocketCommunicator]]


# --- socket helpers (as in test_consumers.py) --------------------------------------------------------
def hello() -> str:
    return protocol.encode(
        protocol.Hello(
            protocol=protocol.PROTOCOL_VERSION,
            bridge_version="test",
            upstream=protocol.UpstreamInfo(name=SERVER, transport="stdio"),
            tools=[
                protocol.ToolInfo(name="read_file", hash=TOOL_HASH),
                protocol.ToolInfo(name="write_file", hash=OTHER_TOOL_HASH),
            ],
        )
    )


def call(ref: str = "r1") -> str:
    return protocol.encode(protocol.Call(ref=ref, tool="read_file", arguments={"path": f"/srv/{ref}"}))


async def expect_review_closed(socket: WebsocketCommunicator, reason: str) -> None:
    """A review page is told why, then closed with 4403 (call updates may come first)."""
    error = await receive_until(socket, "error")
    assert error["message"] == f"Access ended: {reason}."
    await expect_close(socket, 4403)


async def expect_bridge_closed(socket: WebsocketCommunicator, call_id: str, reason: str) -> None:
    """A bridge gets its held call denied, then is told it was revoked and closed with 4403."""
    decision = await receive(socket)
    assert (decision["type"], decision["call_id"], decision["state"]) == ("decision", call_id, "denied")
    assert decision["reason"] == f"denied: {reason}"
    error = await receive(socket)
    assert error["code"] == "revoked" and reason in error["message"]
    await expect_close(socket, protocol.CLOSE_REVOKED)
    assert protocol.CLOSE_REVOKED == 4403


async def still_reviewing(socket: WebsocketCommunicator) -> None:
    """The page is open and answers (a closed communicator times out or raises instead)."""
    assert await socket.receive_nothing(timeout=0.2)
    await socket.send_json_to({"type": "decide", "call_id": "x", "decision": "maybe"})
    assert "decision must be" in (await receive(socket))["message"]


async def still_bridging(socket: WebsocketCommunicator) -> None:
    assert await socket.receive_nothing(timeout=0.2)
    await socket.send_to(text_data=call(ref="later"))
    decision = await receive(socket)
    assert (decision["ref"], decision["state"]) == ("later", "pending")


@pytest.fixture
async def open_socket() -> AsyncIterator[Open]:
    """Open sockets on the real ASGI application; every one is disconnected at the end of the test."""
    from config.asgi import application

    opened: list[WebsocketCommunicator] = []

    async def _open(path: str, headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
        socket = WebsocketCommunicator(application, path, headers=headers)
        opened.append(socket)
        connected, _ = await socket.connect(timeout=3)
        assert connected
        return socket

    yield _open
    for socket in opened:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await socket.disconnect(timeout=3)
    await database_sync_to_async(connections.close_all)()


@pytest.fixture
def open_review(open_socket: Open) -> Callable[..., Awaitable[WebsocketCommunicator]]:
    """A reviewer's page of a team, past its snapshot."""

    async def _review(cookie: bytes, team: str = "alpha") -> WebsocketCommunicator:
        socket = await open_socket(f"/ws/review/?team={team}", [ORIGIN, (b"cookie", cookie)])
        assert (await receive(socket))["type"] == "snapshot"
        return socket

    return _review


@pytest.fixture
def open_bridge(open_socket: Open) -> Callable[..., Awaitable[tuple[WebsocketCommunicator, str]]]:
    """A greeted bridge with one call held; returns the socket and the call's id."""

    async def _bridge(raw: str) -> tuple[WebsocketCommunicator, str]:
        socket = await open_socket("/ws/bridge/", [(b"authorization", f"Bearer {raw}".encode())])
        await socket.send_to(text_data=hello())
        assert (await receive(socket))["type"] == "welcome"
        await socket.send_to(text_data=call())
        held = await receive(socket)
        assert held["state"] == "pending"
        return socket, held["call_id"]

    return _bridge


@pytest.fixture
def reviewer_cookie(reviewer: Any, session_cookie: Callable[[Any], bytes]) -> bytes:
    return session_cookie(reviewer)


@pytest.fixture
def reviewer_in_bravo(reviewer: Any, team_b: Any) -> Any:
    """Rita reviews for bravo too."""
    member_add(team=team_b, user=reviewer, role="reviewer")
    return reviewer


@pytest.fixture
def reviewer_token(reviewer: Any, team_a: Any) -> Issued:
    token, raw = token_issue(team=team_a, user=reviewer, name="rita-laptop")
    return Issued(token, raw)


def _state(call_id: str) -> tuple[str, str]:
    found = ToolCall.objects.get(pk=call_id)
    return found.state, found.reason


state_of = database_sync_to_async(_state)


def _revoked(token: BridgeToken) -> bool:
    return BridgeToken.objects.get(pk=token.pk).revoked_at is not None


revoked = database_sync_to_async(_revoked)


# --- removing a member --------------------------------------------------------------------------------
@sockets
async def test_removing_a_reviewer_closes_their_review_page_of_that_team_only(
    open_review,
    reviewer_in_bravo: Any,
    reviewer_cookie: bytes,
    team_a: Any,
    admin: Any,
    outsider_token: Issued,
) -> None:
    alpha = await open_review(reviewer_cookie, "alpha")
    bravo = await open_review(reviewer_cookie, "bravo")

    assert await database_sync_to_async(member_remove)(team=team_a, user=reviewer_in_bravo, by=admin)

    await expect_review_closed(alpha, "removed from the team")
    await still_reviewing(bravo)
    # …and it still gets bravo's calls.
    from approvals.services.calls import call_submit

    submitted = await database_sync_to_async(call_submit)(
        token=outsider_token.token, server=SERVER, tool="read_file", arguments={}, tool_hash=TOOL_HASH
    )
    update = await receive_until(bravo, "call")
    assert update["call"]["id"] == str(submitted.call.pk)


@sockets
async def test_removing_a_member_closes_their_bridges_in_that_team_only(
    open_bridge, member: Any, member_token: Issued, team_a: Any, team_b: Any, admin: Any
) -> None:
    await database_sync_to_async(member_add)(team=team_b, user=member, role="member")
    bravo_token, bravo_raw = await database_sync_to_async(token_issue)(team=team_b, user=member, name="bravo")
    alpha, alpha_call = await open_bridge(member_token.raw)
    bravo, bravo_call = await open_bridge(bravo_raw)

    await database_sync_to_async(member_remove)(team=team_a, user=member, by=admin)

    await expect_bridge_closed(alpha, alpha_call, "max@example.com was removed from the team")
    assert await state_of(alpha_call) == ("denied", "denied: max@example.com was removed from the team")
    await still_bridging(bravo)
    assert (await state_of(bravo_call))[0] == "pending"
    assert not await revoked(bravo_token)


@sockets
async def test_a_demoted_reviewers_page_is_closed(
    open_review, reviewer: Any, reviewer_cookie: bytes, team_a: Any, admin: Any
) -> None:
    page = await open_review(reviewer_cookie)
    await database_sync_to_async(member_add)(team=team_a, user=reviewer, role="member", by=admin)
    await expect_review_closed(page, "your role changed")


@sockets
async def test_an_admin_made_reviewer_keeps_their_page(
    open_review, admin: Any, reviewer: Any, team_a: Any, session_cookie
) -> None:
    await database_sync_to_async(member_add)(team=team_a, user=reviewer, role="admin")
    page = await open_review(await database_sync_to_async(session_cookie)(admin))
    await database_sync_to_async(member_add)(team=team_a, user=admin, role="reviewer", by=reviewer)
    await still_reviewing(page)


@sockets
async def test_the_members_page_removal_closes_the_sockets_at_once(
    open_review,
    open_bridge,
    reviewer: Any,
    reviewer_cookie: bytes,
    reviewer_token: Issued,
    admin: Any,
    team_a: Any,
) -> None:
    """The whole path, from the admin's click on “Remove”."""
    page = await open_review(reviewer_cookie)
    bridge, call_id = await open_bridge(reviewer_token.raw)

    def click_remove() -> int:
        client = Client()
        client.force_login(admin)
        membership = Membership.objects.get(team=team_a, user=reviewer)
        return client.post(reverse("approvals:member_remove", args=[membership.pk])).status_code

    assert await database_sync_to_async(click_remove)() == 302
    await expect_review_closed(page, "removed from the team")
    await expect_bridge_closed(bridge, call_id, "rita@example.com was removed from the team")


# --- deactivating a user ----------------------------------------------------------------------------
def _deactivate_by_service(user: Any) -> None:
    assert user_deactivate(user=user)


def _deactivate_by_saving(user: Any) -> None:
    """As Django's admin does: the signal takes it from there."""
    user.is_active = False
    user.save()


def _deactivate_by_command(user: Any) -> None:
    call_command("deactivate_user", user.email, stdout=StringIO())


@sockets
@pytest.mark.parametrize(
    "deactivate",
    [_deactivate_by_service, _deactivate_by_saving, _deactivate_by_command],
    ids=["user_deactivate", "saved-inactive", "deactivate_user-command"],
)
async def test_deactivating_a_user_closes_all_their_pages_and_bridges(
    open_review,
    open_bridge,
    reviewer_in_bravo: Any,
    reviewer_cookie: bytes,
    reviewer_token: Issued,
    team_b: Any,
    deactivate: Callable[[Any], None],
) -> None:
    bravo_token, bravo_raw = await database_sync_to_async(token_issue)(
        team=team_b, user=reviewer_in_bravo, name="rita-bravo"
    )
    alpha_page = await open_review(reviewer_cookie, "alpha")
    bravo_page = await open_review(reviewer_cookie, "bravo")
    alpha_bridge, alpha_call = await open_bridge(reviewer_token.raw)
    bravo_bridge, bravo_call = await open_bridge(bravo_raw)

    await database_sync_to_async(deactivate)(reviewer_in_bravo)

    reason = "rita@example.com was deactivated"
    await expect_review_closed(alpha_page, "your account was deactivated")
    await expect_review_closed(bravo_page, "your account was deactivated")
    await expect_bridge_closed(alpha_bridge, alpha_call, reason)
    await expect_bridge_closed(bravo_bridge, bravo_call, reason)
    for call_id in (alpha_call, bravo_call):
        assert await state_of(call_id) == ("denied", f"denied: {reason}")
    assert await revoked(reviewer_token.token) and await revoked(bravo_token)
    assert await database_sync_to_async(token_authenticate)(reviewer_token.raw) is None


@sockets
async def test_deactivating_someone_leaves_the_others_sockets_open(
    open_review, open_bridge, reviewer: Any, member: Any, member_token: Issued, session_cookie
) -> None:
    page = await open_review(await database_sync_to_async(session_cookie)(reviewer))
    bridge, call_id = await open_bridge(member_token.raw)
    await receive_until(page, "call")
    other = await database_sync_to_async(get_user_model().objects.create_user)(username="zed@example.com")
    await database_sync_to_async(_deactivate_by_saving)(other)
    await still_reviewing(page)
    assert await bridge.receive_nothing(timeout=0.2)
    assert (await state_of(call_id))[0] == "pending"


# --- logging out ------------------------------------------------------------------------------------
@sockets
async def test_logging_out_closes_the_users_review_pages(
    open_review, reviewer: Any, admin: Any, session_cookie
) -> None:
    client = Client()
    await database_sync_to_async(client.force_login)(reviewer)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()
    own = await open_review(cookie)
    someone_elses = await open_review(await database_sync_to_async(session_cookie)(admin))

    response = await sync_to_async(client.post)(reverse("account_logout"))
    assert response.status_code == 302

    await expect_review_closed(own, "logged out")
    await still_reviewing(someone_elses)


@sockets
async def test_the_logged_out_signal_alone_closes_the_page(
    open_review, reviewer: Any, reviewer_cookie: bytes
) -> None:
    from django.contrib.auth.signals import user_logged_out

    page = await open_review(reviewer_cookie)
    await database_sync_to_async(user_logged_out.send)(sender=type(reviewer), request=None, user=reviewer)
    await expect_review_closed(page, "logged out")


# --- the services, without sockets ---------------------------------------------------------------------
def test_deactivating_is_audited_in_each_team_and_done_once(
    reviewer_in_bravo: Any, reviewer_token: Issued, team_a: Any, team_b: Any, admin: Any
) -> None:
    assert user_deactivate(user=reviewer_in_bravo, by=admin)
    events = AuditEvent.objects.filter(kind="user.deactivated")
    assert {(e.team_id, e.actor_id, e.data["member"]) for e in events} == {
        (team_a.pk, admin.pk, "rita@example.com"),
        (team_b.pk, admin.pk, "rita@example.com"),
    }
    assert AuditEvent.objects.filter(kind="token.revoked", token=reviewer_token.token, actor=admin).exists()
    assert not get_user_model().objects.get(pk=reviewer_in_bravo.pk).is_active
    assert not user_deactivate(user=reviewer_in_bravo, by=admin)
    assert AuditEvent.objects.filter(kind="user.deactivated").count() == 2


def test_saving_an_active_user_revokes_nothing(member: Any, member_token: Issued) -> None:
    member.first_name = "Max"
    member.save()
    assert BridgeToken.objects.get(pk=member_token.token.pk).revoked_at is None


def test_removing_someone_not_in_the_team_does_nothing(
    outsider: Any, outsider_token: Issued, team_a: Any
) -> None:
    assert member_remove(team=team_a, user=outsider) is False
    assert BridgeToken.objects.get(pk=outsider_token.token.pk).revoked_at is None
    assert not AuditEvent.objects.filter(kind="member.removed").exists()


# --- commands ---------------------------------------------------------------------------------------
def run(*args: Any) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_remove_member_revokes_the_tokens_and_denies_the_held_calls(
    member: Any, member_token: Issued, team_a: Any, submit
) -> None:
    held = submit(member_token.token).call
    assert run("remove_member", "alpha", "max@example.com").strip() == "removed max@example.com from alpha"
    assert not Membership.objects.filter(team=team_a, user=member).exists()
    assert BridgeToken.objects.get(pk=member_token.token.pk).revoked_at is not None
    assert ToolCall.objects.get(pk=held.pk).state == ToolCall.State.DENIED
    removed = AuditEvent.objects.get(kind="member.removed")
    assert (removed.team, removed.actor) == (team_a, None)


def test_remove_member_takes_the_email_in_any_case(member: Any, team_a: Any) -> None:
    run("remove_member", "alpha", "Max@Example.COM")
    assert not Membership.objects.filter(team=team_a, user=member).exists()


def test_remove_member_says_when_someone_was_not_in_the_team(outsider: Any, team_a: Any) -> None:
    assert run("remove_member", "alpha", "otto@example.com").strip() == "otto@example.com was not in alpha"
    assert Membership.objects.filter(user=outsider).count() == 1


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["nope", "max@example.com"], "No team with slug 'nope'"),
        (["alpha", "nobody@example.com"], "No user nobody@example.com"),
    ],
    ids=["team", "user"],
)
def test_remove_member_names_what_is_unknown(member: Any, args: list[str], error: str) -> None:
    with pytest.raises(CommandError, match=error):
        run("remove_member", *args)
    assert Membership.objects.filter(user=member).exists()


def test_remove_member_refuses_the_last_admin(admin: Any, team_a: Any) -> None:
    with pytest.raises(CommandError, match="at least one admin"):
        run("remove_member", "alpha", "ada@example.com")
    assert Membership.objects.get(team=team_a, user=admin).role == "admin"


def test_deactivate_user_offboards_everywhere(
    reviewer_in_bravo: Any, reviewer_token: Issued, team_b: Any, submit
) -> None:
    bravo_token, _ = token_issue(team=team_b, user=reviewer_in_bravo, name="rita-bravo")
    held = submit(bravo_token).call
    assert run("deactivate_user", "rita@example.com").strip() == "deactivated rita@example.com"
    assert not get_user_model().objects.get(pk=reviewer_in_bravo.pk).is_active
    assert not BridgeToken.objects.filter(user=reviewer_in_bravo, revoked_at=None).exists()
    assert ToolCall.objects.get(pk=held.pk).reason == "denied: rita@example.com was deactivated"
    assert AuditEvent.objects.filter(kind="user.deactivated").count() == 2


def test_deactivate_user_says_when_someone_was_already_inactive(member: Any) -> None:
    run("deactivate_user", "max@example.com")
    assert run("deactivate_user", "MAX@example.com").strip() == "MAX@example.com was already inactive"


def test_deactivate_user_names_an_unknown_user(db: None) -> None:
    with pytest.raises(CommandError, match=r"No user ghost@example\.com"):
        run("deactivate_user", "ghost@example.com")


@sockets
async def test_a_token_past_its_expiry_closes_its_bridge_and_denies_its_held_calls(
    open_bridge, member_token: Issued
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from approvals.models import BridgeToken
    from approvals.services.tokens import TOKEN_EXPIRED, tokens_expire_due

    socket, call_id = await open_bridge(member_token.raw)
    await database_sync_to_async(BridgeToken.objects.filter(pk=member_token.token.pk).update)(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert await database_sync_to_async(tokens_expire_due)() == 1
    assert await database_sync_to_async(tokens_expire_due)() == 0  # once
    await expect_bridge_closed(socket, call_id, TOKEN_EXPIRED)

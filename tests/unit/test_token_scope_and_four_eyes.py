"""A token scoped to some servers, and the four-eyes rule (issue 4, points 2 and 3).

Scope: names or globs, validated where a person types them (tokens page, ``issue_token --server``); a bridge
announcing another server is refused at its hello (``server_out_of_scope``, close 4406) and a call to another
server is denied by ``call_submit`` whatever the socket thought.

Four eyes: in a team that wants it, nobody allows (or Always-Allows) a call made with their own token, in the
service, in ``access`` and on the review socket; denying it stays possible, and another reviewer may allow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from io import StringIO
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.exceptions import PermissionDenied
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import Client
from django.urls import reverse

from approvals import access
from approvals.forms import TokenIssueForm
from approvals.models import AuditEvent, BridgeToken, Rule, Team, ToolCall, ToolPin
from approvals.services.calls import call_decide
from approvals.services.tokens import (
    MAX_SCOPE_SERVERS,
    TokenScopeInvalid,
    server_in_scope,
    token_issue,
    token_servers_parse,
    token_servers_validate,
)
from mcpbridge import link, protocol

from .conftest import SERVER, TOOL_HASH, Issued
from .sockets import expect_close, receive, receive_until

pytestmark = pytest.mark.django_db
sockets = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1")
Open = Callable[..., Awaitable[WebsocketCommunicator]]


# --- the scope's shape -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("typed", "scope"),
    [
        ("", []),
        ("   ", []),
        ("files", ["files"]),
        ("files, git-*  shell", ["files", "git-*", "shell"]),
        ("files,files,\tfiles", ["files"]),
        ("crm.internal:8443 a@b+c/d fi?es", ["crm.internal:8443", "a@b+c/d", "fi?es"]),
    ],
)
def test_a_typed_scope_is_split_on_commas_and_spaces(typed: str, scope: list[str]) -> None:
    assert token_servers_parse(typed) == scope


@pytest.mark.parametrize(
    "typed",
    ["files;rm", "[abc]", "naïve", "x" * 129, "files\x00", "!files", "a'b", "<script>"],
    ids=["semicolon", "class", "non-ascii", "too-long", "nul", "bang", "quote", "markup"],
)
def test_a_name_outside_the_allowed_characters_is_refused(typed: str) -> None:
    with pytest.raises(TokenScopeInvalid, match="is not a server name"):
        token_servers_parse(typed)


def test_a_scope_has_at_most_twenty_servers() -> None:
    assert len(token_servers_validate(f"s{i}" for i in range(MAX_SCOPE_SERVERS))) == MAX_SCOPE_SERVERS
    with pytest.raises(TokenScopeInvalid, match="at most"):
        token_servers_validate(f"s{i}" for i in range(MAX_SCOPE_SERVERS + 1))


def test_a_scope_that_is_not_text_is_refused() -> None:
    with pytest.raises(TokenScopeInvalid):
        token_servers_validate([3])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("scope", "server", "allowed"),
    [
        ([], "anything", True),
        (["files"], "files", True),
        (["files"], "files2", False),
        (["files"], "Files", False),  # case-sensitive, like rules
        (["git-*"], "git-main", True),
        (["git-*"], "git", False),
        (["files", "git-*"], "git-x", True),
        (["fi?es"], "files", True),
        (["*"], "shell", True),
    ],
)
def test_server_in_scope(scope: list[str], server: str, allowed: bool) -> None:
    assert server_in_scope(scope, server) is allowed


# --- issuing a scoped token ------------------------------------------------------------------------
def test_issuing_a_scoped_token_stores_and_audits_its_servers(member: Any, team_a: Team) -> None:
    token, _ = token_issue(team=team_a, user=member, name="ci", servers=["files", "git-*", "files"])
    assert BridgeToken.objects.get(pk=token.pk).servers == ["files", "git-*"]
    event = AuditEvent.objects.get(kind="token.issued", token_id=token.pk)
    assert event.data["servers"] == ["files", "git-*"]


def test_issuing_with_a_bad_scope_creates_nothing(member: Any, team_a: Team) -> None:
    before = AuditEvent.objects.count()
    with pytest.raises(TokenScopeInvalid):
        token_issue(team=team_a, user=member, name="ci", servers=["files", "rm -rf"])
    assert not BridgeToken.objects.exists()
    assert AuditEvent.objects.count() == before


def test_the_form_explains_a_bad_server_name() -> None:
    form = TokenIssueForm({"name": "laptop", "servers": "files, <b>"})
    assert not form.is_valid()
    assert "is not a server name" in form.errors["servers"][0]
    assert TokenIssueForm({"name": "laptop", "servers": "files git-*"}).is_valid()


def test_the_tokens_page_issues_a_scoped_token_and_lists_its_servers(member: Any, team_a: Team) -> None:
    client = Client()
    client.force_login(member)
    issued = client.post(reverse("approvals:tokens"), {"name": "laptop", "servers": "files, git-*"})
    assert issued.status_code == 200
    token = BridgeToken.objects.get(user=member)
    assert token.servers == ["files", "git-*"]
    page = issued.content.decode()
    assert "fronts only the servers" in page
    assert "mcpbridge --name files --" in page  # the example config names a server the token may front
    listed = client.get(reverse("approvals:tokens")).content.decode()
    assert "<code>files</code>, <code>git-*</code>" in listed


def test_the_tokens_page_refuses_a_bad_scope_and_issues_nothing(member: Any, team_a: Team) -> None:
    client = Client()
    client.force_login(member)
    response = client.post(reverse("approvals:tokens"), {"name": "laptop", "servers": "files <script>"})
    assert response.status_code == 200
    assert "is not a server name" in response.content.decode()
    assert "<script>" not in response.content.decode()  # the typed text comes back escaped
    assert not BridgeToken.objects.exists()


def test_an_unscoped_token_is_listed_for_any_server(member_token: Issued, member: Any) -> None:
    client = Client()
    client.force_login(member)
    row = client.get(reverse("approvals:tokens")).content.decode()
    assert '<td class="token-servers">any</td>' in row


# --- issue_token --server ------------------------------------------------------------------------------
def run(*args: Any) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_issue_token_takes_repeated_servers(member: Any) -> None:
    out, err = run(
        "issue_token", "alpha", "max@example.com", "--server", "files", "--server", "git-*", "--json"
    )
    printed = json.loads(out)
    assert printed["servers"] == ["files", "git-*"]
    assert BridgeToken.objects.get(pk=printed["id"]).servers == ["files", "git-*"]
    _, err = run("issue_token", "alpha", "max@example.com", "--server", "files")
    assert "for files." in err


def test_issue_token_without_server_is_for_any_server(member: Any) -> None:
    _, err = run("issue_token", "alpha", "max@example.com")
    assert BridgeToken.objects.get().servers == []
    assert "for any server" in err


def test_issue_token_refuses_a_bad_server(member: Any) -> None:
    with pytest.raises(CommandError, match=r"--server: .* is not a server name"):
        run("issue_token", "alpha", "max@example.com", "--server", "files;rm")
    assert not BridgeToken.objects.exists()


# --- call_submit's own check --------------------------------------------------------------------------
def test_a_call_to_a_server_outside_the_scope_is_denied_and_audited(
    member: Any, team_a: Team, submit: Callable, audit_kinds: Callable
) -> None:
    token, _ = token_issue(team=team_a, user=member, name="ci", servers=["git-*"])
    Rule.objects.create(team=team_a, effect="allow", server="*", tool="*")  # no rule widens the scope
    submitted = submit(token, server=SERVER)
    assert submitted.call.state == ToolCall.State.DENIED and not submitted.run
    assert submitted.call.reason == "denied: the token “ci” may only front git-*, not the server 'files'"
    assert audit_kinds(submitted.call) == ["call.denied"]
    assert submit(token, server="git-main").call.state == ToolCall.State.ALLOWED


def test_a_held_call_does_not_reattach_once_its_server_left_the_scope(
    member_token: Issued, submit: Callable
) -> None:
    held = submit(member_token.token).call
    assert held.state == ToolCall.State.PENDING
    BridgeToken.objects.filter(pk=member_token.token.pk).update(servers=["other"])
    again = submit(member_token.token)
    assert not again.reattached and again.call.pk != held.pk
    assert again.call.state == ToolCall.State.DENIED


# --- the bridge's hello ------------------------------------------------------------------------------
def hello(server: str = SERVER) -> str:
    return protocol.encode(
        protocol.Hello(
            protocol=protocol.PROTOCOL_VERSION,
            bridge_version="test",
            upstream=protocol.UpstreamInfo(name=server, transport="stdio"),
            tools=[protocol.ToolInfo(name="read_file", hash=TOOL_HASH)],
        )
    )


@pytest.fixture
async def open_socket() -> AsyncIterator[Open]:
    """Sockets on the real ASGI application, every one disconnected at the end (as in test_consumers)."""
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


async def bridge_socket(open_socket: Open, raw: str) -> WebsocketCommunicator:
    return await open_socket("/ws/bridge/", [(b"authorization", f"Bearer {raw}".encode())])


issue = database_sync_to_async(token_issue)


@sockets
async def test_a_hello_for_a_server_outside_the_scope_is_refused_with_4406(
    open_socket: Open, member: Any, team_a: Team
) -> None:
    _, raw = await issue(team=team_a, user=member, name="ci", servers=["git-*", "docs"])
    socket = await bridge_socket(open_socket, raw)
    await socket.send_to(text_data=hello("files"))
    error = await receive(socket)
    assert (error["type"], error["code"]) == ("error", "server_out_of_scope")
    assert "'files'" in error["message"] and "git-*, docs" in error["message"] and "“ci”" in error["message"]
    await expect_close(socket, protocol.CLOSE_OUT_OF_SCOPE)
    assert protocol.CLOSE_OUT_OF_SCOPE in protocol.FATAL_CLOSE_CODES

    def stored() -> tuple[list[dict[str, Any]], bool]:
        events = list(AuditEvent.objects.filter(kind="token.scope_refused").values("data"))
        return events, ToolPin.objects.exists()

    events, pinned = await database_sync_to_async(stored)()
    assert [e["data"]["server"] for e in events] == ["files"]
    assert not pinned  # nothing of a refused upstream is kept


@sockets
async def test_a_hello_for_a_server_the_scope_matches_is_welcomed(
    open_socket: Open, member: Any, team_a: Team
) -> None:
    _, raw = await issue(team=team_a, user=member, name="ci", servers=["fi*"])
    socket = await bridge_socket(open_socket, raw)
    await socket.send_to(text_data=hello("files"))
    assert (await receive(socket))["type"] == "welcome"


def test_the_bridge_treats_the_refusal_as_final() -> None:
    """mcpbridge reuses its unauthorized path: the message becomes every call's tool error."""
    assert "server_out_of_scope" in link.REFUSAL_CODES
    assert protocol.CLOSE_OUT_OF_SCOPE in link.FATAL_TEXT


# --- four eyes: service and access -----------------------------------------------------------------------
@pytest.fixture
def four_eyes(team_a: Team) -> Team:
    Team.objects.filter(pk=team_a.pk).update(four_eyes=True)
    team_a.refresh_from_db()
    return team_a


@pytest.fixture
def own_call(reviewer: Any, team_a: Team, submit: Callable) -> ToolCall:
    """A call held for team alpha, made with the reviewer's own token."""
    token, _ = token_issue(team=team_a, user=reviewer, name="rita-laptop")
    call = submit(token).call
    assert call.state == ToolCall.State.PENDING
    return call


def fresh(call: ToolCall) -> ToolCall:
    return ToolCall.objects.select_related("team").get(pk=call.pk)


@pytest.mark.parametrize("always_allow", [False, True], ids=["allow", "always-allow"])
def test_four_eyes_refuses_approving_ones_own_call_and_audits_the_attempt(
    four_eyes: Team, own_call: ToolCall, reviewer: Any, always_allow: bool
) -> None:
    with pytest.raises(access.FourEyesRefused, match="another reviewer must approve"):
        call_decide(
            call_id=str(own_call.pk), reviewer=reviewer, allow=True, always_allow=always_allow, scope="tool"
        )
    assert fresh(own_call).state == ToolCall.State.PENDING
    assert not Rule.objects.exists()
    event = AuditEvent.objects.get(kind="call.approval_refused")
    assert (event.call_id, event.actor_id) == (own_call.pk, reviewer.pk)
    assert event.data["decision"] == ("always_allow" if always_allow else "allow")
    assert issubclass(access.FourEyesRefused, PermissionDenied)


def test_four_eyes_lets_the_requester_deny_their_own_call(
    four_eyes: Team, own_call: ToolCall, reviewer: Any
) -> None:
    call = call_decide(call_id=str(own_call.pk), reviewer=reviewer, allow=False, reason="not now")
    assert call.state == ToolCall.State.DENIED


def test_four_eyes_lets_another_reviewer_allow_it(four_eyes: Team, own_call: ToolCall, admin: Any) -> None:
    call = call_decide(call_id=str(own_call.pk), reviewer=admin, allow=True)
    assert call.state == ToolCall.State.ALLOWED and call.decided_by == admin


@pytest.mark.parametrize("four_eyes_on", [True, False], ids=["four-eyes", "without"])
def test_a_rule_does_not_approve_its_creators_own_calls_under_four_eyes(
    team_a: Team, reviewer: Any, member_token: Issued, submit: Callable, four_eyes_on: bool
) -> None:
    """A rule is its creator's approval: under four eyes it allows everyone's calls but the creator's own."""
    from approvals.services.rules import rule_create

    Team.objects.filter(pk=team_a.pk).update(four_eyes=four_eyes_on)
    rule = rule_create(team=team_a, by=reviewer, effect="allow", server=SERVER, tool="read_file")
    own_token, _ = token_issue(team=team_a, user=reviewer, name="rita-laptop")
    own = submit(own_token).call
    others = submit(member_token.token).call
    assert others.state == ToolCall.State.ALLOWED and others.rule_id == rule.pk
    if four_eyes_on:
        assert own.state == ToolCall.State.PENDING
        assert own.reason.startswith(f"held: four eyes: rule #{rule.pk}")
        assert own.rule_id is None
    else:
        assert own.state == ToolCall.State.ALLOWED and own.rule_id == rule.pk


def test_the_form_fallback_explains_the_four_eyes_refusal(
    four_eyes: Team, own_call: ToolCall, reviewer: Any
) -> None:
    client = Client()
    client.force_login(reviewer)
    response = client.post(
        reverse("approvals:decide", args=[str(own_call.pk)]), {"decision": "allow"}, follow=True
    )
    assert response.status_code == 200
    assert "another reviewer must approve" in response.content.decode()
    assert fresh(own_call).state == ToolCall.State.PENDING


def test_without_four_eyes_a_reviewer_may_allow_their_own_call(own_call: ToolCall, reviewer: Any) -> None:
    call = call_decide(call_id=str(own_call.pk), reviewer=reviewer, allow=True)
    assert call.state == ToolCall.State.ALLOWED
    assert not AuditEvent.objects.filter(kind="call.approval_refused").exists()


def test_access_can_approve(
    four_eyes: Team, own_call: ToolCall, reviewer: Any, admin: Any, member: Any
) -> None:
    call = fresh(own_call)
    assert access.can_review(reviewer, four_eyes) and not access.can_approve(reviewer, call)
    access.require_decide(reviewer, call)  # deciding (denying) stays allowed
    with pytest.raises(access.FourEyesRefused):
        access.require_approve(reviewer, call)
    assert access.can_approve(admin, call)
    access.require_approve(admin, call)
    assert not access.can_approve(member, call)  # not a reviewer at all: a plain PermissionDenied
    with pytest.raises(PermissionDenied) as refused:
        access.require_approve(member, call)
    assert not isinstance(refused.value, access.FourEyesRefused)
    Team.objects.filter(pk=four_eyes.pk).update(four_eyes=False)
    assert access.can_approve(reviewer, fresh(own_call))


def test_the_queue_page_knows_who_is_looking(reviewer: Any, team_a: Team) -> None:
    client = Client()
    client.force_login(reviewer)
    page = client.get(reverse("approvals:queue") + "?team=alpha").content.decode()
    assert f'data-user-id="{reviewer.pk}"' in page
    assert "four eyes: another reviewer must approve" in page


# --- four eyes: the review socket ----------------------------------------------------------------------
async def review_socket(open_socket: Open, cookie: bytes) -> WebsocketCommunicator:
    return await open_socket("/ws/review/?team=alpha", [ORIGIN, (b"cookie", cookie)])


@sockets
async def test_the_review_socket_refuses_approving_ones_own_call_with_a_clear_error(
    open_socket: Open, four_eyes: Team, own_call: ToolCall, reviewer: Any, session_cookie: Callable
) -> None:
    socket = await review_socket(open_socket, await database_sync_to_async(session_cookie)(reviewer))
    snapshot = await receive(socket)
    [shown] = snapshot["calls"]
    assert (shown["requester_id"], shown["four_eyes"]) == (reviewer.pk, True)
    for decision in ("allow", "always_allow"):
        await socket.send_json_to({"type": "decide", "call_id": str(own_call.pk), "decision": decision})
        error = await receive_until(socket, "error")
        assert error["code"] == "four_eyes" and error["call_id"] == str(own_call.pk)
        assert error["message"].startswith("Four eyes: another reviewer must approve")
    assert (await database_sync_to_async(fresh)(own_call)).state == ToolCall.State.PENDING
    await socket.send_json_to({"type": "decide", "call_id": str(own_call.pk), "decision": "deny"})
    assert (await receive_until(socket, "decided"))["state"] == "denied"


@sockets
async def test_another_reviewers_socket_may_allow_it(
    open_socket: Open, four_eyes: Team, own_call: ToolCall, admin: Any, session_cookie: Callable
) -> None:
    socket = await review_socket(open_socket, await database_sync_to_async(session_cookie)(admin))
    [shown] = (await receive(socket))["calls"]
    assert shown["requester_id"] != admin.pk
    await socket.send_json_to({"type": "decide", "call_id": str(own_call.pk), "decision": "allow"})
    assert (await receive_until(socket, "decided"))["state"] == "allowed"


@sockets
async def test_a_new_call_is_pushed_with_the_current_four_eyes_setting(
    open_socket: Open, own_call: ToolCall, reviewer: Any, team_a: Team, session_cookie: Callable
) -> None:
    """The setting is read when the call arrives, not when its bridge connected."""
    token = own_call.token  # as a bridge's socket holds it since it connected
    socket = await review_socket(open_socket, await database_sync_to_async(session_cookie)(reviewer))
    assert (await receive(socket))["calls"][0]["four_eyes"] is False
    await database_sync_to_async(Team.objects.filter(pk=team_a.pk).update)(four_eyes=True)
    assert token.team.four_eyes is False  # stale

    def submit_again() -> None:
        from approvals.services.calls import call_submit

        call_submit(token=token, server=SERVER, tool="read_file", arguments={"n": 2}, tool_hash=TOOL_HASH)

    await database_sync_to_async(submit_again)()
    update = await receive_until(socket, "call")
    assert (update["call"]["four_eyes"], update["call"]["requester_id"]) == (True, reviewer.pk)

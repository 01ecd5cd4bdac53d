"""The access matrix (issue 4, point 5): every route of the ``approvals`` namespace and every review-socket
action, for every role of team alpha, for the outsider (a reviewer of team bravo acting on alpha's objects
or asking for ``?team=alpha``) and for anonymous.

``MATRIX`` must name every route of ``approvals.urls``: a new view without a row fails
``test_the_matrix_names_every_route``. Besides the status, every refused request must leave the database
as it was (rules, members, tokens, calls, settings, audit log), and every permitted write must change it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections
from django.test import Client
from django.urls import URLPattern, reverse
from django.utils import timezone

from approvals import policyfile
from approvals.models import (
    Alert,
    AuditEvent,
    BridgeToken,
    Invitation,
    Membership,
    NotificationChannel,
    RateLimit,
    Rule,
    Team,
    ToolCall,
    Upstream,
)
from approvals.services import rules as rule_services
from approvals.services import server_review
from approvals.services.alerts import alert_raise
from approvals.services.inventory import sighting_of, upstream_seen
from approvals.services.invitations import invitation_create
from approvals.services.limits import limit_create
from approvals.services.teams import member_add, user_get_or_create
from approvals.services.tools import tools_seen
from approvals.urls import urlpatterns
from mcpbridge import protocol

from .conftest import OTHER_TOOL_HASH, SERVER, TOOL_HASH, Issued

ROLES = ("anonymous", "admin", "reviewer", "member", "auditor", "outsider")
LOGIN = reverse("account_login")
SKIP = "-"  # a cell left out on purpose: see the comment at its row

# Cells in ROLES order: anonymous admin reviewer member auditor outsider.
# "L" = 302 to the login page; "302" = a redirect elsewhere (the action's own); a number = that status.
# require_GET/require_POST wrap login_required, so a wrong method is 405 even for anonymous.
NOT_ALLOWED = "405 405 405 405 405 405"
MATRIX: dict[str, tuple[str, str]] = {
    #                 GET                       POST
    "queue": ("L 200 200 403 403 403", "L 200 200 403 403 403"),
    # Everyone in the team has a History: a member sees the calls of their own tokens (test_audit_views.py).
    "history": ("L 200 200 200 200 403", "L 200 200 200 200 403"),
    "decide": (NOT_ALLOWED, "L 302 302 403 403 403"),
    "decide_result": (NOT_ALLOWED, "L 302 302 403 403 403"),
    "call_detail": ("L 200 200 200 200 403", NOT_ALLOWED),  # the member's own call
    # The team's whole record is for admins and auditors; exporting it writes an audit event.
    "audit": ("L 200 403 403 200 403", NOT_ALLOWED),
    "audit_export": ("L 200 403 403 200 403", NOT_ALLOWED),
    # Alerts are the team's record too: admins acknowledge them, auditors read them.
    "alerts": ("L 200 403 403 200 403", NOT_ALLOWED),
    "alert_acknowledge": (NOT_ALLOWED, "L 302 403 403 403 403"),
    "alerts_acknowledge_all": (NOT_ALLOWED, "L 302 403 403 403 403"),
    # The inventory of upstream servers is the team's record too (who runs what from which token).
    "inventory": ("L 200 403 403 200 403", NOT_ALLOWED),
    # Admins sign a server's security checklist off on its page; auditors read it.
    "inventory_server": ("L 200 403 403 200 403", "L 302 403 403 403 403"),
    # Auditors read: they may not issue a bridge token (which would let them run tools).
    "tokens": ("L 200 200 200 200 403", "L 200 200 200 403 403"),
    "token_revoke": (NOT_ALLOWED, "L 302 403 302 403 403"),  # the token is the member's
    "token_networks": (NOT_ALLOWED, "L 302 403 302 403 403"),  # likewise: its owner or an admin
    "members": ("L 200 403 403 403 403", "L 302 403 403 403 403"),
    "team_settings": ("L 200 403 403 403 403", "L 302 403 403 403 403"),
    "member_role": (NOT_ALLOWED, "L 302 403 403 403 403"),  # the member's membership
    "member_remove": (NOT_ALLOWED, "L 302 403 403 403 403"),
    "rules": ("L 200 200 403 200 403", NOT_ALLOWED),
    "rule_new": ("L 200 200 403 403 403", "L 302 302 403 403 403"),
    "rules_dry_run": ("L 200 200 403 200 403", "L 200 200 403 200 403"),
    "rules_export": ("L 200 200 403 200 403", NOT_ALLOWED),
    "rules_import": ("L 200 403 403 403 403", "L 302 403 403 403 403"),
    "rule_detail": ("L 200 200 403 200 403", NOT_ALLOWED),
    "rule_edit": ("L 200 403 403 403 403", "L 302 403 403 403 403"),
    "rule_enabled": (NOT_ALLOWED, "L 302 403 403 403 403"),
    "rule_delete": (NOT_ALLOWED, "L 302 403 403 403 403"),
    # Rate limits are read like the rules and changed by admins only.
    "limits": ("L 200 200 403 200 403", NOT_ALLOWED),
    "limit_new": ("L 200 403 403 403 403", "L 302 403 403 403 403"),
    "limit_edit": ("L 200 403 403 403 403", "L 302 403 403 403 403"),
    "limit_enabled": (NOT_ALLOWED, "L 302 403 403 403 403"),
    "limit_delete": (NOT_ALLOWED, "L 302 403 403 403 403"),
    # Notification channels are the admins'. A test message changes the channel (its last error here: the
    # world's webhook points inside, which delivery refuses); rotating answers with the new secret's page.
    "notifications": ("L 200 403 403 403 403", "L 302 403 403 403 403"),
    "notification_test": (NOT_ALLOWED, "L 302 403 403 403 403"),
    "notification_rotate": (NOT_ALLOWED, "L 200 403 403 403 403"),
    "notification_enabled": (NOT_ALLOWED, "L 302 403 403 403 403"),
    "notification_delete": (NOT_ALLOWED, "L 302 403 403 403 403"),
    "invitation_create": (NOT_ALLOWED, "L 302 403 403 403 403"),
    "invitation_revoke": (NOT_ALLOWED, "L 302 403 403 403 403"),
    # The link's page is public; the world's invitation is for nobody here: signed in, "not your
    # invitation"; anonymous, the way to sign up (a POST goes back there). The rest: test_invitations.py.
    "invitation_accept": ("200 403 403 403 403 403", "302 403 403 403 403 403"),
}
# A permitted POST to these must change the database; to the others (pages, dry run) it must not.
WRITES = frozenset(MATRIX) - {"queue", "history", "rules_dry_run", "invitation_accept"}
# A permitted GET to these records an audit event (``audit.exported``); to the others it changes nothing.
AUDITED_READS = frozenset({"audit_export"})

# Team alpha requires two-factor authentication and its admin and reviewer have no authenticator app: they
# keep a member's rights (their own tokens), nothing of their role's. Cells: admin reviewer.
# "M" = 302 to the two-factor page (a page refused only for want of it sends them to set it up); a write
# refused for the same reason is 403. With an app, MATRIX applies again (test_route_with_two_factor).
MFA_MISSING = ("admin", "reviewer")
MFA_PAGE = reverse("mfa_index")
MFA_MATRIX: dict[str, tuple[str, str]] = {
    #                  GET         POST
    "queue": ("M M", "403 403"),
    "history": ("200 200", "200 200"),  # as a member's: the calls of their own tokens
    "decide": ("405 405", "403 403"),
    "decide_result": ("405 405", "403 403"),
    "call_detail": ("M M", "405 405"),  # the member's call: their role would show it
    "audit": ("M 403", "405 405"),
    "audit_export": ("M 403", "405 405"),
    "alerts": ("M 403", "405 405"),
    "alert_acknowledge": ("405 405", "403 403"),
    "alerts_acknowledge_all": ("405 405", "403 403"),
    "inventory": ("M 403", "405 405"),
    "inventory_server": ("M 403", "403 403"),
    "tokens": ("200 200", "200 200"),  # their own tokens, and they may issue one
    "token_revoke": ("405 405", "403 403"),  # the member's token: an admin's right, not a member's
    "token_networks": ("405 405", "403 403"),
    "members": ("M 403", "403 403"),  # a reviewer is refused as before: two-factor would not change it
    "team_settings": ("M 403", "403 403"),
    "member_role": ("405 405", "403 403"),
    "member_remove": ("405 405", "403 403"),
    "rules": ("M M", "405 405"),
    "rule_new": ("M M", "403 403"),
    "rules_dry_run": ("M M", "403 403"),
    "rules_export": ("M M", "405 405"),
    "rules_import": ("M M", "403 403"),  # rule pages check reading first, which two-factor gives back
    "rule_detail": ("M M", "405 405"),
    "rule_edit": ("M M", "403 403"),
    "rule_enabled": ("405 405", "403 403"),
    "rule_delete": ("405 405", "403 403"),
    "limits": ("M M", "405 405"),
    "limit_new": ("M M", "403 403"),  # reading first, as for the rules
    "limit_edit": ("M M", "403 403"),
    "limit_enabled": ("405 405", "403 403"),
    "limit_delete": ("405 405", "403 403"),
    "notifications": ("M 403", "403 403"),
    "notification_test": ("405 405", "403 403"),
    "notification_rotate": ("405 405", "403 403"),
    "notification_enabled": ("405 405", "403 403"),
    "notification_delete": ("405 405", "403 403"),
    "invitation_create": ("405 405", "403 403"),
    "invitation_revoke": ("405 405", "403 403"),
    "invitation_accept": ("403 403", "403 403"),  # not their invitation, as in MATRIX
}


@dataclass
class World:
    team: Team
    users: dict[str, Any]  # role -> user (no "anonymous")
    call: ToolCall  # held, made with the member's token
    rule: Rule
    token: BridgeToken  # the member's
    membership: Membership  # the member's
    invitation: Invitation | None = None  # open, for an address nobody here has
    invitation_secret: str = ""
    alert: Alert | None = None  # open, about the member's token
    limit: RateLimit | None = None  # the team's, per token
    channel: NotificationChannel | None = None  # a signed webhook to an internal address
    upstream: Upstream | None = None  # the server the member's bridge fronts, in the inventory
    held_result: ToolCall | None = None  # allowed and run, its result held for review


@pytest.fixture
def world(
    team_a: Team,
    admin: Any,
    reviewer: Any,
    member: Any,
    member_token: Issued,
    outsider: Any,
    submit: Callable,
) -> World:
    auditor = user_get_or_create(email="audrey@example.com", password="correct horse battery staple")
    member_add(team=team_a, user=auditor, role="auditor")
    rule = rule_services.rule_create(team=team_a, by=admin, effect="allow", server="files", tool="list_*")
    # The held call's tool changed its definition since first seen: an admin may accept the new one.
    for tool_hash in (TOOL_HASH, OTHER_TOOL_HASH):
        tools_seen(team=team_a, server=SERVER, tools=[protocol.ToolInfo(name="read_file", hash=tool_hash)])
    call = submit(member_token.token, tool_hash=OTHER_TOOL_HASH).call
    assert call.state == ToolCall.State.PENDING
    # Another call, allowed and run, whose result the bridge held for a reviewer.
    held_result = submit(member_token.token, arguments={"path": "/srv/held-result"}).call
    ToolCall.objects.filter(pk=held_result.pk).update(
        state=ToolCall.State.ALLOWED,
        started_at=timezone.now(),
        result_review=ToolCall.ResultReview.HELD,
        result_deadline=timezone.now() + timedelta(minutes=10),
    )
    users = {"admin": admin, "reviewer": reviewer, "member": member, "auditor": auditor, "outsider": outsider}
    invitation, secret = invitation_create(team=team_a, email="invitee@example.com", role="member", by=admin)
    # For tools nobody calls here: the tests share one cache, whose counts outlive each test's database.
    limit = limit_create(team=team_a, by=admin, scope="token", tool="list_*", window="minute", max_calls=9)
    upstream = upstream_seen(
        token=member_token.token,
        info=sighting_of(upstream=protocol.UpstreamInfo(name=SERVER, transport="stdio", server_name="fs")),
    )
    alert, _ = alert_raise(
        team=team_a, kind="new_address", key="matrix", message="matrix", token=member_token.token
    )
    return World(
        team_a,
        users,
        call,
        rule,
        member_token.token,
        Membership.objects.get(team=team_a, user=member),
        invitation,
        secret,
        alert,
        limit=limit,
        channel=NotificationChannel.objects.create(
            team=team_a, kind="webhook", name="matrix", target="http://127.0.0.1:9/hook", secret="s" * 64
        ),
        upstream=upstream,
        held_result=held_result,
    )


def url_for(name: str, w: World) -> str:
    """The route's address for alpha's objects; routes without an object ask for ``?team=alpha``."""
    pattern = next(p for p in urlpatterns if isinstance(p, URLPattern) and p.name == name)
    call = w.held_result if name == "decide_result" and w.held_result else w.call
    objects = {"call_id": str(call.pk), "token_id": w.token.pk, "membership_id": w.membership.pk}
    objects.update(invitation_id=w.invitation.pk if w.invitation else 0, secret=w.invitation_secret)
    objects.update(limit_id=w.limit.pk if w.limit else 0)
    objects.update(alert_id=w.alert.pk if w.alert else 0)
    objects.update(channel_id=w.channel.pk if w.channel else 0)
    objects.update(upstream_id=w.upstream.pk if w.upstream else 0)
    kwargs = {key: objects.get(key, w.rule.pk) for key in pattern.pattern.converters}
    return reverse(f"approvals:{name}", kwargs=kwargs) + ("" if kwargs else "?team=alpha")


def post_data(name: str, w: World) -> dict[str, Any]:
    rule = {"effect": "deny", "server": "files", "tool": "write_file", "constraints": "[]", "enabled": "on"}
    return {
        "decide": {"decision": "deny", "reason": "matrix"},
        "decide_result": {"decision": "block", "reason": "matrix"},
        "tokens": {"name": "matrix"},
        "token_networks": {"networks": "10.0.0.0/8"},
        "members": {"email": "newcomer@example.com", "role": "member"},
        "invitation_create": {"email": "newcomer@example.com", "role": "member", "valid_for_days": "7"},
        "team_settings": {"name": "Alpha", "mode": "whitelist", "default_deadline_seconds": "600"},
        "member_role": {"role": "reviewer"},
        "rule_new": rule,
        "rule_edit": {**rule, "note": "edited"},
        "inventory_server": {
            "verdict": "approve",
            **{f"answer-{question.key}": "yes" for question in server_review.CHECKLIST},
        },
        "rule_enabled": {"enabled": "0"},
        "notifications": {"kind": "email", "name": "ops", "target": "ops@example.com", "events": ["alert"]},
        "notification_enabled": {"enabled": "0"},
        "limit_new": {"max_calls": "5", "window": "hour", "scope": "team", "server": "*", "tool": "*"},
        "limit_edit": {"max_calls": "7", "window": "minute", "scope": "token", "server": "*", "tool": "*"},
        "limit_enabled": {"enabled": "0"},
        "rules_dry_run": {"server": "files", "tool": "read_file", "arguments": "{}"},
        "rules_import": {
            "file": SimpleUploadedFile("rules.yaml", policyfile.export_text(w.team).encode()),
            "format": "yaml",
        },
    }.get(name, {})


def fingerprint() -> tuple[Any, ...]:
    """What a request could change: settings, members, tokens, rules, calls and the audit log."""
    return (
        list(Team.objects.order_by("pk").values_list("name", "mode", "rules_admins_only", "rules_version")),
        list(Membership.objects.order_by("pk").values_list("team_id", "user_id", "role")),
        list(BridgeToken.objects.order_by("pk").values_list("pk", "revoked_at")),
        list(Rule.objects.order_by("pk").values_list("pk", "effect", "server", "tool", "note", "enabled")),
        list(RateLimit.objects.order_by("pk").values_list("pk", "scope", "window", "max_calls", "enabled")),
        list(
            NotificationChannel.objects.order_by("pk").values_list(
                "pk", "enabled", "secret", "last_sent_at", "last_error_at"
            )
        ),
        list(ToolCall.objects.order_by("pk").values_list("pk", "state")),
        list(Invitation.objects.order_by("pk").values_list("pk", "revoked_at", "accepted_at")),
        AuditEvent.objects.count(),
    )


def client_for(role: str, w: World) -> Client:
    client = Client()
    if role != "anonymous":
        client.force_login(w.users[role])
    return client


def check(response: Any, expected: str, where: str) -> None:
    if expected == "L":
        assert response.status_code == 302, where
        assert response["Location"].startswith(LOGIN), where
    else:
        assert response.status_code == int(expected), where
        if expected == "302":
            assert not response["Location"].startswith(LOGIN), where


def test_the_matrix_names_every_route() -> None:
    names = [p.name for p in urlpatterns]
    assert None not in names, "every approvals route needs a name (and a row in MATRIX)"
    assert sorted(names) == sorted(MATRIX)
    assert all(len(row.split()) == len(ROLES) for pair in MATRIX.values() for row in pair)


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(MATRIX))
@pytest.mark.parametrize("role", ROLES)
def test_route(world: World, role: str, name: str) -> None:
    client = client_for(role, world)
    url = url_for(name, world)
    for method, row in zip(("GET", "POST"), MATRIX[name], strict=True):
        expected = row.split()[ROLES.index(role)]
        if expected == SKIP:
            continue
        before = fingerprint()
        response = client.get(url) if method == "GET" else client.post(url, post_data(name, world))
        check(response, expected, f"{role} {method} {url}")
        changed = fingerprint() != before
        writes = name in WRITES if method == "POST" else name in AUDITED_READS
        if writes and expected in ("200", "302"):
            assert changed, f"{role} {method} {url}: permitted, but nothing changed"
        else:
            assert not changed, f"{role} {method} {url}: changed the database"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("role", "status", "location"),
    [
        ("anonymous", 302, LOGIN),
        ("admin", 200, None),
        ("reviewer", 200, None),
        ("member", 302, "/tokens/"),
        ("auditor", 302, "/rules/"),  # read-only: they land on the rules
        ("outsider", 200, None),  # their own team's queue (bravo)
    ],
)
def test_where_each_role_lands(world: World, role: str, status: int, location: str | None) -> None:
    response = client_for(role, world).get(reverse("approvals:queue"))
    assert response.status_code == status
    if location is not None:
        assert response["Location"].startswith(location)
    if role == "outsider":
        assert 'data-team="bravo"' in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["admin", "outsider"])
@pytest.mark.parametrize(
    "name",
    [
        "token_revoke",
        "token_networks",
        "member_role",
        "member_remove",
        "rule_edit",
        "rule_enabled",
        "rule_delete",
        "invitation_revoke",
        "limit_edit",
        "limit_enabled",
        "limit_delete",
        "alert_acknowledge",
        "notification_test",
        "notification_rotate",
        "notification_enabled",
        "notification_delete",
    ],
)
def test_an_unknown_object_is_404(world: World, role: str, name: str) -> None:
    pattern = next(p for p in urlpatterns if p.name == name)
    kwargs = dict.fromkeys(pattern.pattern.converters, 987654)
    response = client_for(role, world).post(reverse(f"approvals:{name}", kwargs=kwargs))
    assert response.status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["admin", "outsider"])
def test_an_unknown_call_is_403_like_a_foreign_one(world: World, role: str) -> None:
    response = client_for(role, world).post(
        reverse("approvals:decide", args=[str(uuid.uuid4())]), {"decision": "allow"}
    )
    assert response.status_code == 403


@pytest.mark.django_db
def test_rules_admins_only_takes_rule_creation_from_reviewers(world: World) -> None:
    Team.objects.filter(pk=world.team.pk).update(rules_admins_only=True)
    reviewer, admin = client_for("reviewer", world), client_for("admin", world)
    url = url_for("rule_new", world)
    data = post_data("rule_new", world)
    before = fingerprint()
    assert reviewer.get(url).status_code == 403
    assert reviewer.post(url, data).status_code == 403
    assert reviewer.get(url_for("rules", world)).status_code == 200  # still reads them
    assert fingerprint() == before
    # Always-Allow is rule creation too. Only its outcome is asserted: the form fallback answers 500 here
    # (InvalidRule is not caught by views.decide; reported), but the call stays held and no rule is made.
    quiet = Client(raise_request_exception=False)
    quiet.force_login(world.users["reviewer"])
    quiet.post(url_for("decide", world), {"decision": "always_allow"})
    assert fingerprint() == before
    assert admin.post(url, data).status_code == 302
    assert Rule.objects.filter(team=world.team).count() == 2


def require_two_factor(w: World, *, with_app: bool) -> None:
    """Alpha requires two-factor authentication; its admin and reviewer have an authenticator app or not."""
    from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret

    Team.objects.filter(pk=w.team.pk).update(require_mfa=True)
    if with_app:
        for role in MFA_MISSING:
            TOTP.activate(w.users[role], generate_totp_secret())


def test_the_mfa_matrix_names_every_route() -> None:
    assert sorted(MFA_MATRIX) == sorted(MATRIX)
    assert all(len(row.split()) == len(MFA_MISSING) for pair in MFA_MATRIX.values() for row in pair)


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(MFA_MATRIX))
@pytest.mark.parametrize("role", MFA_MISSING)
def test_route_without_two_factor(world: World, role: str, name: str) -> None:
    require_two_factor(world, with_app=False)
    client = client_for(role, world)
    url = url_for(name, world)
    for method, row in zip(("GET", "POST"), MFA_MATRIX[name], strict=True):
        expected = row.split()[MFA_MISSING.index(role)]
        where = f"{role} without two-factor {method} {url}"
        before = fingerprint()
        response = client.get(url) if method == "GET" else client.post(url, post_data(name, world))
        if expected == "M":
            assert (response.status_code, response["Location"]) == (302, MFA_PAGE), where
        else:
            check(response, expected, where)
        changed = fingerprint() != before
        if method == "POST" and name in WRITES and expected in ("200", "302"):
            assert changed, f"{where}: permitted, but nothing changed"
        else:
            assert not changed, f"{where}: changed the database"


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(MATRIX))
@pytest.mark.parametrize("role", MFA_MISSING)
def test_route_with_two_factor(world: World, role: str, name: str) -> None:
    """With an authenticator app the team's requirement is met: the role's own cells of MATRIX apply."""
    require_two_factor(world, with_app=True)
    test_route(world, role, name)


# --- the review socket ---------------------------------------------------------------------------------
ORIGIN = (b"origin", b"http://127.0.0.1")
# role -> (team asked for, accepted?, answer to accept_tool, answer to decide) on alpha's held call.
SOCKET = {
    "anonymous": ("alpha", False, None, None),
    "admin": ("alpha", True, "tool_accepted", "decided"),
    "reviewer": ("alpha", True, "error", "decided"),
    "member": ("alpha", False, None, None),
    "auditor": ("alpha", False, None, None),
    "outsider": ("alpha", False, None, None),
}


@pytest.fixture
async def close_connections() -> AsyncIterator[None]:
    yield
    await database_sync_to_async(connections.close_all)()


@contextlib.asynccontextmanager
async def review_socket(cookie: bytes | None, team: str) -> AsyncIterator[WebsocketCommunicator]:
    from config.asgi import application

    headers = [ORIGIN] + ([(b"cookie", cookie)] if cookie else [])
    socket = WebsocketCommunicator(application, f"/ws/review/?team={team}", headers=headers)
    try:
        connected, _ = await socket.connect(timeout=3)
        assert connected
        yield socket
    finally:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await socket.disconnect(timeout=3)


async def answer(socket: WebsocketCommunicator) -> dict[str, Any]:
    """The next frame that answers us (broadcast "call" updates, and the open-alert counts an admin is told
    of, are skipped)."""
    for _ in range(10):
        frame = json.loads(await socket.receive_from(timeout=3))
        if frame["type"] not in ("call", "alerts"):
            return frame
    raise AssertionError("no answer")


async def act(socket: WebsocketCommunicator, call_id: str) -> tuple[str, str]:
    await socket.send_json_to({"type": "accept_tool", "call_id": call_id})
    accepted = await answer(socket)
    assert accepted.get("accepted", True) is True  # not a no-op: the new definition was waiting
    await socket.send_json_to({"type": "decide", "call_id": call_id, "decision": "deny"})
    decided = await answer(socket)
    return accepted["type"], decided["type"]


def _state(call_id: Any) -> tuple[str, int]:
    return ToolCall.objects.get(pk=call_id).state, AuditEvent.objects.filter(kind="tool.accepted").count()


state = database_sync_to_async(_state)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role", ROLES)
async def test_review_socket(
    world: World, session_cookie: Callable, close_connections: None, role: str
) -> None:
    team, accepted, on_accept_tool, on_decide = SOCKET[role]
    cookie = None if role == "anonymous" else await database_sync_to_async(session_cookie)(world.users[role])
    call_id = str(world.call.pk)
    async with review_socket(cookie, team) as socket:
        first = json.loads(await socket.receive_from(timeout=3))
        if not accepted:
            assert first["type"] == "error"
            closed = await socket.receive_output(timeout=3)
            assert (closed["type"], closed.get("code")) == ("websocket.close", 4403)
        else:
            assert first["type"] == "snapshot"
            # The held call, then the call whose result waits for review.
            assert [c["id"] for c in first["calls"]] == [call_id, str(world.held_result.pk)]
            assert await act(socket, call_id) == (on_accept_tool, on_decide)
    final, tool_accepts = await state(call_id)
    assert final == ("denied" if on_decide == "decided" else "pending")
    assert tool_accepts == (1 if on_accept_tool == "tool_accepted" else 0)
    if role == "outsider":  # on their own team's socket, alpha's call is not theirs either
        async with review_socket(cookie, "bravo") as socket:
            assert json.loads(await socket.receive_from(timeout=3)) == {"type": "snapshot", "calls": []}
            assert await act(socket, call_id) == ("error", "error")
        assert await state(call_id) == ("pending", 0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role", MFA_MISSING)
async def test_review_socket_without_two_factor(
    world: World, session_cookie: Callable, close_connections: None, role: str
) -> None:
    """A team that requires two-factor authentication: its admin or reviewer without it is refused."""
    await database_sync_to_async(require_two_factor)(world, with_app=False)
    cookie = await database_sync_to_async(session_cookie)(world.users[role])
    async with review_socket(cookie, "alpha") as socket:
        assert json.loads(await socket.receive_from(timeout=3))["type"] == "error"
        closed = await socket.receive_output(timeout=3)
        assert (closed["type"], closed.get("code")) == ("websocket.close", 4403)
    assert await state(str(world.call.pk)) == ("pending", 0)

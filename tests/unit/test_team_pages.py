"""The team pages with Django's test client: bridge tokens (list, issue once, revoke) and members (admins).

What the pages set off over sockets (bridges closed, review pages closed) is in ``test_offboarding.py``.
"""

from __future__ import annotations

import html
import json
import re
import shlex
from datetime import timedelta
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals.models import AuditEvent, BridgeToken, Membership, ToolCall
from approvals.services.teams import member_add, user_get_or_create
from approvals.services.tokens import token_authenticate, token_issue

from .conftest import Issued

pytestmark = pytest.mark.django_db

TOKENS = reverse("approvals:tokens")
MEMBERS = reverse("approvals:members")
LOGIN = reverse("account_login")
RAW_TOKEN = re.compile(r"sgo_[0-9a-f]{8}_[A-Za-z0-9_-]+")


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def revoke_url(token: BridgeToken) -> str:
    return reverse("approvals:token_revoke", args=[token.pk])


def role_url(team: Any, user: Any) -> str:
    return reverse("approvals:member_role", args=[Membership.objects.get(team=team, user=user).pk])


def remove_url(team: Any, user: Any) -> str:
    return reverse("approvals:member_remove", args=[Membership.objects.get(team=team, user=user).pk])


def shown_prefixes(response: Any) -> set[str]:
    return set(re.findall(r'data-token="([0-9a-f]+)"', response.content.decode()))


def is_revoked(token: BridgeToken) -> bool:
    return BridgeToken.objects.get(pk=token.pk).revoked_at is not None


def role_of(team: Any, user: Any) -> str | None:
    return Membership.objects.filter(team=team, user=user).values_list("role", flat=True).first()


@pytest.fixture
def colleague(team_a: Any) -> Any:
    """A second plain member of alpha, with a token of their own."""
    user = user_get_or_create(email="mia@example.com", password="correct horse battery staple")
    member_add(team=team_a, user=user, role="member")
    return user


@pytest.fixture
def colleague_token(colleague: Any, team_a: Any) -> Issued:
    token, raw = token_issue(team=team_a, user=colleague, name="mia-desktop")
    return Issued(token, raw)


def issue(client: Client, url: str = TOKENS, **data: str) -> Any:
    return client.post(url, {"name": "laptop, Claude Desktop", "expires_in_days": "", **data})


# --- the tokens page: who sees what ------------------------------------------------------------------
@pytest.mark.parametrize("method", ["get", "post"])
def test_the_tokens_page_requires_login(client: Client, team_a: Any, method: str) -> None:
    response = getattr(client, method)(TOKENS, {"name": "sneaky"} if method == "post" else None)
    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN)
    assert not BridgeToken.objects.exists()


def test_a_member_sees_only_their_own_tokens(
    member: Any, member_token: Issued, colleague_token: Issued, outsider_token: Issued
) -> None:
    response = logged_in(member).get(TOKENS)
    assert response.status_code == 200
    assert shown_prefixes(response) == {member_token.token.prefix}
    assert "mia-desktop" not in response.content.decode()


def test_an_admin_sees_every_token_of_the_team_and_no_other(
    admin: Any, member_token: Issued, colleague_token: Issued, outsider_token: Issued
) -> None:
    response = logged_in(admin).get(TOKENS)
    assert response.status_code == 200
    assert shown_prefixes(response) == {member_token.token.prefix, colleague_token.token.prefix}
    page = response.content.decode()
    assert "max@example.com" in page and "mia@example.com" in page  # the owner column
    assert "otto@example.com" not in page


def test_an_outsider_cannot_list_another_teams_tokens(outsider: Any, member_token: Issued) -> None:
    response = logged_in(outsider).get(f"{TOKENS}?team=alpha")
    assert response.status_code == 403
    assert member_token.token.prefix not in response.content.decode()


def test_an_outsider_cannot_issue_a_token_in_another_team(outsider: Any, team_a: Any) -> None:
    assert issue(logged_in(outsider), f"{TOKENS}?team=alpha", name="foothold").status_code == 403
    assert not BridgeToken.objects.filter(name="foothold").exists()


def test_a_token_is_issued_in_the_team_asked_for(reviewer: Any, team_a: Any, team_b: Any) -> None:
    member_add(team=team_b, user=reviewer, role="member")
    issue(logged_in(reviewer), f"{TOKENS}?team=bravo", name="for-bravo")
    assert BridgeToken.objects.get(name="for-bravo").team == team_b


def test_the_list_never_contains_a_raw_token(member: Any, member_token: Issued) -> None:
    page = logged_in(member).get(TOKENS).content.decode()
    assert member_token.raw not in page
    assert f"sgo_{member_token.token.prefix}_…" in page  # only the visible prefix


# --- issuing ---------------------------------------------------------------------------------------
def test_issuing_shows_the_raw_token_once_and_never_again(member: Any, team_a: Any) -> None:
    client = logged_in(member)
    response = issue(client, name="laptop")
    assert response.status_code == 200
    assert response.templates[0].name == "approvals/token_issued.html"
    page = response.content.decode()
    raws = set(RAW_TOKEN.findall(page))
    assert len(raws) == 1, raws
    (raw,) = raws
    assert f'value="{raw}"' in page  # in the copy field

    token = BridgeToken.objects.get(team=team_a, user=member, name="laptop")
    assert raw.startswith(f"sgo_{token.prefix}_")
    assert raw not in token.secret_hash  # only a hash is kept

    listed = client.get(TOKENS).content.decode()
    assert token.prefix in listed
    assert raw not in listed


def test_the_issued_token_authenticates_as_its_owner_in_the_team(member: Any, team_a: Any) -> None:
    response = issue(logged_in(member), name="laptop")
    (raw,) = set(RAW_TOKEN.findall(response.content.decode()))
    token = token_authenticate(raw)
    assert token is not None
    assert (token.user, token.team, token.name) == (member, team_a, "laptop")
    assert AuditEvent.objects.filter(kind="token.issued", token=token, actor=member).exists()


def test_the_issued_page_is_not_stored_by_caches(member: Any) -> None:
    response = issue(logged_in(member))
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"


def test_the_list_page_is_not_the_issued_page(member: Any) -> None:
    response = logged_in(member).get(TOKENS)
    assert "token_issued" not in " ".join(t.name or "" for t in response.templates)


@pytest.mark.parametrize(("days", "expected"), [("", None), ("7", 7), ("30", 30), ("365", 365)])
def test_the_expiry_choice_sets_expires_at(member: Any, days: str, expected: int | None) -> None:
    before = timezone.now()
    issue(logged_in(member), name="expiring", expires_in_days=days)
    after = timezone.now()
    token = BridgeToken.objects.get(name="expiring")
    if expected is None:
        assert token.expires_at is None
    else:
        assert token.expires_at is not None
        assert before + timedelta(days=expected) <= token.expires_at <= after + timedelta(days=expected)


@pytest.mark.parametrize(
    ("configured", "url"),
    [("https://signoff.example.com", "https://signoff.example.com"), (None, "http://testserver")],
    ids=["SIGNOFF_PUBLIC_URL", "from-the-request"],
)
def test_the_snippets_run_mcpbridge_with_the_url_and_the_token(
    member: Any, settings: Any, configured: str | None, url: str
) -> None:
    settings.SIGNOFF_PUBLIC_URL = configured or "http://127.0.0.1:8000"
    settings.SIGNOFF_PUBLIC_URL_SET = configured is not None
    page = issue(logged_in(member)).content.decode()
    (raw,) = set(RAW_TOKEN.findall(page))

    desktop = re.search(r'<pre id="snippet-desktop">(.*?)</pre>', page, re.S)
    assert desktop, "no Claude Desktop / Cursor snippet"
    config = json.loads(html.unescape(desktop.group(1)))
    ((name, server),) = config["mcpServers"].items()
    assert server["command"] == "mcpbridge"
    assert server["env"] == {"SIGNOFF_URL": url, "SIGNOFF_TOKEN": raw}
    assert server["args"][:3] == ["--name", name, "--"]

    code = re.search(r'<pre id="snippet-code">(.*?)</pre>', page, re.S)
    assert code, "no Claude Code snippet"
    words = shlex.split(html.unescape(code.group(1)))
    assert words[:4] == ["claude", "mcp", "add", name]
    assert f"SIGNOFF_URL={url}" in words
    assert f"SIGNOFF_TOKEN={raw}" in words
    assert words[words.index("--") + 1] == "mcpbridge"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"name": ""}, "This field is required"),
        ({"name": "x" * 101}, "at most 100 characters"),
        ({"name": "laptop", "expires_in_days": "8"}, "Select a valid choice"),
    ],
    ids=["no-name", "long-name", "bad-expiry"],
)
def test_an_invalid_token_form_is_shown_again_with_the_error(
    member: Any, data: dict[str, str], error: str
) -> None:
    response = logged_in(member).post(TOKENS, data)
    assert response.status_code == 200
    assert "approvals/tokens.html" in [t.name for t in response.templates]
    assert error in response.content.decode()
    assert "Cache-Control" not in response or "no-store" not in response["Cache-Control"]
    assert not BridgeToken.objects.filter(user=member).exists()


# --- revoking --------------------------------------------------------------------------------------
def test_the_owner_revokes_their_token_and_its_held_calls_are_denied(
    member: Any, member_token: Issued, submit
) -> None:
    held = submit(member_token.token).call
    response = logged_in(member).post(revoke_url(member_token.token), follow=True)
    assert response.redirect_chain == [(TOKENS, 302)]
    assert "is revoked" in response.content.decode()
    assert is_revoked(member_token.token)
    assert token_authenticate(member_token.raw) is None
    call = ToolCall.objects.get(pk=held.pk)
    assert call.state == ToolCall.State.DENIED
    assert call.reason == "denied: revoked by max@example.com"
    assert AuditEvent.objects.filter(kind="token.revoked", token=member_token.token, actor=member).exists()


def test_revoking_twice_says_it_was_already_revoked(member: Any, member_token: Issued) -> None:
    client = logged_in(member)
    client.post(revoke_url(member_token.token))
    response = client.post(revoke_url(member_token.token), follow=True)
    assert "was already revoked" in response.content.decode()
    assert AuditEvent.objects.filter(kind="token.revoked", token=member_token.token).count() == 1


@pytest.mark.parametrize("who", ["colleague", "reviewer"])
def test_a_non_admin_cannot_revoke_someone_elses_token(
    request: pytest.FixtureRequest, member_token: Issued, submit, who: str
) -> None:
    held = submit(member_token.token).call
    user = request.getfixturevalue(who)
    assert logged_in(user).post(revoke_url(member_token.token)).status_code == 403
    assert not is_revoked(member_token.token)
    assert ToolCall.objects.get(pk=held.pk).state == ToolCall.State.PENDING


def test_an_admin_revokes_any_token_of_the_team(admin: Any, member_token: Issued) -> None:
    response = logged_in(admin).post(revoke_url(member_token.token))
    assert (response.status_code, response["Location"]) == (302, TOKENS)
    assert is_revoked(member_token.token)
    assert AuditEvent.objects.filter(kind="token.revoked", token=member_token.token, actor=admin).exists()


def test_an_outsider_cannot_revoke_another_teams_token(outsider: Any, member_token: Issued) -> None:
    assert logged_in(outsider).post(revoke_url(member_token.token)).status_code == 403
    assert not is_revoked(member_token.token)


def test_an_admin_cannot_revoke_another_teams_token(admin: Any, outsider_token: Issued) -> None:
    assert logged_in(admin).post(revoke_url(outsider_token.token)).status_code == 403
    assert not is_revoked(outsider_token.token)


def test_a_removed_owner_can_no_longer_revoke_their_token(member: Any, member_token: Issued) -> None:
    """Removal revokes anyway; this is about the access check, so the membership goes behind its back."""
    Membership.objects.filter(user=member).delete()
    assert logged_in(member).post(revoke_url(member_token.token)).status_code == 403


def test_revoking_needs_login_and_post(client: Client, member: Any, member_token: Issued) -> None:
    response = client.post(revoke_url(member_token.token))
    assert response.status_code == 302 and response["Location"].startswith(LOGIN)
    assert logged_in(member).get(revoke_url(member_token.token)).status_code == 405
    assert not is_revoked(member_token.token)


def test_revoking_an_unknown_token_is_404(admin: Any) -> None:
    assert logged_in(admin).post(reverse("approvals:token_revoke", args=[999_999])).status_code == 404


# --- the members page: admins only ---------------------------------------------------------------
def test_an_admin_sees_the_teams_members_and_their_roles(
    admin: Any, reviewer: Any, member: Any, outsider: Any
) -> None:
    response = logged_in(admin).get(MEMBERS)
    assert response.status_code == 200
    page = response.content.decode()
    for person in ("ada@example.com", "rita@example.com", "max@example.com"):
        assert f'data-member="{person}"' in page
    assert "otto@example.com" not in page


@pytest.mark.parametrize("who", ["reviewer", "member", "outsider"])
def test_only_admins_see_the_members_page(request: pytest.FixtureRequest, team_a: Any, who: str) -> None:
    user = request.getfixturevalue(who)
    assert logged_in(user).get(f"{MEMBERS}?team=alpha").status_code == 403


@pytest.mark.parametrize("who", ["reviewer", "member"])
def test_only_admins_add_members(request: pytest.FixtureRequest, team_a: Any, who: str) -> None:
    user = request.getfixturevalue(who)
    response = logged_in(user).post(MEMBERS, {"email": "friend@example.com", "role": "admin"})
    assert response.status_code == 403
    assert not get_user_model().objects.filter(username="friend@example.com").exists()


def test_the_members_page_needs_login(client: Client, team_a: Any) -> None:
    response = client.get(MEMBERS)
    assert response.status_code == 302 and response["Location"].startswith(LOGIN)


def test_an_admin_cannot_see_another_teams_members(admin: Any, outsider: Any) -> None:
    assert logged_in(admin).get(f"{MEMBERS}?team=bravo").status_code == 403


def test_adding_by_email_creates_a_verified_account_with_the_role(admin: Any, team_a: Any) -> None:
    response = logged_in(admin).post(
        MEMBERS, {"email": "New.Person@Example.com", "role": "reviewer"}, follow=True
    )
    assert response.redirect_chain == [(MEMBERS, 302)]
    assert "new.person@example.com is reviewer in Alpha" in response.content.decode()
    user = get_user_model().objects.get(username="new.person@example.com")
    assert user.email == "new.person@example.com"
    assert not user.has_usable_password()
    assert EmailAddress.objects.filter(user=user, email=user.email, verified=True, primary=True).exists()
    assert role_of(team_a, user) == "reviewer"
    event = AuditEvent.objects.get(kind="member.added", data__member="new.person@example.com")
    assert (event.team, event.actor, event.data["role"]) == (team_a, admin, "reviewer")


def test_adding_someone_from_another_team_keeps_their_account(
    admin: Any, team_a: Any, team_b: Any, outsider: Any
) -> None:
    logged_in(admin).post(MEMBERS, {"email": "otto@example.com", "role": "member"})
    assert role_of(team_a, outsider) == "member"
    assert role_of(team_b, outsider) == "reviewer"
    assert get_user_model().objects.filter(username="otto@example.com").count() == 1
    assert outsider.check_password("correct horse battery staple")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"email": "not-an-email", "role": "member"}, "Enter a valid email address"),
        ({"email": "x@example.com", "role": "owner"}, "Select a valid choice"),
    ],
    ids=["email", "role"],
)
def test_an_invalid_member_form_is_shown_again_with_the_error(
    admin: Any, data: dict[str, str], error: str
) -> None:
    response = logged_in(admin).post(MEMBERS, data)
    assert response.status_code == 200
    assert error in response.content.decode()
    assert not get_user_model().objects.filter(username=data["email"]).exists()


def test_an_admin_changes_a_members_role(admin: Any, member: Any, team_a: Any) -> None:
    response = logged_in(admin).post(role_url(team_a, member), {"role": "reviewer"}, follow=True)
    assert response.redirect_chain == [(MEMBERS, 302)]
    assert "max@example.com is now reviewer" in response.content.decode()
    assert role_of(team_a, member) == "reviewer"
    event = AuditEvent.objects.get(kind="member.role_changed")
    assert (event.actor, event.data["member"], event.data["role"]) == (admin, "max@example.com", "reviewer")


def test_an_unknown_role_changes_nothing(admin: Any, member: Any, team_a: Any) -> None:
    response = logged_in(admin).post(role_url(team_a, member), {"role": "owner"}, follow=True)
    assert "Choose a role" in response.content.decode()
    assert role_of(team_a, member) == "member"


@pytest.mark.parametrize("who", ["reviewer", "member", "outsider"])
def test_only_the_teams_admins_change_roles_or_remove(
    request: pytest.FixtureRequest, admin: Any, team_a: Any, who: str
) -> None:
    user = request.getfixturevalue(who)
    client = logged_in(user)
    assert client.post(role_url(team_a, admin), {"role": "member"}).status_code == 403
    assert client.post(remove_url(team_a, admin)).status_code == 403
    assert role_of(team_a, admin) == "admin"


def test_an_admin_cannot_change_or_remove_another_teams_members(
    admin: Any, outsider: Any, outsider_token: Issued, team_b: Any
) -> None:
    client = logged_in(admin)
    assert client.post(role_url(team_b, outsider), {"role": "member"}).status_code == 403
    assert client.post(remove_url(team_b, outsider)).status_code == 403
    assert role_of(team_b, outsider) == "reviewer"
    assert not is_revoked(outsider_token.token)


@pytest.mark.parametrize("action", ["demote", "remove"])
def test_the_last_admin_cannot_be_demoted_or_removed(
    admin: Any, reviewer: Any, team_a: Any, action: str
) -> None:
    client = logged_in(admin)
    events = AuditEvent.objects.count()
    if action == "demote":
        response = client.post(role_url(team_a, admin), {"role": "reviewer"}, follow=True)
    else:
        response = client.post(remove_url(team_a, admin), follow=True)
    assert response.redirect_chain == [(MEMBERS, 302)]
    assert "A team needs at least one admin" in response.content.decode()
    assert role_of(team_a, admin) == "admin"
    assert AuditEvent.objects.count() == events


def test_an_admin_may_step_down_once_there_is_another_admin(admin: Any, reviewer: Any, team_a: Any) -> None:
    client = logged_in(admin)
    client.post(role_url(team_a, reviewer), {"role": "admin"})
    client.post(role_url(team_a, admin), {"role": "reviewer"})
    assert (role_of(team_a, admin), role_of(team_a, reviewer)) == ("reviewer", "admin")
    assert client.get(MEMBERS).status_code == 403  # no longer an admin


def test_an_inactive_admin_does_not_count_as_the_other_admin(admin: Any, team_a: Any) -> None:
    dormant = user_get_or_create(email="dora@example.com")
    member_add(team=team_a, user=dormant, role="admin")
    get_user_model().objects.filter(pk=dormant.pk).update(is_active=False)
    response = logged_in(admin).post(remove_url(team_a, admin), follow=True)
    assert "A team needs at least one admin" in response.content.decode()
    assert role_of(team_a, admin) == "admin"


def test_removing_a_member_revokes_their_tokens_in_this_team_only(
    admin: Any, member: Any, member_token: Issued, team_a: Any, team_b: Any, submit
) -> None:
    member_add(team=team_b, user=member, role="member")
    bravo_token, _ = token_issue(team=team_b, user=member, name="bravo-laptop")
    held = submit(member_token.token).call
    bravo_held = submit(bravo_token).call

    response = logged_in(admin).post(remove_url(team_a, member), follow=True)
    assert response.redirect_chain == [(MEMBERS, 302)]
    assert "max@example.com was removed" in response.content.decode()

    assert role_of(team_a, member) is None
    assert role_of(team_b, member) == "member"
    assert is_revoked(member_token.token)
    assert not is_revoked(bravo_token)
    call = ToolCall.objects.get(pk=held.pk)
    assert call.state == ToolCall.State.DENIED
    assert call.reason == "denied: max@example.com was removed from the team"
    assert ToolCall.objects.get(pk=bravo_held.pk).state == ToolCall.State.PENDING


def test_removing_a_member_is_audited(
    admin: Any, member: Any, member_token: Issued, team_a: Any, submit
) -> None:
    held = submit(member_token.token).call
    logged_in(admin).post(remove_url(team_a, member))

    removed = AuditEvent.objects.get(kind="member.removed")
    assert (removed.team, removed.actor) == (team_a, admin)
    assert (removed.data["member"], removed.data["role"]) == ("max@example.com", "member")
    revoked = AuditEvent.objects.get(kind="token.revoked")
    assert (revoked.token_id, revoked.actor) == (member_token.token.pk, admin)
    denied = AuditEvent.objects.get(kind="call.denied", call_id=held.pk)
    assert "was removed from the team" in denied.data["reason"]


def test_a_removed_member_loses_the_team_pages(admin: Any, member: Any, team_a: Any) -> None:
    client = logged_in(member)
    assert client.get(TOKENS).status_code == 200
    logged_in(admin).post(remove_url(team_a, member))
    assert client.get(f"{TOKENS}?team=alpha").status_code == 403
    assert "not in a team yet" in client.get(TOKENS).content.decode()


def test_member_changes_need_post(admin: Any, member: Any, team_a: Any) -> None:
    client = logged_in(admin)
    assert client.get(role_url(team_a, member)).status_code == 405
    assert client.get(remove_url(team_a, member)).status_code == 405
    assert role_of(team_a, member) == "member"


# --- CSRF ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["issue", "revoke", "add", "role", "remove"])
def test_the_team_pages_enforce_csrf(
    admin: Any, member: Any, member_token: Issued, team_a: Any, form: str
) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)
    url, data = {
        "issue": (TOKENS, {"name": "forged"}),
        "revoke": (revoke_url(member_token.token), {}),
        "add": (MEMBERS, {"email": "forged@example.com", "role": "admin"}),
        "role": (role_url(team_a, member), {"role": "admin"}),
        "remove": (remove_url(team_a, member), {}),
    }[form]
    assert client.post(url, data).status_code == 403
    assert not BridgeToken.objects.filter(name="forged").exists()
    assert not is_revoked(member_token.token)
    assert not get_user_model().objects.filter(username="forged@example.com").exists()
    assert role_of(team_a, member) == "member"


def test_the_team_forms_carry_a_csrf_token(admin: Any, member_token: Issued) -> None:
    """The other half of the check above: the pages' own forms do pass it."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)
    page = client.get(TOKENS).content.decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert csrf
    response = client.post(revoke_url(member_token.token), {"csrfmiddlewaretoken": csrf.group(1)})
    assert response.status_code == 302
    assert is_revoked(member_token.token)


def test_adding_the_last_admin_again_with_another_role_is_refused_with_a_message(admin, team_a) -> None:
    client = Client(raise_request_exception=False)
    client.force_login(admin)
    response = client.post(MEMBERS, {"email": admin.email, "role": "member"}, follow=True)
    assert response.status_code == 200
    assert "A team needs at least one admin" in response.content.decode()
    assert role_of(team_a, admin) == "admin"

"""Invitations (issue 4): the services, the pages with Django's test client, the ``invite`` command; and the
account flows around them: signup only through an invitation, email verification, password reset, login
rate limits.
"""

from __future__ import annotations

import hashlib
import io
import re
import smtplib
import threading
from datetime import timedelta
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals.models import AuditEvent, Invitation, Membership, Team
from approvals.services.invitations import (
    AlreadyMember,
    InvitationNotOpen,
    WrongAccount,
    invitation_accept,
    invitation_create,
    invitation_for_secret,
    invitation_revoke,
    invitation_send,
)
from approvals.services.teams import user_get_or_create

from .conftest import clear_cache

pytestmark = pytest.mark.django_db

NEWCOMER = "nina@example.com"
PASSWORD = "a long enough passphrase 42"
LINK = re.compile(r"https?://[^\s/]+/invite/([A-Za-z0-9_-]+)/")
MEMBERS = reverse("approvals:members")
SIGNUP = reverse("account_signup")
LOGIN = reverse("account_login")


def invite(team: Team, by: Any = None, email: str = NEWCOMER, role: str = "reviewer", **kw: Any) -> Any:
    return invitation_create(team=team, email=email, role=role, by=by, **kw)


def accept_url(secret: str) -> str:
    return reverse("approvals:invitation_accept", kwargs={"secret": secret})


def kinds() -> list[str]:
    return list(AuditEvent.objects.order_by("seq").values_list("kind", flat=True))


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def state() -> tuple[Any, ...]:
    """What using a link could change."""
    return (
        list(Invitation.objects.order_by("pk").values_list("pk", "accepted_at", "revoked_at")),
        list(Membership.objects.order_by("pk").values_list("team_id", "user_id", "role")),
        get_user_model().objects.count(),
        AuditEvent.objects.count(),
    )


def main_of(response: Any) -> str:
    """The page's own content, without the header (which names the signed-in user)."""
    return response.content.decode().split('<main class="page">', 1)[1]


def newcomer_account(*, verified: bool = True) -> Any:
    user = user_get_or_create(email=NEWCOMER, password=PASSWORD)
    if not verified:
        EmailAddress.objects.filter(user=user).update(verified=False)
    return user


# --- services -------------------------------------------------------------------------------------
def test_create_stores_only_the_secrets_hash_and_audits(team_a: Team, admin: Any) -> None:
    invitation, secret = invite(team_a, admin, email="  Nina@Example.COM ")
    assert invitation.email == NEWCOMER
    assert invitation.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(Invitation.objects.filter(pk=invitation.pk).values().get())
    assert timedelta(days=6, hours=23) < invitation.expires_at - timezone.now() <= timedelta(days=7)
    event = AuditEvent.objects.get(kind="invitation.created")
    assert event.team_id == team_a.pk and event.actor_id == admin.pk
    assert event.data["email"] == NEWCOMER and event.data["role"] == "reviewer"
    assert secret not in str(event.data)
    assert invitation_for_secret(secret) == invitation


def test_a_new_invitation_replaces_the_open_one(team_a: Team, admin: Any) -> None:
    first, first_secret = invite(team_a, admin, role="member")
    second, second_secret = invite(team_a, admin, email=NEWCOMER.upper(), role="auditor")
    assert invitation_for_secret(first_secret) is None
    assert invitation_for_secret(second_secret) == second
    assert Invitation.objects.get(pk=first.pk).revoked_at is not None
    revoked = AuditEvent.objects.get(kind="invitation.revoked")
    assert revoked.data["invitation"] == first.pk and "replaced" in revoked.data["reason"]
    assert kinds()[-3:] == ["invitation.created", "invitation.revoked", "invitation.created"]


def test_invitations_of_other_teams_are_not_replaced(team_a: Team, team_b: Team) -> None:
    _, secret_a = invite(team_a)
    _, secret_b = invite(team_b)
    assert invitation_for_secret(secret_a) is not None and invitation_for_secret(secret_b) is not None


def test_inviting_a_member_is_refused(team_a: Team, member: Any) -> None:
    before = state()
    with pytest.raises(AlreadyMember, match="already a member"):
        invite(team_a, email="MAX@example.com")
    assert state() == before


@pytest.mark.parametrize(
    ("role", "valid_for"),
    [("owner", timedelta(days=1)), ("member", timedelta(0)), ("member", timedelta(days=31))],
)
def test_an_unknown_role_or_a_bad_validity_is_refused(team_a: Team, role: str, valid_for: timedelta) -> None:
    with pytest.raises(ValueError):
        invite(team_a, role=role, valid_for=valid_for)
    assert not Invitation.objects.exists()


@pytest.mark.parametrize("secret", ["", "short", "x" * 101, "not/a/secret/at/all/really", "é" * 30])
def test_malformed_and_unknown_secrets_find_nothing(team_a: Team, secret: str) -> None:
    invite(team_a)
    assert invitation_for_secret(secret) is None
    assert invitation_for_secret("A" * 43) is None


def test_accepting_makes_the_membership_once_and_audits(team_a: Team, admin: Any) -> None:
    invitation, secret = invite(team_a, admin, role="reviewer")
    user = newcomer_account()
    membership = invitation_accept(invitation=invitation, user=user)
    assert (membership.team, membership.user, membership.role) == (team_a, user, "reviewer")
    stored = Invitation.objects.get(pk=invitation.pk)
    assert stored.accepted_by == user and stored.accepted_at is not None and not stored.is_open()
    assert kinds()[-2:] == ["member.added", "invitation.accepted"]
    added = AuditEvent.objects.get(kind="member.added", data__member=NEWCOMER)
    assert added.actor_id == admin.pk  # the admin granted the role; the newcomer used the link
    accepted = AuditEvent.objects.get(kind="invitation.accepted")
    assert accepted.actor_id == user.pk and accepted.data["role"] == "reviewer"
    assert invitation_for_secret(secret) is None


def test_a_second_use_is_refused_even_with_a_stale_copy(team_a: Team) -> None:
    invitation, _ = invite(team_a)
    stale = Invitation.objects.get(pk=invitation.pk)  # read before the first use, as a racing request would
    user = newcomer_account()
    invitation_accept(invitation=invitation, user=user)
    before = state()
    with pytest.raises(InvitationNotOpen):
        invitation_accept(invitation=stale, user=user)
    assert state() == before


@pytest.mark.django_db(transaction=True)
def test_two_accepts_at_once_use_the_link_exactly_once(team_a: Team) -> None:
    """On PostgreSQL the two really race; SQLite serialises writers, so there they run one after the other
    from two threads, each with a copy read before either used it."""
    invitation, _ = invite(team_a, role="member")
    user = newcomer_account()
    copies = [Invitation.objects.get(pk=invitation.pk) for _ in range(2)]
    concurrent = connection.vendor == "postgresql"
    barrier = threading.Barrier(2 if concurrent else 1)
    outcomes: list[Any] = []

    def accept(copy: Invitation) -> None:
        try:
            barrier.wait(timeout=10)
            outcomes.append(invitation_accept(invitation=copy, user=user))
        except InvitationNotOpen as exc:
            outcomes.append(exc)
        except BaseException as exc:
            outcomes.append(f"unexpected {exc!r}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=accept, args=(copy,)) for copy in copies]
    for thread in threads:
        thread.start()
        if not concurrent:
            thread.join()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(type(o).__name__ for o in outcomes) == ["InvitationNotOpen", "Membership"], outcomes
    assert Membership.objects.filter(team=team_a, user=user).count() == 1
    assert AuditEvent.objects.filter(kind="invitation.accepted").count() == 1


def test_another_account_is_refused(team_a: Team, outsider: Any) -> None:
    invitation, secret = invite(team_a)
    before = state()
    with pytest.raises(WrongAccount, match=f"for {NEWCOMER}.*signed in as otto@example.com"):
        invitation_accept(invitation=invitation, user=outsider)
    assert state() == before
    assert invitation_for_secret(secret) == invitation  # still usable by the right person


def test_an_unverified_address_does_not_count(team_a: Team) -> None:
    invitation, _ = invite(team_a)
    user = newcomer_account(verified=False)
    with pytest.raises(WrongAccount):
        invitation_accept(invitation=invitation, user=user)


def test_a_deactivated_account_cannot_accept(team_a: Team) -> None:
    invitation, _ = invite(team_a)
    user = newcomer_account()
    get_user_model().objects.filter(pk=user.pk).update(is_active=False)
    user.refresh_from_db()
    with pytest.raises(WrongAccount):
        invitation_accept(invitation=invitation, user=user)


def test_an_expired_invitation_cannot_be_used(team_a: Team) -> None:
    invitation, secret = invite(team_a)
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    user = newcomer_account()
    assert invitation_for_secret(secret) is None
    before = state()
    with pytest.raises(InvitationNotOpen):
        invitation_accept(invitation=invitation, user=user)
    assert state() == before


def test_a_revoked_invitation_cannot_be_used(team_a: Team, admin: Any) -> None:
    invitation, secret = invite(team_a, admin)
    assert invitation_revoke(invitation=invitation, by=admin) is True
    assert invitation_revoke(invitation=invitation, by=admin) is False  # once
    event = AuditEvent.objects.get(kind="invitation.revoked")
    assert event.actor_id == admin.pk and event.data["email"] == NEWCOMER
    assert invitation_for_secret(secret) is None
    with pytest.raises(InvitationNotOpen):
        invitation_accept(invitation=invitation, user=newcomer_account())
    assert not Membership.objects.filter(user__username=NEWCOMER).exists()


def test_a_used_invitation_cannot_be_revoked(team_a: Team, admin: Any) -> None:
    invitation, _ = invite(team_a, admin)
    invitation_accept(invitation=invitation, user=newcomer_account())
    assert invitation_revoke(invitation=invitation, by=admin) is False
    assert not AuditEvent.objects.filter(kind="invitation.revoked").exists()


def test_a_member_who_joined_meanwhile_keeps_their_role(team_a: Team, admin: Any) -> None:
    from approvals.services.teams import member_add

    invitation, _ = invite(team_a, admin, role="admin")
    user = newcomer_account()
    member_add(team=team_a, user=user, role="auditor")
    membership = invitation_accept(invitation=invitation, user=user)
    assert membership.role == "auditor"  # a stale link does not change a role
    assert AuditEvent.objects.get(kind="invitation.accepted").data["already_member"] is True


def test_the_email_says_who_which_team_role_and_expiry(team_a: Team, admin: Any, mailoutbox: list) -> None:
    invitation, secret = invite(team_a, admin, role="auditor", valid_for=timedelta(days=3))
    invitation_send(invitation=invitation, secret=secret, base_url="https://signoff.example.com/")
    (mail,) = mailoutbox
    assert mail.to == [NEWCOMER]
    assert mail.subject == "ada@example.com invited you to Alpha on Signoff"
    assert f"https://signoff.example.com/invite/{secret}/" in mail.body
    assert "ada@example.com invited you" in mail.body and '"Alpha"' in mail.body and "as auditor" in mail.body
    assert f"until {invitation.expires_at:%Y-%m-%d %H:%M} UTC" in mail.body
    assert "&" not in mail.body and "&#" not in mail.subject  # plain text, not HTML-escaped


def test_the_emails_link_defaults_to_the_public_url(team_a: Team, mailoutbox: list, settings: Any) -> None:
    settings.SIGNOFF_PUBLIC_URL = "https://public.example.org"
    invitation, secret = invite(team_a)
    invitation_send(invitation=invitation, secret=secret)
    assert f"https://public.example.org/invite/{secret}/" in mailoutbox[0].body
    assert mailoutbox[0].subject == "You are invited to Alpha on Signoff"


# --- the Members page: invite and revoke --------------------------------------------------------------
def test_an_admin_invites_from_the_members_page(team_a: Team, admin: Any, mailoutbox: list) -> None:
    client = logged_in(admin)
    page = client.get(MEMBERS).content.decode()
    assert 'action="/members/invitations/?team=alpha"' in page and "No open invitations." in page
    response = client.post(
        reverse("approvals:invitation_create") + "?team=alpha",
        {"email": NEWCOMER, "role": "reviewer", "valid_for_days": "3"},
    )
    assert response.status_code == 302 and response["Location"] == MEMBERS
    (mail,) = mailoutbox
    secret = LINK.search(mail.body).group(1)  # type: ignore[union-attr]
    assert "http://testserver/invite/" in mail.body  # SIGNOFF_PUBLIC_URL unset: the page's own address
    invitation = invitation_for_secret(secret)
    assert invitation is not None and invitation.role == "reviewer" and invitation.created_by == admin
    assert timedelta(days=2, hours=23) < invitation.expires_at - timezone.now() <= timedelta(days=3)
    page = client.get(MEMBERS).content.decode()
    assert f'data-invitation="{NEWCOMER}"' in page and "Invitation emailed to nina@example.com" in page
    assert f"{invitation.expires_at:%Y-%m-%d %H:%M} UTC" in page
    assert secret not in page


def test_inviting_a_member_says_so(team_a: Team, admin: Any, member: Any, mailoutbox: list) -> None:
    client = logged_in(admin)
    url = reverse("approvals:invitation_create") + "?team=alpha"
    response = client.post(url, {"email": member.email, "role": "member", "valid_for_days": "7"}, follow=True)
    assert "max@example.com is already a member of Alpha." in response.content.decode()
    response = client.post(
        url, {"email": "not an address", "role": "member", "valid_for_days": "7"}, follow=True
    )
    assert "No invitation sent. Email: Enter a valid email address." in response.content.decode()
    response = client.post(url, {"email": NEWCOMER, "role": "member", "valid_for_days": "365"}, follow=True)
    assert "No invitation sent. Link expires in:" in response.content.decode()
    assert not Invitation.objects.exists() and mailoutbox == []


def test_when_the_mail_fails_the_admin_gets_the_link_once(
    team_a: Team, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(**kwargs: Any) -> None:
        raise smtplib.SMTPServerDisconnected("no server")

    monkeypatch.setattr("approvals.invitation_views.invitation_send", refuse)
    response = logged_in(admin).post(
        reverse("approvals:invitation_create") + "?team=alpha",
        {"email": NEWCOMER, "role": "member", "valid_for_days": "7"},
    )
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    secret = LINK.search(response.content.decode()).group(1)  # type: ignore[union-attr]
    assert invitation_for_secret(secret) is not None
    assert "could not be sent" in response.content.decode()


def test_an_admin_revokes_an_invitation(team_a: Team, admin: Any) -> None:
    invitation, secret = invite(team_a, admin)
    client = logged_in(admin)
    response = client.post(reverse("approvals:invitation_revoke", args=[invitation.pk]), follow=True)
    page = response.content.decode()
    assert "its link no longer works" in page and f'data-invitation="{NEWCOMER}"' not in page
    assert invitation_for_secret(secret) is None
    response = client.post(reverse("approvals:invitation_revoke", args=[invitation.pk]), follow=True)
    assert "already used or revoked" in response.content.decode()


def test_another_teams_admin_cannot_revoke(team_a: Team, team_b: Team, outsider: Any) -> None:
    from approvals.services.teams import member_add

    member_add(team=team_b, user=outsider, role="admin")
    invitation, secret = invite(team_a)
    before = state()
    assert (
        logged_in(outsider).post(reverse("approvals:invitation_revoke", args=[invitation.pk])).status_code
        == 403
    )
    assert state() == before and invitation_for_secret(secret) is not None


# --- the link's page ---------------------------------------------------------------------------------
def test_signup_is_closed_without_an_invitation(db: None) -> None:
    before = get_user_model().objects.count()
    response = Client().get(SIGNUP)
    assert "Accounts are by invitation" in response.content.decode()
    Client().post(SIGNUP, {"email": NEWCOMER, "password1": PASSWORD, "password2": PASSWORD})
    assert get_user_model().objects.count() == before


def test_a_new_person_signs_up_through_the_link_and_joins(team_a: Team, admin: Any) -> None:
    _, secret = invite(team_a, admin, role="reviewer")
    client = Client()
    page = client.get(accept_url(secret))
    text = page.content.decode()
    assert page.status_code == 200 and page["Cache-Control"] == "no-store"
    assert "ada@example.com</strong> invited" in text and "Alpha" in text and "reviewer" in text
    assert f'href="{SIGNUP}"' in text
    form = client.get(SIGNUP).content.decode()
    assert re.search(rf'name="email"[^>]*value="{NEWCOMER}"\s+readonly', form), form
    assert "You are joining <strong>Alpha</strong> as <strong>reviewer</strong>" in form
    # The address is locked to the invited one, whatever the form sends.
    refused = client.post(
        SIGNUP, {"email": "mallory@example.com", "password1": PASSWORD, "password2": PASSWORD}
    )
    assert "Sign up with the address you were invited at: nina@example.com." in refused.content.decode()
    assert not get_user_model().objects.filter(email="mallory@example.com").exists()
    response = client.post(SIGNUP, {"email": NEWCOMER, "password1": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 302
    user = get_user_model().objects.get(email=NEWCOMER)
    assert user.username == NEWCOMER
    assert EmailAddress.objects.get(user=user).verified  # the link was mailed there: no second mail
    assert Membership.objects.get(team=team_a, user=user).role == "reviewer"
    assert kinds()[-2:] == ["member.added", "invitation.accepted"]
    landing = client.get(response["Location"], follow=True)
    assert landing.wsgi_request.user == user
    assert "Welcome to Alpha: you are reviewer." in landing.content.decode()
    # The link is used up, and signup closed again for this browser.
    assert client.get(accept_url(secret)).status_code == 404
    client.logout()
    assert "Accounts are by invitation" in client.get(SIGNUP).content.decode()


def test_signup_closes_when_the_invitation_is_revoked_meanwhile(team_a: Team, admin: Any) -> None:
    invitation, secret = invite(team_a, admin)
    client = Client()
    client.get(accept_url(secret))
    invitation_revoke(invitation=invitation, by=admin)
    response = client.post(SIGNUP, {"email": NEWCOMER, "password1": PASSWORD, "password2": PASSWORD})
    assert "Accounts are by invitation" in response.content.decode()
    assert not get_user_model().objects.filter(email=NEWCOMER).exists()


def test_someone_with_an_account_signs_in_then_accepts(team_a: Team, admin: Any) -> None:
    _, secret = invite(team_a, admin, role="auditor")
    user = newcomer_account()
    client = Client()
    page = client.get(accept_url(secret)).content.decode()
    login_url = f"{LOGIN}?next=%2Finvite%2F{secret}%2F"
    assert f'href="{login_url}"' in page and "sign in as nina@example.com" in page
    assert "Accounts are by invitation" in client.get(SIGNUP).content.decode()  # no signup for them
    response = client.post(login_url, {"login": NEWCOMER, "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == accept_url(secret)
    assert not Membership.objects.filter(user=user).exists()  # signing in alone does not accept
    page = client.get(accept_url(secret)).content.decode()
    assert "Join Alpha</button>" in page
    response = client.post(accept_url(secret))
    assert response.status_code == 302 and response["Location"] == reverse("approvals:queue")
    assert Membership.objects.get(team=team_a, user=user).role == "auditor"
    assert client.session["team_slug"] == "alpha"


def test_signed_in_as_someone_else_is_refused_clearly(team_a: Team, outsider: Any) -> None:
    invitation, secret = invite(team_a)
    client = logged_in(outsider)
    before = state()
    for response in (client.get(accept_url(secret)), client.post(accept_url(secret))):
        text = response.content.decode()
        assert response.status_code == 403
        assert "This invitation is for nina@example.com, but you are signed in as" in text
        assert "otto@example.com" in text
    assert state() == before and invitation_for_secret(secret) == invitation


def test_anonymous_post_does_not_accept(team_a: Team) -> None:
    _, secret = invite(team_a)
    before = state()
    response = Client().post(accept_url(secret))
    assert response.status_code == 302 and response["Location"] == accept_url(secret)
    assert state() == before


@pytest.mark.parametrize("how", ["used", "revoked", "expired", "unknown", "malformed"])
@pytest.mark.parametrize("who", ["anonymous", "invitee", "outsider"])
def test_a_dead_link_gets_one_plain_404_page(team_a: Team, outsider: Any, how: str, who: str) -> None:
    invitation, secret = invite(team_a)
    user = newcomer_account()
    if how == "used":
        invitation_accept(invitation=invitation, user=user)
    elif how == "revoked":
        invitation_revoke(invitation=invitation, by=None)
    elif how == "expired":
        Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now())
    elif how == "unknown":
        secret = "B" * 43
    else:
        secret = "<script>"
    client = {"anonymous": Client(), "invitee": logged_in(user), "outsider": logged_in(outsider)}[who]
    before = state()
    for response in (client.get(accept_url(secret)), client.post(accept_url(secret))):
        text = main_of(response)
        assert response.status_code == 404
        assert "This link does not work" in text
        assert "Alpha" not in text and NEWCOMER not in text and "<script>" not in text
    assert state() == before


# --- the invite command ------------------------------------------------------------------------------
def test_the_invite_command_prints_a_working_link(team_a: Team, mailoutbox: list, settings: Any) -> None:
    settings.SIGNOFF_PUBLIC_URL = "https://signoff.example.com"
    out, err = io.StringIO(), io.StringIO()
    call_command("invite", "Nina@example.com", "alpha", "reviewer", "--days", "3", stdout=out, stderr=err)
    link = out.getvalue().strip()
    match = LINK.fullmatch(link + "") or re.fullmatch(r"https://signoff\.example\.com/invite/([\w-]+)/", link)
    assert match is not None, link
    invitation = invitation_for_secret(match.group(1))
    assert invitation is not None and invitation.role == "reviewer" and invitation.created_by is None
    assert timedelta(days=2, hours=23) < invitation.expires_at - timezone.now() <= timedelta(days=3)
    assert "nina@example.com to alpha as reviewer" in err.getvalue()
    assert mailoutbox == []
    call_command("invite", "nina@example.com", "alpha", "--send", stdout=out, stderr=io.StringIO())
    assert len(mailoutbox) == 1 and "https://signoff.example.com/invite/" in mailoutbox[0].body
    assert invitation_for_secret(match.group(1)) is None  # replaced by the second one


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nina@example.com", "nowhere"], "No team with slug 'nowhere'"),
        (["nina@example.com", "alpha", "--days", "0"], "between 1 and 30"),
        (["nina@example.com", "alpha", "--days", "31"], "between 1 and 30"),
        (["ada@example.com", "alpha"], "already a member"),
    ],
)
def test_the_invite_command_refuses(team_a: Team, admin: Any, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("invite", *args, stdout=io.StringIO(), stderr=io.StringIO())
    assert not Invitation.objects.exists()


# --- email verification, password reset, login rate limits --------------------------------------------
def test_password_reset_by_the_mailed_link(team_a: Team, mailoutbox: list) -> None:
    user_get_or_create(email=NEWCOMER)  # made by an admin: no password yet
    client = Client()
    response = client.post(reverse("account_reset_password"), {"email": NEWCOMER})
    assert response.status_code == 302
    assert "Check your email" in client.get(response["Location"]).content.decode()
    (mail,) = mailoutbox
    link = re.search(r"http://testserver(/accounts/password/reset/key/\S+/)", mail.body).group(1)  # type: ignore[union-attr]
    page = client.get(link, follow=True)
    assert "Choose a new password" in page.content.decode()
    form_url = page.redirect_chain[-1][0] if page.redirect_chain else link
    new = "another long passphrase 7"
    done = client.post(form_url, {"password1": new, "password2": new}, follow=True)
    assert "Password set" in done.content.decode()
    assert Client().login(username=NEWCOMER, password=new)
    # The link works once.
    again = Client().get(link, follow=True)
    assert "This link does not work" in again.content.decode()


def test_an_unverified_address_is_verified_by_the_mailed_link(team_a: Team, mailoutbox: list) -> None:
    newcomer_account(verified=False)
    client = Client()
    response = client.post(LOGIN, {"login": NEWCOMER, "password": PASSWORD}, follow=True)
    assert response.wsgi_request.user.is_anonymous  # not before the address is verified
    (mail,) = mailoutbox
    link = re.search(r"http://testserver(/accounts/confirm-email/\S+/)", mail.body).group(1)  # type: ignore[union-attr]
    assert client.get(link).status_code == 200
    client.post(link)
    assert EmailAddress.objects.get(email=NEWCOMER).verified
    response = Client().post(LOGIN, {"login": NEWCOMER, "password": PASSWORD})
    assert response.status_code == 302 and not response["Location"].startswith(LOGIN)


@pytest.fixture
def empty_rate_limits() -> Any:
    """Rate-limit counters live in the cache: start and leave it empty."""
    clear_cache()
    yield
    clear_cache()


def test_repeated_failed_logins_are_refused(team_a: Team, empty_rate_limits: None, settings: Any) -> None:
    assert settings.ACCOUNT_RATE_LIMITS["login_failed"] == "10/m/ip,5/300s/key"
    newcomer_account()
    client = Client()
    for _ in range(5):
        response = client.post(LOGIN, {"login": NEWCOMER, "password": "wrong password"})
        assert "not correct" in response.content.decode()
    response = client.post(LOGIN, {"login": NEWCOMER, "password": "wrong password"})
    assert "Too many failed login attempts. Try again later." in response.content.decode()
    # Even the right password waits now: guessing cannot go on.
    response = client.post(LOGIN, {"login": NEWCOMER, "password": PASSWORD})
    assert "Too many failed login attempts. Try again later." in response.content.decode()
    assert response.wsgi_request.user.is_anonymous

"""Invitation pages: admins invite and revoke on the Members page; the invited person opens the link.

The link's page (``/invite/<secret>/``) is public. Whoever opens it sees who invited them to which team;
then, depending on who they are:

- signed in with the invited address: one click joins the team;
- signed in as someone else: a refusal that says so (nothing changes);
- anonymous, and an account uses the address: sign in first (the login comes back here);
- anonymous, no account: sign up. Signup is otherwise closed; it opens while the session holds an open
  invitation (``ClosedSignupAdapter``), the address is locked to the invited one and counts as verified
  (the link was mailed there), and the new account joins the team as it signs in.

A used, revoked, expired or unknown link gets one page that tells nothing more, answered as 404.
"""

from __future__ import annotations

import logging
import smtplib
from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_http_methods, require_POST

from approvals import access
from approvals.forms import InvitationForm
from approvals.models import Invitation
from approvals.services.invitations import (
    AlreadyMember,
    InvitationError,
    InvitationNotOpen,
    WrongAccount,
    account_exists_for,
    invitation_accept,
    invitation_create,
    invitation_for_hash,
    invitation_for_secret,
    invitation_link,
    invitation_revoke,
    invitation_send,
    user_has_email,
)
from approvals.views import _public_url, _select_team

logger = logging.getLogger(__name__)

SESSION_KEY = "signoff_invitation"
"""Session entry of the invitation being signed up for: its secret's hash (never the secret) and what the
signup page shows about it."""


# --- admins: invite and revoke -----------------------------------------------------------------------
@require_POST
@login_required
def invitation_create_view(request: HttpRequest) -> HttpResponse:
    """Invite an address to the team and email it the link. If the mail cannot be sent, the admin gets
    the link once to pass on."""
    team = _select_team(request)
    if team is None:
        raise PermissionDenied("You are not a member of a team.")
    access.require_admin(request.user, team)
    form = InvitationForm(request.POST)
    if not form.is_valid():
        problems = "; ".join(
            f"{field.label}: {' '.join(str(error) for error in field.errors)}"
            for field in form
            if field.errors
        )
        messages.error(request, f"No invitation sent. {problems}")
        return redirect("approvals:members")
    try:
        invitation, secret = invitation_create(
            team=team,
            email=form.cleaned_data["email"],
            role=form.cleaned_data["role"],
            by=request.user,  # type: ignore[arg-type]
            valid_for=timedelta(days=form.cleaned_data["valid_for_days"]),
        )
    except AlreadyMember as exc:
        messages.error(request, str(exc))
        return redirect("approvals:members")
    base_url = _public_url(request)
    try:
        invitation_send(invitation=invitation, secret=secret, base_url=base_url)
    except (smtplib.SMTPException, OSError) as exc:
        # The invitation stands; only the mail failed. Show the link once, as a token is shown once.
        logger.warning("invitation %s: the email could not be sent: %s", invitation.pk, exc)
        response = render(
            request,
            "approvals/invitation_link.html",
            {
                "team": team,
                "invitation": invitation,
                "link": invitation_link(secret=secret, base_url=base_url),
            },
        )
        response["Cache-Control"] = "no-store"
        return response
    messages.success(
        request,
        f"Invitation emailed to {invitation.email} ({invitation.role}). "
        f"The link works once, until {invitation.expires_at:%Y-%m-%d %H:%M} UTC.",
    )
    return redirect("approvals:members")


@require_POST
@login_required
def invitation_revoke_view(request: HttpRequest, invitation_id: int) -> HttpResponse:
    """Make an invitation's link unusable."""
    invitation = get_object_or_404(Invitation.objects.select_related("team"), pk=invitation_id)
    access.require_admin(request.user, invitation.team)
    if invitation_revoke(invitation=invitation, by=request.user, reason="revoked by an admin"):  # type: ignore[arg-type]
        messages.success(
            request, f"The invitation of {invitation.email} is revoked: its link no longer works."
        )
    else:
        messages.info(request, f"The invitation of {invitation.email} was already used or revoked.")
    return redirect("approvals:members")


# --- the invited person ------------------------------------------------------------------------------
def _about(invitation: Invitation) -> dict[str, Any]:
    inviter = invitation.created_by
    return {
        "email": invitation.email,
        "team": invitation.team.name,
        "role": invitation.role,
        "role_label": invitation.get_role_display(),
        "inviter": (inviter.email or inviter.get_username()) if inviter else "",
        "expires_at": invitation.expires_at.isoformat(),
    }


def session_invitation(request: HttpRequest) -> Invitation | None:
    """The open invitation this browser is signing up for, or None."""
    held = request.session.get(SESSION_KEY)
    if not isinstance(held, dict) or not isinstance(held.get("hash"), str):
        return None
    return invitation_for_hash(held["hash"])


def accept_session_invitation(request: HttpRequest, user: User) -> None:
    """Right after signing up: join the team the session's invitation is for, then forget it."""
    held = request.session.pop(SESSION_KEY, None)
    if not isinstance(held, dict) or not isinstance(held.get("hash"), str):
        return
    invitation = invitation_for_hash(held["hash"])
    if invitation is None:
        messages.error(
            request, "Your account is made, but the invitation is no longer valid: ask for a new one."
        )
        return
    try:
        membership = invitation_accept(invitation=invitation, user=user)
    except InvitationError as exc:
        messages.error(request, str(exc))
        return
    request.session["team_slug"] = invitation.team.slug
    messages.success(
        request, f"Welcome to {invitation.team.name}: you are {membership.get_role_display().lower()}."
    )


def _render(
    request: HttpRequest, state: str, invitation: Invitation, status: int = 200, **extra: Any
) -> HttpResponse:
    response = render(
        request,
        "approvals/invitation.html",
        {"state": state, "invitation": invitation, "about": _about(invitation), **extra},
        status=status,
    )
    response["Cache-Control"] = "no-store"
    return response


def _invalid(request: HttpRequest) -> HttpResponse:
    response = render(request, "approvals/invitation_invalid.html", status=404)
    response["Cache-Control"] = "no-store"
    return response


@require_http_methods(["GET", "POST"])
def invitation_accept_view(request: HttpRequest, secret: str) -> HttpResponse:
    """The link's page: join (POST), or the way there (GET). Only the invited address may use it."""
    invitation = invitation_for_secret(secret)
    if invitation is None:
        return _invalid(request)
    user = request.user
    if not user.is_authenticated:
        if request.method == "POST":
            return redirect(request.path)
        if account_exists_for(email=invitation.email):
            login_url = reverse("account_login") + "?" + urlencode({"next": request.path})
            return _render(request, "login", invitation, login_url=login_url)
        # Signup opens for this session, for this address only; the link proved the address.
        from allauth.account.adapter import get_adapter

        request.session[SESSION_KEY] = {"hash": invitation.secret_hash, **_about(invitation)}
        get_adapter(request).stash_verified_email(request, invitation.email)
        return _render(request, "signup", invitation, signup_url=reverse("account_signup"))
    if not user_has_email(user=user, email=invitation.email):
        return _render(request, "wrong_account", invitation, status=403)
    if request.method == "GET":
        return _render(request, "accept", invitation)
    try:
        membership = invitation_accept(invitation=invitation, user=user)
    except InvitationNotOpen:
        return _invalid(request)
    except WrongAccount:
        return _render(request, "wrong_account", invitation, status=403)
    request.session.pop(SESSION_KEY, None)
    request.session["team_slug"] = invitation.team.slug
    messages.success(
        request, f"Welcome to {invitation.team.name}: you are {membership.get_role_display().lower()}."
    )
    return redirect("approvals:queue")

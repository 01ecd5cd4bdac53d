"""Invitations: an emailed, single-use, expiring link that makes its holder a member of a team.

Only a SHA-256 of the link's secret is stored, like bridge tokens: a database dump holds no usable link.
The secret is looked up by its hash (an index lookup on a value the holder cannot choose), so there is
no secret comparison to time.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import QuerySet
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from approvals.models import Invitation, Membership, Team
from approvals.services.audit import audit_record
from approvals.services.teams import member_add

MAX_VALID_FOR = timedelta(days=30)
"""The longest an invitation may stay open: a forgotten link should not work for ever."""
# What secrets.token_urlsafe(32) makes; anything else is refused before the database sees it.
_SECRET_SHAPE = re.compile(r"[A-Za-z0-9_-]{20,100}")


class InvitationError(Exception):
    """An invitation cannot be made or used; the message says why and may be shown to the person."""


class AlreadyMember(InvitationError):
    """The invited address already belongs to a member of the team."""


class InvitationNotOpen(InvitationError):
    """The invitation was used, revoked or has expired."""


class WrongAccount(InvitationError):
    """The signed-in user is not the invited address."""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _normalise(email: str) -> str:
    return email.strip().lower()


def user_has_email(*, user: User, email: str) -> bool:
    """Whether ``email`` is one of the user's verified addresses (case-insensitive)."""
    from allauth.account.models import EmailAddress

    return EmailAddress.objects.filter(user=user, email__iexact=_normalise(email), verified=True).exists()


def account_exists_for(*, email: str) -> bool:
    """Whether some account already uses this address (as its login or one of its addresses)."""
    from allauth.account.models import EmailAddress
    from django.contrib.auth import get_user_model

    email = _normalise(email)
    users = get_user_model().objects
    return (
        users.filter(username__iexact=email).exists()
        or users.filter(email__iexact=email).exists()
        or EmailAddress.objects.filter(email__iexact=email).exists()
    )


def _member_with_email(team: Team, email: str) -> bool:
    from allauth.account.models import EmailAddress

    memberships = Membership.objects.filter(team=team)
    return (
        memberships.filter(user__username__iexact=email).exists()
        or memberships.filter(user__email__iexact=email).exists()
        or EmailAddress.objects.filter(
            email__iexact=email, user__memberships__team=team, verified=True
        ).exists()
    )


def invitation_create(
    *, team: Team, email: str, role: str, by: User | None, valid_for: timedelta = timedelta(days=7)
) -> tuple[Invitation, str]:
    """Invite an address to the team with a role; return the invitation and its raw secret.

    The secret is never stored and is returned only now (put it in the link, then forget it). An open
    invitation for the same address and team is revoked: only the newest link works. Refuses
    (AlreadyMember) an address that already belongs to a member; ``ValueError`` for an unknown role or a
    validity outside (0, 30 days].
    """
    email = _normalise(email)
    if role not in Membership.Role.values:
        raise ValueError(f"Unknown role {role!r}; choose one of {', '.join(Membership.Role.values)}.")
    if not timedelta(0) < valid_for <= MAX_VALID_FOR:
        raise ValueError("An invitation is valid for at most 30 days.")
    now = timezone.now()
    with transaction.atomic():
        # Lock the team's open invitations for this address, so that two admins inviting at once
        # leave exactly one open link.
        open_ones = list(
            Invitation.objects.select_for_update().filter(
                team=team, email__iexact=email, accepted_at=None, revoked_at=None, expires_at__gt=now
            )
        )
        if _member_with_email(team, email):
            raise AlreadyMember(f"{email} is already a member of {team.name}.")
        secret = secrets.token_urlsafe(32)
        invitation = Invitation.objects.create(
            team=team,
            email=email,
            role=role,
            secret_hash=_hash(secret),
            created_by=by,
            created_at=now,
            expires_at=now + valid_for,
        )
        for old in open_ones:
            _revoke(old, by=by, now=now, reason="replaced by a new invitation")
        audit_record(
            kind="invitation.created",
            team=team,
            actor_id=by.pk if by else None,
            invitation=invitation.pk,
            email=email,
            role=role,
            expires_at=invitation.expires_at,
        )
    return invitation, secret


def invitation_link(*, secret: str, base_url: str | None = None) -> str:
    """The accept link for a secret: ``base_url`` (a page's own address) or SIGNOFF_PUBLIC_URL."""
    base = (base_url or str(settings.SIGNOFF_PUBLIC_URL)).rstrip("/")
    return base + reverse("approvals:invitation_accept", kwargs={"secret": secret})


def invitation_send(*, invitation: Invitation, secret: str, base_url: str | None = None) -> None:
    """Email the invitation's link to the invited address through Django's email backend.

    Call it after the invitation's transaction has committed (a mail cannot be taken back). Raises what
    the backend raises (SMTP errors, OSError): the caller decides whether to show the link instead.
    """
    inviter = invitation.created_by
    context = {
        "invitation": invitation,
        "team": invitation.team,
        "role": invitation.get_role_display(),
        "inviter": (inviter.email or inviter.get_username()) if inviter else "",
        "link": invitation_link(secret=secret, base_url=base_url),
        "expires_at": invitation.expires_at,
    }
    subject = " ".join(render_to_string("email/invitation_subject.txt", context).split())
    body = render_to_string("email/invitation_message.txt", context)
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [invitation.email], fail_silently=False)


def _revoke(invitation: Invitation, *, by: User | None, now: datetime, reason: str) -> bool:
    changed = Invitation.objects.filter(pk=invitation.pk, accepted_at=None, revoked_at=None).update(
        revoked_at=now
    )
    if not changed:
        return False
    invitation.revoked_at = now
    audit_record(
        kind="invitation.revoked",
        team=invitation.team,
        actor_id=by.pk if by else None,
        invitation=invitation.pk,
        email=invitation.email,
        role=invitation.role,
        reason=reason,
    )
    return True


def invitation_revoke(*, invitation: Invitation, by: User | None, reason: str = "") -> bool:
    """Make the link unusable. False if it was already used or revoked."""
    with transaction.atomic():
        return _revoke(invitation, by=by, now=timezone.now(), reason=reason or "revoked")


def invitation_for_secret(secret: str) -> Invitation | None:
    """The open invitation whose link holds this secret, or None (unknown, used, revoked or expired).

    The lookup is by the secret's hash, so timing tells nothing about the stored values.
    """
    if not _SECRET_SHAPE.fullmatch(secret or ""):
        return None
    invitation = (
        Invitation.objects.select_related("team", "created_by").filter(secret_hash=_hash(secret)).first()
    )
    if invitation is None or not invitation.is_open():
        return None
    return invitation


def invitation_for_hash(secret_hash: str) -> Invitation | None:
    """The open invitation with this secret hash (as kept in a session), or None."""
    invitation = (
        Invitation.objects.select_related("team", "created_by").filter(secret_hash=secret_hash).first()
    )
    if invitation is None or not invitation.is_open():
        return None
    return invitation


def invitations_open_for(*, team: Team) -> QuerySet[Invitation]:
    """The team's invitations that can still be accepted, soonest expiry first."""
    return (
        Invitation.objects.select_related("created_by")
        .filter(team=team, accepted_at=None, revoked_at=None, expires_at__gt=timezone.now())
        .order_by("expires_at")
    )


def invitation_accept(*, invitation: Invitation, user: User) -> Membership:
    """Use the invitation: the user joins its team with its role. A link works once, even under a race.

    The user must be active and have the invited address among their verified addresses (WrongAccount).
    A used, revoked or expired invitation raises InvitationNotOpen and changes nothing. Someone who is
    already a member keeps their role (a stale link must not change it); the link is used up all the same.
    """
    if not user.is_active:
        raise WrongAccount("This account is deactivated.")
    if not user_has_email(user=user, email=invitation.email):
        raise WrongAccount(
            f"This invitation is for {invitation.email}, but you are signed in as "
            f"{user.email or user.get_username()}. Sign out, then open the link again."
        )
    now = timezone.now()
    with transaction.atomic():
        # The conditional UPDATE is the single-use guarantee: of two requests racing with the same link,
        # the second finds accepted_at already set (PostgreSQL re-checks the WHERE after the row lock).
        used = Invitation.objects.filter(
            pk=invitation.pk, accepted_at=None, revoked_at=None, expires_at__gt=now
        ).update(accepted_at=now, accepted_by=user)
        if not used:
            raise InvitationNotOpen("This invitation link is no longer valid.")
        invitation.accepted_at, invitation.accepted_by = now, user
        membership = Membership.objects.filter(team=invitation.team, user=user).first()
        already_member = membership is not None
        if membership is None:
            membership = member_add(
                team=invitation.team, user=user, role=invitation.role, by=invitation.created_by
            )
        audit_record(
            kind="invitation.accepted",
            team=invitation.team,
            actor_id=user.pk,
            invitation=invitation.pk,
            email=invitation.email,
            role=membership.role,
            already_member=already_member,
        )
    return membership

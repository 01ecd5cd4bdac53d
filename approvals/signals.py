"""Signal receivers: a logout, or a deactivation made outside the services, takes effect at once.

Sign-ins, sign-outs and two-factor changes are recorded in the audit log (``auth.*``) from here too.
"""

from __future__ import annotations

from typing import Any

from allauth.mfa import signals as mfa_signals
from allauth.mfa.models import Authenticator
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver
from django.http import HttpRequest

from approvals import access, realtime
from approvals.models import Membership, Rule, Team, new_rules_version
from approvals.services.auth_events import (
    attempted_login,
    auth_event_record,
    is_person_request,
    login_methods,
)


@receiver(user_logged_out)
def close_review_sockets_on_logout(
    sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any
) -> None:
    """A reviewer socket keeps the session it had at connect: tell it to close itself."""
    if user is not None and user.pk is not None:
        realtime.send_on_commit(
            realtime.user_group(user.pk), {"type": "review.closed", "reason": "logged out"}
        )


@receiver(pre_save, sender=get_user_model())
def remember_whether_user_was_active(sender: Any, instance: Any, **kwargs: Any) -> None:
    """Note the stored ``is_active`` so that only a real deactivation triggers the offboarding below."""
    update_fields = kwargs.get("update_fields")
    if instance.pk is not None and (update_fields is None or "is_active" in update_fields):
        instance._signoff_was_active = (
            sender.objects.filter(pk=instance.pk).values_list("is_active", flat=True).first()
        )


@receiver(post_save, sender=get_user_model())
def end_access_of_deactivated_user(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    """A user saved as inactive (e.g. in Django's admin) loses tokens and open pages at once."""
    if not created and not instance.is_active and getattr(instance, "_signoff_was_active", False):
        from approvals.services.teams import user_access_end

        user_access_end(user=instance)


@receiver(post_save, sender=Rule)
@receiver(post_delete, sender=Rule)
def bump_rules_version(sender: Any, instance: Rule, **kwargs: Any) -> None:
    """Any change to a rule, from anywhere, makes every process rebuild the team's compiled rules."""
    Team.objects.filter(pk=instance.team_id).update(rules_version=new_rules_version())


# --- sign-ins and two-factor authentication: audit, and the review sockets they end -------------------
@receiver(user_logged_in)
def audit_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """Every sign-in of a person, with how they proved who they are."""
    if is_person_request(request) and user is not None:
        assert request is not None
        methods = login_methods(request, user)
        auth_event_record(kind="auth.login", request=request, user_id=user.pk, methods=methods)


@receiver(user_login_failed)
def audit_login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    """A refused password: the email tried, never the password (Django already masked it)."""
    if is_person_request(request):
        login = attempted_login(credentials)
        extra = {"login": login} if login else {}
        auth_event_record(kind="auth.login_failed", request=request, user_id=None, **extra)


@receiver(user_logged_out)
def audit_logout(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if is_person_request(request) and user is not None and user.pk is not None:
        auth_event_record(kind="auth.logout", request=request, user_id=user.pk)


ADDED_KINDS = {
    Authenticator.Type.TOTP: "auth.mfa_activated",
    Authenticator.Type.RECOVERY_CODES: "auth.recovery_codes_generated",
}
REMOVED_KINDS = {
    Authenticator.Type.TOTP: "auth.mfa_deactivated",
    Authenticator.Type.RECOVERY_CODES: "auth.recovery_codes_removed",
}


@receiver(mfa_signals.authenticator_added)
def audit_authenticator_added(
    sender: Any, request: HttpRequest | None, user: Any, authenticator: Authenticator, **kwargs: Any
) -> None:
    """An authenticator app activated, or the recovery codes that come with it."""
    if kind := ADDED_KINDS.get(authenticator.type):
        auth_event_record(kind=kind, request=request, user_id=user.pk)


@receiver(mfa_signals.authenticator_reset)
def audit_recovery_codes_regenerated(
    sender: Any, request: HttpRequest | None, user: Any, authenticator: Authenticator, **kwargs: Any
) -> None:
    """A new set of recovery codes; the old ones stop working."""
    auth_event_record(
        kind="auth.recovery_codes_generated", request=request, user_id=user.pk, replaced_earlier=True
    )


@receiver(mfa_signals.authenticator_removed)
def audit_authenticator_removed(
    sender: Any, request: HttpRequest | None, user: Any, authenticator: Authenticator, **kwargs: Any
) -> None:
    """Two-factor turned off. In teams that require it, the user's review pages close at once."""
    if kind := REMOVED_KINDS.get(authenticator.type):
        auth_event_record(kind=kind, request=request, user_id=user.pk)
    if authenticator.type == Authenticator.Type.TOTP:
        for team in access.teams_needing_mfa_setup(user):
            realtime.review_access_ended(
                user_id=user.pk, team_id=team.pk, reason="two-factor authentication was turned off"
            )


@receiver(mfa_signals.authenticator_used)
def audit_recovery_code_used(
    sender: Any, request: HttpRequest | None, user: Any, authenticator: Authenticator, **kwargs: Any
) -> None:
    """A recovery code spent (the app's codes are part of the login event instead), with how many are left."""
    if authenticator.type == Authenticator.Type.RECOVERY_CODES:
        # Read again: allauth marked the code used on a fresh copy of the row, not on this instance.
        stored = Authenticator.objects.filter(pk=authenticator.pk).first()
        left = len(stored.wrap().get_unused_codes()) if stored is not None else 0
        auth_event_record(
            kind="auth.recovery_code_used",
            request=request,
            user_id=user.pk,
            codes_left=left,
            reauthentication=bool(kwargs.get("reauthenticated")),
        )


@receiver(mfa_signals.authentication_failed)
def audit_mfa_failed(
    sender: Any, request: HttpRequest | None, user: Any, authenticator: Authenticator, **kwargs: Any
) -> None:
    """A wrong two-factor code (at login, or when confirming access)."""
    auth_event_record(
        kind="auth.mfa_failed",
        request=request,
        user_id=user.pk,
        reauthentication=bool(kwargs.get("reauthentication")),
    )


@receiver(pre_save, sender=Team)
def remember_whether_team_required_mfa(sender: Any, instance: Team, **kwargs: Any) -> None:
    """Note the stored ``require_mfa`` so that only switching it on closes review pages below."""
    update_fields = kwargs.get("update_fields")
    if instance.pk is not None and (update_fields is None or "require_mfa" in update_fields):
        instance._signoff_required_mfa = (  # type: ignore[attr-defined]
            Team.objects.filter(pk=instance.pk).values_list("require_mfa", flat=True).first()
        )


@receiver(post_save, sender=Team)
def close_review_pages_without_mfa(sender: Any, instance: Team, created: bool, **kwargs: Any) -> None:
    """A team that now requires two-factor closes the review pages of its reviewers and admins without it."""
    if created or not instance.require_mfa or getattr(instance, "_signoff_required_mfa", True):
        return
    reviewers = Membership.objects.filter(team=instance, role__in=access.MFA_ROLES).select_related("team")
    for membership in reviewers:
        if access.mfa_missing(membership):
            realtime.review_access_ended(
                user_id=membership.user_id,
                team_id=instance.pk,
                reason="the team now requires two-factor authentication",
            )

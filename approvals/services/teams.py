"""Teams and memberships."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.utils.text import slugify

from approvals import realtime
from approvals.access import REVIEW_ROLES, has_totp
from approvals.models import BridgeToken, Membership, Team
from approvals.selectors import active_admins_of
from approvals.services.audit import audit_record
from approvals.services.calls import calls_lock_held_of
from approvals.services.tokens import token_revoke


def team_create(*, name: str, slug: str = "", by: User | None = None) -> Team:
    """Create a team; the slug defaults to the name's."""
    slug = slug or slugify(name)
    if not slug:
        raise ValueError("A team needs a name with letters or digits.")
    with transaction.atomic():
        team = Team.objects.create(name=name, slug=slug)  # the deadline: SIGNOFF_DEFAULT_DEADLINE_SECONDS
        audit_record(kind="team.created", team=team, actor_id=by.pk if by else None, name=name, slug=slug)
    return team


def user_get_or_create(*, email: str, password: str | None = None) -> User:
    """The user with this email (also the username), created with a verified address if new."""
    from allauth.account.models import EmailAddress

    user_model = get_user_model()
    email = user_model.objects.normalize_email(email).lower()
    with transaction.atomic():
        user, created = user_model.objects.get_or_create(username=email, defaults={"email": email})
        if created:
            if password:
                user.set_password(password)
            else:
                user.set_unusable_password()
            user.save()
            EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
        elif password:
            user.set_password(password)
            user.save(update_fields=["password"])
    return user


def member_add(*, team: Team, user: User, role: str, by: User | None = None) -> Membership:
    """Give the user a role in the team (changing the role if already a member; no-op if the same).

    Refuses (LastAdminError) to demote the team's last admin.
    """
    if role not in Membership.Role.values:
        raise ValueError(f"Unknown role {role!r}; choose one of {', '.join(Membership.Role.values)}.")
    with transaction.atomic():
        membership, created = Membership.objects.select_for_update().get_or_create(
            team=team, user=user, defaults={"role": role}
        )
        if not created and membership.role == role:
            return membership
        if not created:
            if membership.role == Membership.Role.ADMIN and not _other_admins(team, user):
                raise LastAdminError("A team needs at least one admin: make someone else admin first.")
            was_reviewer = membership.role in REVIEW_ROLES
            membership.role = role
            membership.save(update_fields=["role"])
            if was_reviewer and role not in REVIEW_ROLES:
                realtime.review_access_ended(user_id=user.pk, team_id=team.pk, reason="your role changed")
        audit_record(
            kind="member.added" if created else "member.role_changed",
            team=team,
            actor_id=by.pk if by else None,
            member=user.get_username(),
            role=role,
        )
    return membership


class LastAdminError(Exception):
    """The change would leave the team without an admin."""


def _other_admins(team: Team, user: User) -> bool:
    return active_admins_of(team=team).exclude(user=user).exists()


def member_remove(*, team: Team, user: User, by: User | None = None) -> bool:
    """Offboard a person from a team at once: their tokens there are revoked (open bridges closed, held
    calls denied) and their open reviewer pages of the team closed. False if they were not a member.

    Refuses (LastAdminError) to remove the team's last admin.
    """
    with transaction.atomic():
        membership = Membership.objects.select_for_update().filter(team=team, user=user).first()
        if membership is None:
            return False
        if membership.role == Membership.Role.ADMIN and not _other_admins(team, user):
            raise LastAdminError("A team needs at least one admin: make someone else admin first.")
        calls_lock_held_of(user_id=user.pk, team_id=team.pk)
        membership.delete()
        for token in BridgeToken.objects.select_related("team").filter(team=team, user=user, revoked_at=None):
            token_revoke(token=token, by=by, reason=f"{user.get_username()} was removed from the team")
        realtime.review_access_ended(user_id=user.pk, team_id=team.pk, reason="removed from the team")
        audit_record(
            kind="member.removed",
            team=team,
            actor_id=by.pk if by else None,
            member=user.get_username(),
            role=membership.role,
        )
    return True


def user_deactivate(*, user: User, by: User | None = None) -> bool:
    """Offboard a person everywhere: no login, every token revoked, every open page and bridge closed.

    False if the user was already inactive.
    """
    with transaction.atomic():
        changed = get_user_model().objects.filter(pk=user.pk, is_active=True).update(is_active=False)
        if not changed:
            return False
        user.is_active = False
        user_access_end(user=user, by=by)
    return True


def user_access_end(*, user: User, by: User | None = None) -> None:
    """What deactivating a user means at once: tokens revoked, open bridges and pages closed.

    Also run when a user is deactivated elsewhere (Django's admin), through a signal.
    """
    with transaction.atomic():
        calls_lock_held_of(user_id=user.pk)
        for token in BridgeToken.objects.select_related("team").filter(user=user, revoked_at=None):
            token_revoke(token=token, by=by, reason=f"{user.get_username()} was deactivated")
        realtime.review_access_ended(user_id=user.pk, team_id=None, reason="your account was deactivated")
        for team in Team.objects.filter(memberships__user=user):
            audit_record(
                kind="user.deactivated", team=team, actor_id=by.pk if by else None, member=user.get_username()
            )


class MfaLockout(ValueError):
    """Requiring two-factor would at once take away the rights of the admin who asks for it."""


RESULT_POLICY_FIELDS = ("result_instructions", "result_secrets", "result_personal_data")
"""The team's result policy, by kind of finding; ``team_settings_change(result_policy=…)`` sets them."""


def team_settings_change(
    *,
    team: Team,
    by: User,
    name: str,
    mode: str,
    deadline: int,
    rules_admins_only: bool,
    four_eyes: bool | None = None,
    require_mfa: bool | None = None,
    alert_calls_per_token_hour: int | None = None,
    alert_denials_per_10_minutes: int | None = None,
    payload_retention_days: int | None = None,
    result_policy: dict[str, str] | None = None,
    require_reviewed_servers: bool | None = None,
) -> Team:
    """Change a team's settings; audited with what changed. ``None`` leaves a setting as it is (the yes/no
    ones and the alert thresholds, where 0 turns that alert off).

    Raises :class:`MfaLockout` when ``require_mfa`` is turned on by an admin who has no authenticator app
    themselves: they would lose the admin rights needed to undo it.
    """
    if mode not in Team.Mode.values:
        raise ValueError(f"Unknown mode {mode!r}.")
    for field, action in (result_policy or {}).items():
        if field not in RESULT_POLICY_FIELDS or action not in Team.ResultAction.values:
            raise ValueError(f"Unknown result policy {field}={action!r}.")
    with transaction.atomic():
        locked = Team.objects.select_for_update().get(pk=team.pk)
        if require_mfa and not locked.require_mfa and not has_totp(by.pk):
            raise MfaLockout(
                "Set up two-factor for yourself first (Two-factor, at the top of the page): with this on and "
                "no authenticator app, you would lose your admin rights in this team at once."
            )
        new = {
            "name": name,
            "mode": mode,
            "default_deadline_seconds": deadline,
            "rules_admins_only": rules_admins_only,
        }
        if four_eyes is not None:
            new["four_eyes"] = four_eyes
        if require_mfa is not None:
            new["require_mfa"] = require_mfa
        if alert_calls_per_token_hour is not None:
            new["alert_calls_per_token_hour"] = alert_calls_per_token_hour
        if alert_denials_per_10_minutes is not None:
            new["alert_denials_per_10_minutes"] = alert_denials_per_10_minutes
        if require_reviewed_servers is not None:  # bridges front only approved servers (docs/inventory.md)
            new["require_reviewed_servers"] = require_reviewed_servers
        if payload_retention_days is not None:  # 0 keeps payloads; see services/retention.py
            new["payload_retention_days"] = payload_retention_days
        new.update(result_policy or {})  # what bridges do with results' findings (docs/inspection.md)
        changed = {field: value for field, value in new.items() if getattr(locked, field) != value}
        if not changed:
            return locked
        for field, value in changed.items():
            setattr(locked, field, value)
        locked.save(update_fields=list(changed))
        audit_record(kind="team.settings_changed", team=locked, actor_id=by.pk, changed=changed)
    return locked

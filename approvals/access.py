"""Who may see or do what. Every view and socket asks here; nothing re-implements these checks."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, NoReturn

from django.core.exceptions import PermissionDenied

from approvals.models import BridgeToken, Membership, Team, ToolCall

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    AnyUser = AbstractBaseUser | AnonymousUser

REVIEW_ROLES = frozenset({Membership.Role.ADMIN, Membership.Role.REVIEWER})
READ_ROLES = frozenset(Membership.Role.values)


def membership_for(user: AnyUser, team: Team) -> Membership | None:
    """The user's membership in the team, or None (also for anonymous and inactive users).

    Whether the user is still active is read from the database too: a socket keeps the user object it
    had at connect, and a deactivation must count at once.
    """
    if not user.is_authenticated or not user.is_active:
        return None
    # The team comes along, fresh: whether it requires two-factor authentication counts at once too.
    return (
        Membership.objects.filter(team=team, user_id=user.pk, user__is_active=True)
        .select_related("team")
        .first()
    )


def teams_for(user: AnyUser) -> list[Team]:
    """Teams the user belongs to, by name."""
    if not user.is_authenticated or not user.is_active:
        return []
    return list(Team.objects.filter(memberships__user_id=user.pk).order_by("name"))


# --- required two-factor authentication (Team.require_mfa) ---------------------------------------------
MFA_ROLES = REVIEW_ROLES
"""Roles that must use two-factor authentication in a team that requires it.

Auditors are not asked: they only read (rules, dry runs, the audit log) and can neither let a call through
nor change anything, which is what a stolen password alone must not be enough for. Members act through
their own bridge tokens.
"""


class MfaRequired(PermissionDenied):
    """Refused only because the team requires two-factor authentication and the user has not set it up."""

    def __init__(self, team: Team) -> None:
        self.team = team
        super().__init__(
            f"{team.name} requires two-factor authentication of its reviewers and admins. Set up an "
            "authenticator app under Two-factor to review and administer."
        )


def has_totp(user_id: int | None) -> bool:
    """The user has an active authenticator app. Recovery codes alone do not count: they come and go with
    the app."""
    from allauth.mfa.models import Authenticator  # allauth's models load after this module's importers

    if user_id is None:
        return False
    return Authenticator.objects.filter(user_id=user_id, type=Authenticator.Type.TOTP).exists()


def mfa_missing(membership: Membership | None) -> bool:
    """The member's team requires two-factor authentication, their role needs it, and they have none.

    Until they set it up they have a member's rights in that team (their own tokens and calls), not their
    role's: they may neither review nor administer.
    """
    return (
        membership is not None
        and membership.role in MFA_ROLES
        and membership.team.require_mfa
        and not has_totp(membership.user_id)
    )


def acting_role(membership: Membership | None) -> str | None:
    """The role that counts for what the member may do: their own, or member's while ``mfa_missing``."""
    if membership is None:
        return None
    return Membership.Role.MEMBER if mfa_missing(membership) else membership.role


def _refuse(membership: Membership | None, roles: Collection[str], message: str) -> NoReturn:
    """Raise MfaRequired when the member's own role is in ``roles`` (two-factor would let them), else
    PermissionDenied with ``message``."""
    if membership is not None and membership.role in roles and mfa_missing(membership):
        raise MfaRequired(membership.team)
    raise PermissionDenied(message)


def teams_requiring_mfa(user: AnyUser) -> list[Team]:
    """Teams that require two-factor authentication of the user's role there, by name."""
    if not user.is_authenticated or not user.is_active:
        return []
    return list(
        Team.objects.filter(
            require_mfa=True, memberships__user_id=user.pk, memberships__role__in=MFA_ROLES
        ).order_by("name")
    )


def teams_needing_mfa_setup(user: AnyUser) -> list[Team]:
    """Teams that require two-factor authentication of the user's role there, while the user has none."""
    teams = teams_requiring_mfa(user)
    return [] if not teams or has_totp(user.pk) else teams


def can_review(user: AnyUser, team: Team) -> bool:
    """May see the team's queue and decide its calls."""
    return acting_role(membership_for(user, team)) in REVIEW_ROLES


def require_review(user: AnyUser, team: Team) -> None:
    """Raise PermissionDenied unless the user reviews for the team (MfaRequired: two-factor is missing)."""
    membership = membership_for(user, team)
    if acting_role(membership) not in REVIEW_ROLES:
        _refuse(membership, REVIEW_ROLES, "Only the team's reviewers and admins may review its calls.")


def require_member(user: AnyUser, team: Team) -> Membership:
    """The user's membership, or PermissionDenied."""
    membership = membership_for(user, team)
    if membership is None:
        raise PermissionDenied("You are not a member of this team.")
    return membership


def require_decide(user: AnyUser, call: ToolCall) -> None:
    """Raise PermissionDenied unless the user may decide this call."""
    require_review(user, call.team)


class FourEyesRefused(PermissionDenied):
    """Four eyes: the reviewer made this call with their own token, so they may deny it but not allow it."""


def is_own_call(user: AnyUser, call: ToolCall) -> bool:
    """Was the call made with the user's own bridge token?"""
    return user.pk is not None and call.requester_id == user.pk


def can_approve(user: AnyUser, call: ToolCall) -> bool:
    """May decide the call and also allow it (Allow, Always-Allow): not one's own call in a four-eyes team."""
    if not can_review(user, call.team):
        return False
    return not (call.team.four_eyes and is_own_call(user, call))


def require_approve(user: AnyUser, call: ToolCall) -> None:
    """Raise PermissionDenied unless the user may allow this call (FourEyesRefused for one's own call)."""
    require_decide(user, call)
    if call.team.four_eyes and is_own_call(user, call):
        raise FourEyesRefused(
            "Four eyes: another reviewer must approve a call made with your own token. You may deny it."
        )


ADMIN_ROLES = frozenset({Membership.Role.ADMIN})


def is_admin(user: AnyUser, team: Team) -> bool:
    """Administers the team: members, tokens and rules."""
    return acting_role(membership_for(user, team)) == Membership.Role.ADMIN


def require_admin(user: AnyUser, team: Team) -> None:
    """Raise PermissionDenied unless the user administers the team (MfaRequired: two-factor is missing)."""
    membership = membership_for(user, team)
    if acting_role(membership) != Membership.Role.ADMIN:
        _refuse(membership, ADMIN_ROLES, "Only the team's admins may do this.")


def require_token_control(user: AnyUser, token: BridgeToken) -> None:
    """Raise PermissionDenied unless the user owns the token (and is still in its team) or is a team admin."""
    membership = membership_for(user, token.team)
    if membership is None:
        raise PermissionDenied("You are not a member of this token's team.")
    if token.user_id != user.pk and acting_role(membership) != Membership.Role.ADMIN:
        _refuse(membership, ADMIN_ROLES, "Only the token's owner or a team admin may revoke it.")


RULE_READ_ROLES = frozenset({Membership.Role.ADMIN, Membership.Role.REVIEWER, Membership.Role.AUDITOR})


def can_read_rules(user: AnyUser, team: Team) -> bool:
    """May see the team's rules, the calls each decided, export them and dry-run them (read-only)."""
    return acting_role(membership_for(user, team)) in RULE_READ_ROLES


def require_rules_read(user: AnyUser, team: Team) -> Membership:
    """The user's membership, or PermissionDenied unless they may read the team's rules."""
    membership = membership_for(user, team)
    if membership is None or acting_role(membership) not in RULE_READ_ROLES:
        _refuse(
            membership, RULE_READ_ROLES, "Only the team's admins, reviewers and auditors may see its rules."
        )
    return membership


def _rule_creator_roles(team: Team) -> frozenset[str]:
    """Admins always; reviewers too unless ``team.rules_admins_only``."""
    return ADMIN_ROLES if team.rules_admins_only else REVIEW_ROLES


def can_create_rule(user: AnyUser, team: Team) -> bool:
    """May add a rule: admins always; reviewers too unless ``team.rules_admins_only``."""
    return acting_role(membership_for(user, team)) in _rule_creator_roles(team)


def require_rule_create(user: AnyUser, team: Team) -> None:
    """Raise PermissionDenied unless the user may add a rule to the team."""
    membership = membership_for(user, team)
    if acting_role(membership) not in _rule_creator_roles(team):
        _refuse(membership, _rule_creator_roles(team), "Only the team's admins may create rules.")


# --- rate limits: read like the rules, managed by admins ----------------------------------------------
def can_read_limits(user: AnyUser, team: Team) -> bool:
    """May see the team's rate limits and their counts (read-only): whoever may read its rules."""
    return can_read_rules(user, team)


def require_limits_read(user: AnyUser, team: Team) -> Membership:
    """The user's membership, or PermissionDenied unless they may see the team's rate limits."""
    membership = membership_for(user, team)
    if membership is None or acting_role(membership) not in RULE_READ_ROLES:
        _refuse(
            membership,
            RULE_READ_ROLES,
            "Only the team's admins, reviewers and auditors may see its rate limits.",
        )
    return membership


def can_manage_limits(user: AnyUser, team: Team) -> bool:
    """May create, change, switch and delete the team's rate limits: its admins."""
    return is_admin(user, team)


def require_limits_manage(user: AnyUser, team: Team) -> None:
    """Raise PermissionDenied unless the user may change the team's rate limits (admins)."""
    membership = membership_for(user, team)
    if acting_role(membership) != Membership.Role.ADMIN:
        _refuse(membership, ADMIN_ROLES, "Only the team's admins may change its rate limits.")


TOKEN_ROLES = frozenset({Membership.Role.ADMIN, Membership.Role.REVIEWER, Membership.Role.MEMBER})


def require_token_issue(user: AnyUser, team: Team) -> None:
    """Raise PermissionDenied unless the user may issue bridge tokens in the team (auditors only read)."""
    membership = membership_for(user, team)
    if membership is None or membership.role not in TOKEN_ROLES:
        raise PermissionDenied("Auditors read; they do not issue bridge tokens.")


# --- History, call pages and the audit log -------------------------------------------------------------
ALL_CALLS_ROLES = frozenset({Membership.Role.ADMIN, Membership.Role.REVIEWER, Membership.Role.AUDITOR})
"""Roles that see every call of their team (History, call pages); a member sees the calls of their own
tokens only."""
AUDIT_ROLES = frozenset({Membership.Role.ADMIN, Membership.Role.AUDITOR})
"""Roles that see the Audit page (every call and audit event of the team, with filters) and export it.

Reviewers decide calls and see them all on History and their call pages; the team's whole record —
members, tokens, rules, exports — is for its admins and auditors."""


def require_history(user: AnyUser, team: Team) -> Membership:
    """The user's membership: every member may open History; ``sees_all_calls`` says whose calls."""
    return require_member(user, team)


def sees_all_calls(membership: Membership) -> bool:
    """Sees every call of the team, not only those made with their own tokens: admins, reviewers and
    auditors (an admin or reviewer missing the team's required two-factor has a member's view)."""
    return acting_role(membership) in ALL_CALLS_ROLES


def require_call_read(user: AnyUser, call: ToolCall) -> Membership:
    """The user's membership in the call's team, or PermissionDenied unless they may see this call: all
    of their team's calls (``sees_all_calls``), or a member their own (read-only either way)."""
    membership = membership_for(user, call.team)
    if membership is None:
        raise PermissionDenied("You are not a member of this call's team.")
    if not sees_all_calls(membership) and not is_own_call(user, call):
        _refuse(membership, ALL_CALLS_ROLES, "Members see only the calls made with their own tokens.")
    return membership


def can_audit(user: AnyUser, team: Team) -> bool:
    """May see the team's Audit page and export it (read-only): admins and auditors."""
    return acting_role(membership_for(user, team)) in AUDIT_ROLES


def require_audit(user: AnyUser, team: Team) -> Membership:
    """The user's membership, or PermissionDenied unless they may see the team's audit log."""
    membership = membership_for(user, team)
    if membership is None or acting_role(membership) not in AUDIT_ROLES:
        _refuse(membership, AUDIT_ROLES, "Only the team's admins and auditors may see its audit log.")
    return membership


# --- alerts --------------------------------------------------------------------------------------------
ALERT_READ_ROLES = AUDIT_ROLES
"""Roles that see the team's Alerts page: its admins, who acknowledge them, and its auditors, who read.

Alerts name tokens, their owners and the addresses they connect from: part of the team's record, like the
Audit page, rather than something a reviewer needs to decide calls (a changed tool is on its held calls)."""


def can_read_alerts(user: AnyUser, team: Team) -> bool:
    """May see the team's alerts (read-only unless also ``can_acknowledge_alerts``)."""
    return acting_role(membership_for(user, team)) in ALERT_READ_ROLES


def require_alerts_read(user: AnyUser, team: Team) -> Membership:
    """The user's membership, or PermissionDenied unless they may see the team's alerts."""
    membership = membership_for(user, team)
    if membership is None or acting_role(membership) not in ALERT_READ_ROLES:
        _refuse(membership, ALERT_READ_ROLES, "Only the team's admins and auditors may see its alerts.")
    return membership


def can_acknowledge_alerts(user: AnyUser, team: Team) -> bool:
    """May acknowledge the team's alerts: its admins."""
    return is_admin(user, team)


def require_alerts_acknowledge(user: AnyUser, team: Team) -> None:
    """Raise PermissionDenied unless the user may acknowledge the team's alerts (admins)."""
    membership = membership_for(user, team)
    if acting_role(membership) != Membership.Role.ADMIN:
        _refuse(membership, ADMIN_ROLES, "Only the team's admins may acknowledge its alerts.")


# --- the inventory of upstream servers -----------------------------------------------------------------
INVENTORY_ROLES = AUDIT_ROLES
"""Roles that see the team's inventory: its admins, who answer for what the team runs, and its auditors.

The inventory names who runs which server from which token, with their command lines: the team's record,
like the Audit page, rather than something a reviewer needs to decide a call."""


def can_read_inventory(user: AnyUser, team: Team) -> bool:
    """May see the team's inventory of upstream servers and each server's page (read-only)."""
    return acting_role(membership_for(user, team)) in INVENTORY_ROLES


def require_inventory_read(user: AnyUser, team: Team) -> Membership:
    """The user's membership, or PermissionDenied unless they may see the team's inventory."""
    membership = membership_for(user, team)
    if membership is None or acting_role(membership) not in INVENTORY_ROLES:
        _refuse(membership, INVENTORY_ROLES, "Only the team's admins and auditors may see its inventory.")
    return membership

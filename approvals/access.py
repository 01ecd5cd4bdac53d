"""Who may see or do what. Every view and socket asks here; nothing re-implements these checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    return Membership.objects.filter(team=team, user_id=user.pk, user__is_active=True).first()


def teams_for(user: AnyUser) -> list[Team]:
    """Teams the user belongs to, by name."""
    if not user.is_authenticated or not user.is_active:
        return []
    return list(Team.objects.filter(memberships__user_id=user.pk).order_by("name"))


def can_review(user: AnyUser, team: Team) -> bool:
    """May see the team's queue and decide its calls."""
    membership = membership_for(user, team)
    return membership is not None and membership.role in REVIEW_ROLES


def require_review(user: AnyUser, team: Team) -> None:
    """Raise PermissionDenied unless the user reviews for the team."""
    if not can_review(user, team):
        raise PermissionDenied("Only the team's reviewers and admins may review its calls.")


def require_member(user: AnyUser, team: Team) -> Membership:
    """The user's membership, or PermissionDenied."""
    membership = membership_for(user, team)
    if membership is None:
        raise PermissionDenied("You are not a member of this team.")
    return membership


def require_decide(user: AnyUser, call: ToolCall) -> None:
    """Raise PermissionDenied unless the user may decide this call."""
    require_review(user, call.team)


def is_admin(user: AnyUser, team: Team) -> bool:
    """Administers the team: members, tokens and rules."""
    membership = membership_for(user, team)
    return membership is not None and membership.role == Membership.Role.ADMIN


def require_admin(user: AnyUser, team: Team) -> None:
    """Raise PermissionDenied unless the user administers the team."""
    if not is_admin(user, team):
        raise PermissionDenied("Only the team's admins may do this.")


def require_token_control(user: AnyUser, token: BridgeToken) -> None:
    """Raise PermissionDenied unless the user owns the token (and is still in its team) or is a team admin."""
    membership = membership_for(user, token.team)
    if membership is None:
        raise PermissionDenied("You are not a member of this token's team.")
    if token.user_id != user.pk and membership.role != Membership.Role.ADMIN:
        raise PermissionDenied("Only the token's owner or a team admin may revoke it.")


RULE_READ_ROLES = frozenset({Membership.Role.ADMIN, Membership.Role.REVIEWER, Membership.Role.AUDITOR})


def can_read_rules(user: AnyUser, team: Team) -> bool:
    """May see the team's rules, the calls each decided, export them and dry-run them (read-only)."""
    membership = membership_for(user, team)
    return membership is not None and membership.role in RULE_READ_ROLES


def require_rules_read(user: AnyUser, team: Team) -> Membership:
    """The user's membership, or PermissionDenied unless they may read the team's rules."""
    membership = membership_for(user, team)
    if membership is None or membership.role not in RULE_READ_ROLES:
        raise PermissionDenied("Only the team's admins, reviewers and auditors may see its rules.")
    return membership


def can_create_rule(user: AnyUser, team: Team) -> bool:
    """May add a rule: admins always; reviewers too unless ``team.rules_admins_only``."""
    membership = membership_for(user, team)
    if membership is None:
        return False
    if membership.role == Membership.Role.ADMIN:
        return True
    return membership.role == Membership.Role.REVIEWER and not team.rules_admins_only


def require_rule_create(user: AnyUser, team: Team) -> None:
    """Raise PermissionDenied unless the user may add a rule to the team."""
    if not can_create_rule(user, team):
        raise PermissionDenied("Only the team's admins may create rules.")


TOKEN_ROLES = frozenset({Membership.Role.ADMIN, Membership.Role.REVIEWER, Membership.Role.MEMBER})


def require_token_issue(user: AnyUser, team: Team) -> None:
    """Raise PermissionDenied unless the user may issue bridge tokens in the team (auditors only read)."""
    membership = membership_for(user, team)
    if membership is None or membership.role not in TOKEN_ROLES:
        raise PermissionDenied("Auditors read; they do not issue bridge tokens.")

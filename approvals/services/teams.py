"""Teams and memberships."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.utils.text import slugify

from approvals.models import Membership, Team
from approvals.services.audit import audit_record


def team_create(*, name: str, slug: str = "", by: User | None = None) -> Team:
    """Create a team; the slug defaults to the name's."""
    slug = slug or slugify(name)
    if not slug:
        raise ValueError("A team needs a name with letters or digits.")
    with transaction.atomic():
        team = Team.objects.create(
            name=name, slug=slug, default_deadline_seconds=settings.SIGNOFF_DEFAULT_DEADLINE_SECONDS
        )
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
    """Give the user a role in the team (changing the role if already a member; no-op if the same)."""
    if role not in Membership.Role.values:
        raise ValueError(f"Unknown role {role!r}; choose one of {', '.join(Membership.Role.values)}.")
    with transaction.atomic():
        membership, created = Membership.objects.select_for_update().get_or_create(
            team=team, user=user, defaults={"role": role}
        )
        if not created and membership.role == role:
            return membership
        if not created:
            membership.role = role
            membership.save(update_fields=["role"])
        audit_record(
            kind="member.added" if created else "member.role_changed",
            team=team,
            actor_id=by.pk if by else None,
            member=user.get_username(),
            role=role,
        )
    return membership

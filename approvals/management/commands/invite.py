from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.models import Membership, Team
from approvals.services.invitations import AlreadyMember, invitation_create, invitation_link, invitation_send


class Command(BaseCommand):
    help = (
        "Invite an email address to a team with a role and print the link (it works once, for that address "
        "only). With --send, also email it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email", help="The address to invite (their login).")
        parser.add_argument("team", help="Team slug.")
        parser.add_argument(
            "role",
            nargs="?",
            choices=Membership.Role.values,
            default=Membership.Role.MEMBER,
            help="Default: member.",
        )
        parser.add_argument(
            "--days", type=int, default=7, help="The link expires after this many days (1-30)."
        )
        parser.add_argument("--send", action="store_true", help="Also email the link to the address.")

    def handle(self, *args: Any, email: str, team: str, role: str, days: int, send: bool, **kw: Any) -> None:
        found = Team.objects.filter(slug=team).first()
        if found is None:
            raise CommandError(f"No team with slug {team!r}.")
        if not 1 <= days <= 30:
            raise CommandError("--days must be between 1 and 30.")
        try:
            invitation, secret = invitation_create(
                team=found, email=email, role=role, by=None, valid_for=timedelta(days=days)
            )
        except AlreadyMember as exc:
            raise CommandError(str(exc)) from None
        # Links point at SIGNOFF_PUBLIC_URL: a command has no request to take the address from.
        self.stdout.write(invitation_link(secret=secret))
        if send:
            invitation_send(invitation=invitation, secret=secret)
        self.stderr.write(
            f"Invitation of {invitation.email} to {found.slug} as {role}, until "
            f"{invitation.expires_at:%Y-%m-%d %H:%M} UTC{' (emailed)' if send else ''}. "
            "The link is shown once and works once."
        )

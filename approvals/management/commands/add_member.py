from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.models import Membership, Team
from approvals.services.teams import member_add, user_get_or_create


class Command(BaseCommand):
    help = "Add a person to a team with a role (creating their account if new)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("team", help="Team slug.")
        parser.add_argument("email", help="The person's email (their login).")
        parser.add_argument("--role", choices=Membership.Role.values, default=Membership.Role.MEMBER)
        parser.add_argument(
            "--password-env",
            default="",
            metavar="VAR",
            help="Set the password from this environment variable (never pass passwords as arguments).",
        )

    def handle(self, *args: Any, team: str, email: str, role: str, password_env: str, **options: Any) -> None:
        import os

        found = Team.objects.filter(slug=team).first()
        if found is None:
            raise CommandError(f"No team with slug {team!r}.")
        password = os.environ.get(password_env) if password_env else None
        if password_env and not password:
            raise CommandError(f"Environment variable {password_env} is empty or unset.")
        user = user_get_or_create(email=email, password=password)
        member_add(team=found, user=user, role=role)
        self.stdout.write(f"{user.get_username()} is {role} in {found.slug}")

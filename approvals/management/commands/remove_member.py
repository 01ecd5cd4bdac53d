from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.models import Team
from approvals.services.teams import LastAdminError, member_remove


class Command(BaseCommand):
    help = "Remove a person from a team: their tokens there are revoked and held calls denied at once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("team", help="Team slug.")
        parser.add_argument("email", help="The person to remove.")

    def handle(self, *args: Any, team: str, email: str, **options: Any) -> None:
        found = Team.objects.filter(slug=team).first()
        if found is None:
            raise CommandError(f"No team with slug {team!r}.")
        user = get_user_model().objects.filter(username=email.lower()).first()
        if user is None:
            raise CommandError(f"No user {email}.")
        try:
            removed = member_remove(team=found, user=user)
        except LastAdminError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"removed {email} from {team}" if removed else f"{email} was not in {team}")

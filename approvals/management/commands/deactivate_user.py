from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.services.teams import user_deactivate


class Command(BaseCommand):
    help = "Offboard a person everywhere: no more logins, every token revoked, held calls denied."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email", help="The person to deactivate.")

    def handle(self, *args: Any, email: str, **options: Any) -> None:
        user = get_user_model().objects.filter(username=email.lower()).first()
        if user is None:
            raise CommandError(f"No user {email}.")
        if user_deactivate(user=user):
            self.stdout.write(f"deactivated {email}")
        else:
            self.stdout.write(f"{email} was already inactive")

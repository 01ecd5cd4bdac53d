from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from approvals.models import Membership, Team
from approvals.services.tokens import token_issue


class Command(BaseCommand):
    help = "Issue a bridge token for a member. The token is printed once and never stored in clear."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("team", help="Team slug.")
        parser.add_argument("email", help="The member who will use the token.")
        parser.add_argument("--name", default="bridge", help="A name to recognise the token by.")
        parser.add_argument("--days", type=int, default=0, help="Expire after this many days (0: never).")
        parser.add_argument("--json", action="store_true", help="Print JSON with the token and its id.")

    def handle(self, *args: Any, team: str, email: str, name: str, days: int, json: bool, **kw: Any) -> None:
        found = Team.objects.filter(slug=team).first()
        if found is None:
            raise CommandError(f"No team with slug {team!r}.")
        user = get_user_model().objects.filter(username=email.lower()).first()
        if user is None or not Membership.objects.filter(team=found, user=user).exists():
            raise CommandError(f"{email} is not a member of {team}; add them first with add_member.")
        expires = timezone.now() + timedelta(days=days) if days > 0 else None
        token, raw = token_issue(team=found, user=user, name=name, expires_at=expires)
        if json:
            self.stdout.write(_json({"id": token.pk, "prefix": token.prefix, "token": raw}))
            return
        self.stdout.write(raw)
        self.stderr.write(
            f"Token {token.prefix}… for {user.get_username()} in {found.slug}. Shown once: keep it secret.\n"
            f"Set SIGNOFF_URL={settings.SIGNOFF_PUBLIC_URL} and SIGNOFF_TOKEN=<the token> for mcpbridge."
        )


def _json(value: Any) -> str:
    return json.dumps(value)

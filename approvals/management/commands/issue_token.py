from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from approvals.models import Membership, Team
from approvals.services.tokens import TokenScopeInvalid, scope_text, token_issue, token_servers_parse


class Command(BaseCommand):
    help = "Issue a bridge token for a member. The token is printed once and never stored in clear."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("team", help="Team slug.")
        parser.add_argument("email", help="The member who will use the token.")
        parser.add_argument("--name", default="bridge", help="A name to recognise the token by.")
        parser.add_argument("--days", type=int, default=0, help="Expire after this many days (0: never).")
        parser.add_argument(
            "--server",
            action="append",
            default=[],
            dest="servers",
            metavar="NAME",
            help="Only for this server (mcpbridge --name; * and ? are wildcards). Repeat for more; "
            "none: any server.",
        )
        parser.add_argument("--json", action="store_true", help="Print JSON with the token and its id.")

    def handle(
        self,
        *args: Any,
        team: str,
        email: str,
        name: str,
        days: int,
        servers: list[str],
        json: bool,
        **kw: Any,
    ) -> None:
        try:
            scope = token_servers_parse(" ".join(servers))
        except TokenScopeInvalid as exc:
            raise CommandError(f"--server: {exc}") from None
        found = Team.objects.filter(slug=team).first()
        if found is None:
            raise CommandError(f"No team with slug {team!r}.")
        user = get_user_model().objects.filter(username=email.lower()).first()
        if user is None or not Membership.objects.filter(team=found, user=user).exists():
            raise CommandError(f"{email} is not a member of {team}; add them first with add_member.")
        expires = timezone.now() + timedelta(days=days) if days > 0 else None
        token, raw = token_issue(team=found, user=user, name=name, expires_at=expires, servers=scope)
        if json:
            self.stdout.write(
                _json({"id": token.pk, "prefix": token.prefix, "token": raw, "servers": token.servers})
            )
            return
        self.stdout.write(raw)
        self.stderr.write(
            f"Token {token.prefix}… for {user.get_username()} in {found.slug}, "
            f"for {scope_text(token.servers)}. Shown once: keep it secret.\n"
            f"Set SIGNOFF_URL={settings.SIGNOFF_PUBLIC_URL} and SIGNOFF_TOKEN=<the token> for mcpbridge."
        )


def _json(value: Any) -> str:
    return json.dumps(value)

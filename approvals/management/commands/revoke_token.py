from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.models import BridgeToken
from approvals.services.tokens import token_revoke


class Command(BaseCommand):
    help = "Revoke a bridge token by its prefix: open bridges are closed and held calls denied at once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix", help="The token's prefix (the 8 characters after 'sgo_').")
        parser.add_argument("--reason", default="token revoked by an operator")

    def handle(self, *args: Any, prefix: str, reason: str, **options: Any) -> None:
        token = (
            BridgeToken.objects.select_related("team").filter(prefix=prefix.removeprefix("sgo_")[:8]).first()
        )
        if token is None:
            raise CommandError(f"No token with prefix {prefix!r}.")
        if token_revoke(token=token, by=None, reason=reason):
            self.stdout.write(f"revoked {token.prefix}… ({token.name})")
        else:
            self.stdout.write(f"{token.prefix}… was already revoked")

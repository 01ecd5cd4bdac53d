from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals import policyfile
from approvals.models import Team


class Command(BaseCommand):
    help = "Print a team's rules and mode as a policy file (docs/policy-as-code.md)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("team", help="Team slug.")
        parser.add_argument("--format", choices=policyfile.FORMATS, default="yaml", help="Default: yaml.")

    def handle(self, *args: Any, team: str, format: policyfile.Format, **options: Any) -> None:
        found = Team.objects.filter(slug=team).first()
        if found is None:
            raise CommandError(f"No team with slug {team!r}.")
        self.stdout.write(policyfile.export_text(found, fmt=format), ending="")

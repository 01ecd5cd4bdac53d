from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from approvals import selectors
from approvals.models import Team


class Command(BaseCommand):
    help = "List a team's held calls, oldest first."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("team", help="Team slug.")
        parser.add_argument("--json", action="store_true", help="One JSON object per line.")

    def handle(self, *args: Any, team: str, json: bool, **options: Any) -> None:
        found = Team.objects.filter(slug=team).first()
        if found is None:
            raise CommandError(f"No team with slug {team!r}.")
        now = timezone.now()
        calls = list(selectors.pending_calls_for(team=found))
        for call in calls:
            if json:
                self.stdout.write(
                    _dumps(
                        {
                            "id": str(call.id),
                            "server": call.server,
                            "tool": call.tool,
                            "arguments": call.arguments,
                            "requester": call.requester.get_username(),
                            "created_at": call.created_at.isoformat(),
                            "deadline": call.deadline.isoformat(),
                        }
                    )
                )
            else:
                left = int((call.deadline - now).total_seconds())
                self.stdout.write(
                    f"{call.id}  {call.server}/{call.tool}  by {call.requester.get_username()}  "
                    f"expires in {left}s  {_dumps(call.arguments)[:80]}"
                )
        if not json and not calls:
            self.stderr.write("No held calls.")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)

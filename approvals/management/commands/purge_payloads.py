from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from approvals.services.retention import payloads_purge_due


class Command(BaseCommand):
    help = (
        "Clear the arguments and results of calls that finished longer ago than their team's payload "
        "retention (Team.payload_retention_days; 0 keeps them). Audited per team. Celery beat (or the "
        "in-process sweeper) runs this hourly; the command is for a backlog or a check."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Only say how many calls per team would be cleared."
        )

    def handle(self, *args: Any, dry_run: bool, **options: Any) -> None:
        total = 0
        while True:  # a run clears at most MAX_PER_RUN calls per team: go on until nothing is left
            results = payloads_purge_due(dry_run=dry_run)
            for result in results:
                if result.purged or dry_run:
                    verb = "would clear" if dry_run else "cleared"
                    self.stdout.write(
                        f"{result.team}: {verb} {result.purged} call(s) finished before "
                        f"{result.cutoff:%Y-%m-%d %H:%M:%S} UTC ({result.retention_days} days)"
                    )
                total += result.purged
            if dry_run or not any(result.more for result in results):
                break
        verb = "would be cleared" if dry_run else "cleared"
        self.stdout.write(f"{total} call payload(s) {verb}.")

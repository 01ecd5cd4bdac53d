from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals import policyfile
from approvals.models import Team


class Command(BaseCommand):
    help = (
        "Replace a team's rules (and mode, if the file sets one) with a policy file's, all or nothing. "
        "Every problem is printed with its line and the exit status is 1 when the file is refused."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("team", help="Team slug.")
        parser.add_argument("file", help="The policy file (.yaml, .yml or .json), or - for standard input.")
        parser.add_argument(
            "--format", choices=policyfile.FORMATS, default=None, help="Default: from the name or content."
        )
        parser.add_argument("--check", action="store_true", help="Only check the file; change nothing.")

    def handle(
        self, *args: Any, team: str, file: str, format: policyfile.Format | None, check: bool, **options: Any
    ) -> None:
        found = Team.objects.filter(slug=team).first()
        if found is None:
            raise CommandError(f"No team with slug {team!r}.")
        try:
            if file == "-":
                data = sys.stdin.buffer.read(policyfile.MAX_FILE_BYTES + 1)
            else:
                with Path(file).open("rb") as handle:
                    data = handle.read(policyfile.MAX_FILE_BYTES + 1)
        except OSError as error:
            raise CommandError(f"Cannot read {file}: {error.strerror or error}") from None
        name = "" if file == "-" else Path(file).name
        try:
            text = policyfile.decode_upload(data)
            checked = policyfile.parse_policy(text, fmt=format, filename=name)
            if check:
                self.stdout.write(f"{file}: {len(checked.rules)} rules, no problems.")
                return
            source = name or "stdin"
            result = policyfile.import_policy(team=found, policy_file=checked, by=None, source=source)
        except policyfile.PolicyFileError as error:
            for problem in error.problems:
                self.stderr.write(f"{file}: {problem}")
            raise CommandError(
                f"{file} was not imported ({len(error.problems)} problems); {found.slug} is unchanged."
            ) from None
        self.stdout.write(f"{found.slug}: {result}.")

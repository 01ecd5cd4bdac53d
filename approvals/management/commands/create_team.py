from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError
from django.utils.text import slugify

from approvals.services.teams import team_create


class Command(BaseCommand):
    help = "Create a team. Prints its slug, used by the other commands."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The team's display name, e.g. 'Platform'.")
        parser.add_argument("--slug", default="", help="Short id for URLs (default: from the name).")

    def handle(self, *args: Any, name: str, slug: str, **options: Any) -> None:
        try:
            team = team_create(name=name, slug=slug)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        except IntegrityError:
            # team_create made the slug from the name when none was given: name the one it made.
            raise CommandError(f"A team with slug {slug or slugify(name)!r} exists already.") from None
        self.stdout.write(team.slug)

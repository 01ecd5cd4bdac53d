"""Verify the audit chain: ``manage.py verify_audit [--anchor SEQ:HASH]``.

Exit status 0: the chain is intact and the append-only guard is in place; 1: the chain is broken (the
first broken link is named); 2: the chain is intact but the guard triggers are missing or disabled.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.services.audit import audit_verify


def _anchor(text: str) -> tuple[int, str]:
    match = re.fullmatch(r"(\d+):([0-9a-f]{64})", text.strip().lower())
    if not match:
        raise CommandError(f"--anchor wants SEQ:HASH (a 64-digit hex SHA-256), not {text!r}")
    return int(match[1]), match[2]


class Command(BaseCommand):
    help = "Walk the audit chain, recompute every hash and name the first broken link (docs/audit.md)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--anchor",
            metavar="SEQ:HASH",
            help="A head printed by an earlier run and kept elsewhere: it must still be in the chain.",
        )
        parser.add_argument("--database", default="default", help="The database alias (default: default).")

    def handle(self, *args: Any, anchor: str | None, database: str, **options: Any) -> None:
        result = audit_verify(anchor=_anchor(anchor) if anchor else None, using=database)
        if result.broken is not None:
            raise CommandError(
                f"Audit chain BROKEN at {result.broken}. "
                f"{result.events} event(s) before it verified (up to seq {result.head_seq}).",
                returncode=1,
            )
        if result.events:
            self.stdout.write(
                f"Audit chain intact: {result.events} event(s), seq 1 to {result.head_seq}; "
                f"head {result.head_seq}:{result.head_hash}"
            )
        else:
            self.stdout.write("Audit chain intact: no events yet.")
        if anchor:
            self.stdout.write(f"Anchor {anchor} found in the chain.")
        if result.missing_guards:
            raise CommandError(
                "The append-only guard is missing or disabled: "
                f"{', '.join(result.missing_guards)}. Recreate it (see docs/audit.md, 'Guarantees').",
                returncode=2,
            )
        self.stdout.write("Append-only guard: in place.")

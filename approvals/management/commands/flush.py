"""Django's ``flush``, able to empty the append-only audit table.

``flush`` wipes every table (the test suite's transactional tests run it after each test). The audit
table refuses DELETE (SQLite) and TRUNCATE (PostgreSQL); this command lifts that guard inside the
flush's own transaction and puts it back before the commit, so nothing else ever sees it lifted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.management.commands import flush
from django.db import connections

from approvals.services.audit import audit_guard_lifted_for_flush


class Command(flush.Command):
    def handle(self, **options: Any) -> None:
        database = options["database"]
        ops = connections[database].ops
        execute_sql_flush = ops.execute_sql_flush

        def execute_with_guard_lifted(sql_list: Iterable[str]) -> None:
            with audit_guard_lifted_for_flush(using=database):
                execute_sql_flush(sql_list)

        ops.execute_sql_flush = execute_with_guard_lifted  # type: ignore[method-assign]
        try:
            super().handle(**options)
        finally:
            del ops.execute_sql_flush

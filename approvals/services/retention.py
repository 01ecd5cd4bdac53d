"""Payload retention: clear what agents sent and tools answered once a team no longer needs to read it.

Per team, ``Team.payload_retention_days`` after a call finished (0 keeps payloads for ever), its
``arguments`` become ``{}``, its ``result_summary``, ``result_findings`` and held result (``result_held``)
empty, and ``payload_purged_at`` says when. The decision (state, reason, who, when, rule) stays: it is
what the record is for.

The audit chain is unaffected: audit events hold the arguments' SHA-256, never the arguments, so no
hashed row changes (``audit_verify`` still passes). What an audit event itself holds (a result summary's
first 500 characters in ``call.completed``) is append-only and stays; see docs/operations.md.

Runs hourly from Celery beat (``approvals.tasks.purge_payloads``), from the in-process sweeper in the
embedded default, and on demand with ``manage.py purge_payloads``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from approvals import metrics
from approvals.models import Team, ToolCall
from approvals.services.audit import audit_record

State = ToolCall.State

FINISHED_STATES = (State.DENIED, State.EXPIRED, State.CANCELLED, State.COMPLETED, State.FAILED)
"""Final states: nothing will read or run the arguments of such a call again."""
BATCH_SIZE = 500
"""Calls cleared per UPDATE: bounded statements (an ``IN`` list of ids) whatever the backlog."""
MAX_PER_RUN = 10_000
"""Calls cleared per team per run at most: a long backlog is worked off over several runs."""


@dataclass(frozen=True)
class TeamPurge:
    """What one run did (or, dry, would do) for one team."""

    team: str
    """The team's slug."""
    retention_days: int
    cutoff: datetime
    """Calls that finished before this were (or would be) cleared."""
    purged: int
    """Calls cleared; in a dry run, the calls that would be (not capped by ``MAX_PER_RUN``)."""
    more: bool
    """Calls are still due after this run (the cap was reached)."""


def purge_due(*, team: Team, cutoff: datetime) -> QuerySet[ToolCall]:
    """The team's calls whose payload is due: finished before ``cutoff`` and not yet cleared.

    "Finished" is ``finished_at`` (ran, or was cancelled), else ``decided_at`` (denied or expired without
    running). ``created_at < cutoff`` is implied by that and lets the ``(team, -created_at)`` index bound
    the rows read.
    """
    return ToolCall.objects.filter(
        Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, decided_at__lt=cutoff),
        team=team,
        state__in=FINISHED_STATES,
        payload_purged_at__isnull=True,
        created_at__lt=cutoff,
    )


def team_payloads_purge(
    *,
    team: Team,
    now: datetime | None = None,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    max_per_run: int = MAX_PER_RUN,
) -> TeamPurge | None:
    """Clear the due payloads of one team, in batches, audited once (``retention.purged``, with the count
    and the cutoff) in the same transaction: the clearing and its record commit together or not at all.

    None for a team that keeps payloads (``payload_retention_days`` 0). A run that finds nothing due
    writes no audit event. Safe to run concurrently with itself: each row is cleared (and counted) once.
    """
    days = team.payload_retention_days
    if days <= 0:
        return None
    now = now or timezone.now()
    cutoff = now - timedelta(days=days)
    if dry_run:
        return TeamPurge(team.slug, days, cutoff, purge_due(team=team, cutoff=cutoff).count(), more=False)
    purged = 0
    more = False
    with transaction.atomic():
        while purged < max_per_run:
            size = min(batch_size, max_per_run - purged)
            ids = list(purge_due(team=team, cutoff=cutoff).values_list("pk", flat=True)[:size])
            if not ids:
                break
            # payload_purged_at IS NULL again: a concurrent run that cleared some of them counts them, not us.
            purged += ToolCall.objects.filter(pk__in=ids, payload_purged_at__isnull=True).update(
                arguments={},
                result_summary="",
                result_findings=[],
                result_held={},
                payload_purged_at=now,
            )
            if len(ids) < size:
                break
        else:
            more = purge_due(team=team, cutoff=cutoff).exists()
        if purged:
            audit_record(
                kind="retention.purged",
                team=team,
                count=purged,
                cutoff=cutoff,
                retention_days=days,
            )
            transaction.on_commit(lambda: metrics.count_payloads_purged(team_slug=team.slug, count=purged))
    return TeamPurge(team.slug, days, cutoff, purged, more)


def payloads_purge_due(
    *, now: datetime | None = None, dry_run: bool = False, max_per_run: int = MAX_PER_RUN
) -> list[TeamPurge]:
    """``team_payloads_purge`` for every team that keeps payloads for a limited time, one transaction
    per team. Returns what was done per team (teams with nothing due included, with 0)."""
    now = now or timezone.now()
    results: list[TeamPurge] = []
    for team in Team.objects.filter(payload_retention_days__gt=0).order_by("pk"):
        result = team_payloads_purge(team=team, now=now, dry_run=dry_run, max_per_run=max_per_run)
        if result is not None:
            results.append(result)
    return results

"""Alerts for a team's admins: raised by detectors, deduplicated while open, acknowledged by an admin."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from approvals.models import Alert, BridgeToken, Team
from approvals.services.audit import audit_record


def alert_raise(
    *,
    team: Team,
    kind: str,
    key: str,
    message: str,
    data: dict[str, Any] | None = None,
    token: BridgeToken | None = None,
) -> tuple[Alert, bool]:
    """Open an alert, or count one more occurrence of the open alert with the same ``(kind, key)``.

    Returns the alert and whether it is new. Only a new alert is audited (``alert.raised``): repeats of an
    open one update its count and last-seen time, so a runaway loop cannot flood the log or the admins.
    """
    if kind not in Alert.Kind.values:
        raise ValueError(f"Unknown alert kind {kind!r}.")
    now = timezone.now()
    with transaction.atomic():
        updated = Alert.objects.filter(team=team, kind=kind, key=key, state=Alert.State.OPEN).update(
            count=F("count") + 1, last_seen_at=now, message=message[:1000]
        )
        if updated:
            return Alert.objects.get(team=team, kind=kind, key=key, state=Alert.State.OPEN), False
        try:
            with transaction.atomic():  # a savepoint: another process may open the same alert meanwhile
                alert = Alert.objects.create(
                    team=team,
                    kind=kind,
                    key=key[:200],
                    message=message[:1000],
                    data=data or {},
                    token=token,
                    created_at=now,
                    last_seen_at=now,
                )
        except IntegrityError:
            Alert.objects.filter(team=team, kind=kind, key=key, state=Alert.State.OPEN).update(
                count=F("count") + 1, last_seen_at=now
            )
            return Alert.objects.get(team=team, kind=kind, key=key, state=Alert.State.OPEN), False
        audit_record(
            kind="alert.raised", team=team, token=token, alert=alert.pk, alert_kind=kind, message=message
        )
    return alert, True

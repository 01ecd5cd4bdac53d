"""Writing audit events. Called inside the transaction of the change it records."""

from __future__ import annotations

from typing import Any

from approvals.models import AuditEvent, BridgeToken, Team, ToolCall


def audit_record(
    *,
    kind: str,
    team: Team | None,
    actor_id: int | None = None,
    token: BridgeToken | None = None,
    call: ToolCall | None = None,
    **data: Any,
) -> AuditEvent:
    """Append one audit event. ``data`` must hold no secret."""
    return AuditEvent.objects.create(
        kind=kind, team=team, actor_id=actor_id, token=token, call=call, data=data
    )

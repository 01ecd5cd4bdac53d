"""Tool pinning (rug-pull defence): what a team's bridges announced, and which definition was approved."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from approvals.models import Team, ToolPin
from approvals.services.alerts import alert_acknowledge_tool_accepted, alerts_tool_changed
from approvals.services.audit import audit_record
from mcpbridge import protocol


def _definition(tool: protocol.ToolInfo) -> dict[str, Any]:
    return {
        "title": tool.title,
        "description": tool.description,
        "annotations": tool.annotations,
        "input_schema": tool.input_schema,
    }


def tools_seen(*, team: Team, server: str, tools: list[protocol.ToolInfo]) -> list[str]:
    """Record the tools a bridge announced. The first definitions seen of a server are approved (trust on
    first use); a later, different one — or a tool that appears later on that server — is recorded,
    audited, and holds the tool's calls for a human until an admin accepts it.

    Returns the names of the tools whose definition now differs from the approved one.
    """
    now = timezone.now()
    changed: list[str] = []
    with transaction.atomic():
        pins = {pin.tool: pin for pin in ToolPin.objects.select_for_update().filter(team=team, server=server)}
        known_server = bool(pins)
        new = []
        for tool in tools:
            pin = pins.get(tool.name)
            if pin is None:
                definition = _definition(tool)
                # A server seen before that grows a tool: the new tool waits for an admin like a change.
                new.append(
                    ToolPin(
                        team=team,
                        server=server,
                        tool=tool.name,
                        approved_hash="" if known_server else tool.hash,
                        approved_definition={} if known_server else definition,
                        current_hash=tool.hash,
                        current_definition=definition,
                        first_seen_at=now,
                        changed_at=now if known_server else None,
                    )
                )
                if known_server:
                    changed.append(tool.name)
                    audit_record(kind="tool.added", team=team, server=server, tool=tool.name, hash=tool.hash)
                    alerts_tool_changed(
                        team=team, server=server, tool=tool.name, tool_hash=tool.hash, added=True
                    )
                continue
            if pin.current_hash != tool.hash:
                pin.current_hash = tool.hash
                pin.current_definition = _definition(tool)
                pin.changed_at = now if tool.hash != pin.approved_hash else None
                pin.save(update_fields=["current_hash", "current_definition", "changed_at"])
                if tool.hash != pin.approved_hash:
                    audit_record(
                        kind="tool.changed", team=team, server=server, tool=tool.name, hash=tool.hash
                    )
                    alerts_tool_changed(
                        team=team, server=server, tool=tool.name, tool_hash=tool.hash, added=False
                    )
            if pin.changed:
                changed.append(tool.name)
        ToolPin.objects.bulk_create(new, ignore_conflicts=True)
    return changed


def tool_pin_accept(*, team: Team, server: str, tool: str, tool_hash: str, by: User) -> bool:
    """An admin accepts the tool's current definition (the one with ``tool_hash``), which also
    acknowledges the tool's open ``tool_changed`` alert. False if it is not the current one any more (it
    changed again meanwhile) or was already approved."""
    with transaction.atomic():
        pin = ToolPin.objects.select_for_update().filter(team=team, server=server, tool=tool).first()
        if pin is None or pin.current_hash != tool_hash or pin.approved_hash == tool_hash:
            return False
        pin.approved_hash = pin.current_hash
        pin.approved_definition = pin.current_definition
        pin.changed_at = None
        pin.approved_by = by
        pin.approved_at = timezone.now()
        pin.save(
            update_fields=["approved_hash", "approved_definition", "changed_at", "approved_by", "approved_at"]
        )
        audit_record(
            kind="tool.accepted", team=team, actor_id=by.pk, server=server, tool=tool, hash=tool_hash
        )
        alert_acknowledge_tool_accepted(team=team, server=server, tool=tool, by=by)
    return True

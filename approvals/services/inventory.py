"""The inventory: every upstream MCP server a team's bridges front, who runs it, and how it changed.

A bridge says what it fronts in its ``hello`` (name, transport, server name and version), its ``tools``
frames and, from mcpbridge 0.2 on, an ``upstream`` report (masked command line or URL, environment
variable names, protocol version, capabilities; docs/inventory.md). ``upstream_seen`` records each of
these: the first sighting of a server (audited ``upstream.first_seen``), and any difference from what the
same token's bridge reported before (an ``UpstreamChange``, audited ``upstream.changed``). Comparing per
token, not with whatever was reported last by anyone, keeps two people who run different versions of a
server from adding a change on every connection.

Reads for the pages (``inventory_for``, ``upstream_page``) count calls from ``ToolCall`` when asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from approvals.masking import is_sensitive_key, mask_text
from approvals.models import BridgeToken, ServerReview, Team, ToolCall, Upstream, UpstreamChange, UpstreamUse
from approvals.services import server_review
from approvals.services.audit import audit_record
from approvals.services.least_privilege import PrivilegeWarning, team_warnings, upstream_warnings
from mcpbridge import protocol

FIELDS = (
    "transport",
    "command",
    "url",
    "env_names",
    "server_name",
    "server_version",
    "protocol_version",
    "capabilities",
    "tools",
)
"""What a sighting may report, in the order a change lists them."""
CALLS_WINDOW = timedelta(days=30)
"""The pages count calls of this period."""
MAX_LISTED = 50
"""Longest list of names (tools, variables) one change keeps."""
HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")
"""The MCP tool annotations the inventory keeps (with the title)."""


@dataclass(frozen=True)
class UpstreamSighting:
    """What one bridge reported of its upstream. ``None`` means "not reported" (an older bridge, or a
    hello sent before the upstream answered ``initialize``), never "empty"."""

    name: str
    transport: str
    command: list[str] | None = None
    url: str | None = None
    env_names: list[str] | None = None
    server_name: str | None = None
    server_version: str | None = None
    protocol_version: str | None = None
    capabilities: dict[str, Any] | None = None
    tools: dict[str, dict[str, Any]] | None = None

    def reported(self) -> dict[str, Any]:
        """The reported fields and their values."""
        return {name: value for name in FIELDS if (value := getattr(self, name)) is not None}


def _tool_entry(tool: protocol.ToolInfo) -> dict[str, Any]:
    hints = {key: tool.annotations[key] for key in HINTS if isinstance(tool.annotations.get(key), bool)}
    entry: dict[str, Any] = {"hash": tool.hash, "annotations": hints}
    if tool.title:
        entry["title"] = tool.title[:200]
    return entry


def sighting_of(
    *,
    upstream: protocol.UpstreamInfo,
    report: protocol.UpstreamReport | None = None,
    tools: list[protocol.ToolInfo] | None = None,
) -> UpstreamSighting:
    """A sighting from what the bridge sent: its hello's ``upstream``, its latest ``upstream`` report (if
    any) and its tools, or ``None`` when they are not known yet.

    The command line and URL are masked again with the server's rules: a bridge that missed a secret
    (an older or a modified one) must not get it stored.
    """
    if report is None:
        return UpstreamSighting(
            name=upstream.name,
            transport=upstream.transport,
            server_name=upstream.server_name or None,
            server_version=upstream.server_version or None,
            tools=None if tools is None else {tool.name: _tool_entry(tool) for tool in tools},
        )
    stdio = report.transport == "stdio"
    return UpstreamSighting(
        name=upstream.name,
        transport=report.transport,
        # A server moved from one transport to the other leaves nothing of the old one behind.
        command=[mask_text(arg) for arg in report.command] if stdio else [],
        url="" if stdio else mask_text(report.url),
        env_names=sorted(set(report.env_names)) if stdio else [],
        server_name=report.server_name,
        server_version=report.server_version,
        protocol_version=report.protocol_version,
        capabilities=report.capabilities,
        tools=None if tools is None else {tool.name: _tool_entry(tool) for tool in tools},
    )


def _differences(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """What changed between two reports, for the fields both have."""
    changes: list[dict[str, Any]] = []
    for name in FIELDS:
        if name not in before or name not in after or before[name] == after[name]:
            continue
        old, new = before[name], after[name]
        if name == "tools":
            added = sorted(set(new) - set(old))
            removed = sorted(set(old) - set(new))
            redefined = sorted(tool for tool in set(old) & set(new) if old[tool] != new[tool])
            changes.append(
                {
                    "field": name,
                    "added": added[:MAX_LISTED],
                    "removed": removed[:MAX_LISTED],
                    "changed": redefined[:MAX_LISTED],
                }
            )
        elif name == "env_names":
            changes.append(
                {
                    "field": name,
                    "added": sorted(set(new) - set(old))[:MAX_LISTED],
                    "removed": sorted(set(old) - set(new))[:MAX_LISTED],
                }
            )
        else:
            changes.append({"field": name, "before": old, "after": new})
    return changes


def _audit_summary(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The changes as the audit log keeps them: capabilities by name only (they may be large)."""
    summary = []
    for change in changes:
        if change["field"] == "capabilities":
            summary.append(
                {
                    "field": "capabilities",
                    "before": sorted(change["before"]),
                    "after": sorted(change["after"]),
                }
            )
        else:
            summary.append(change)
    return summary


def upstream_seen(*, token: BridgeToken, info: UpstreamSighting) -> Upstream:
    """Record a sighting of an upstream by a token's bridge: create the team's entry on first sight
    (audited ``upstream.first_seen``), note who uses it, and record what changed since that token's
    bridge last reported it (an ``UpstreamChange``, audited ``upstream.changed``). Fields not reported
    leave what is known as it is."""
    now = timezone.now()
    reported = info.reported()
    with transaction.atomic():
        upstream, created = Upstream.objects.select_for_update().get_or_create(
            team=token.team,
            name=info.name,
            defaults={"transport": info.transport, "first_seen_at": now, "last_seen_at": now},
        )
        use = UpstreamUse.objects.select_for_update().filter(upstream=upstream, token=token).first()
        if use is not None:
            baseline = use.snapshot
        else:  # a new user of a known server: compared with what the team knew of it
            baseline = {} if created else {name: getattr(upstream, name) for name in upstream.reported}
        changes = _differences(baseline, reported)
        for name, value in reported.items():
            setattr(upstream, name, value)
        upstream.reported = sorted(set(upstream.reported) | set(reported), key=FIELDS.index)
        upstream.last_seen_at = now
        upstream.save()
        if use is None:
            UpstreamUse.objects.create(
                upstream=upstream,
                token=token,
                user_id=token.user_id,
                snapshot=reported,
                first_seen_at=now,
                last_seen_at=now,
            )
        else:
            use.snapshot = {**use.snapshot, **reported}
            use.last_seen_at = now
            use.save(update_fields=["snapshot", "last_seen_at"])
        if created:
            audit_record(
                kind="upstream.first_seen",
                team=token.team,
                actor_id=token.user_id,
                token=token,
                server=upstream.name,
                transport=upstream.transport,
                server_name=upstream.server_name,
                server_version=upstream.server_version,
            )
        elif changes:
            UpstreamChange.objects.create(
                upstream=upstream, at=now, token=token, user_id=token.user_id, changes=changes
            )
            audit_record(
                kind="upstream.changed",
                team=token.team,
                actor_id=token.user_id,
                token=token,
                server=upstream.name,
                changes=_audit_summary(changes),
            )
    return upstream


# --- reads for the pages -------------------------------------------------------------------------------
@dataclass
class InventoryRow:
    """One server on the Inventory page."""

    upstream: Upstream
    tokens: int = 0
    users: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    """Calls of the last ``CALLS_WINDOW`` by state."""
    warnings: list[PrivilegeWarning] = field(default_factory=list)
    review: ServerReview | None = None
    """Its newest checklist review."""
    status: str = server_review.UNREVIEWED

    @property
    def status_label(self) -> str:
        return server_review.STATUS_LABELS[self.status]

    @property
    def calls_total(self) -> int:
        return sum(self.calls.values())

    @property
    def outcomes(self) -> list[tuple[str, int]]:
        return outcomes(self.calls)

    @property
    def tools_count(self) -> int:
        return len(self.upstream.tools)


def outcomes(calls: dict[str, int]) -> list[tuple[str, int]]:
    """``(state, count)`` for the states that have calls, in the order of a call's life."""
    return [(state, calls[state]) for state in ToolCall.State.values if calls.get(state)]


LABELS = {
    "transport": "Transport",
    "command": "Command",
    "url": "URL",
    "env_names": "Environment variables",
    "server_name": "Server name",
    "server_version": "Version",
    "protocol_version": "MCP protocol version",
    "capabilities": "Capabilities",
    "tools": "Tools",
}


def _shown(field: str, value: Any) -> str:
    if field == "command":
        return " ".join(value) or "—"
    if field == "capabilities":
        return ", ".join(sorted(value)) or "none"
    return str(value) or "—"


def change_lines(change: UpstreamChange) -> list[tuple[str, str]]:
    """A recorded change as ``(what, how)`` lines for a person: "Version", "1.0.0 → 1.1.0"."""
    lines = []
    for item in change.changes:
        what = item.get("field", "")
        label = LABELS.get(what, what)
        if what in ("tools", "env_names"):
            parts = [
                f"{verb} {', '.join(item[key])}"
                for key, verb in (("added", "added"), ("removed", "removed"), ("changed", "redefined"))
                if item.get(key)
            ]
            lines.append((label, "; ".join(parts) or "reordered"))
        else:
            lines.append((label, f"{_shown(what, item.get('before'))} → {_shown(what, item.get('after'))}"))
    return lines


def _calls_by_state(team: Team, servers: list[str], since: datetime) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    rows = (
        ToolCall.objects.filter(team=team, server__in=servers, created_at__gte=since)
        .values_list("server", "state")
        .annotate(n=Count("pk"))
    )
    for server, state, n in rows:
        counts.setdefault(server, {})[state] = n
    return counts


def inventory_for(
    *, team: Team, q: str = "", transport: str = "", status: str = "", warned: bool = False
) -> list[InventoryRow]:
    """The team's servers, last seen first, with their users, tokens, calls of the last 30 days,
    least-privilege warnings and checklist status; optionally filtered by a name (the bridge's name or
    the server's own), a transport, a checklist status and having warnings."""
    upstreams = Upstream.objects.filter(team=team)
    if q:
        upstreams = upstreams.filter(Q(name__icontains=q) | Q(server_name__icontains=q))
    if transport:
        upstreams = upstreams.filter(transport=transport)
    rows = [InventoryRow(upstream) for upstream in upstreams.order_by("-last_seen_at", "name")[:500]]
    if not rows:
        return rows
    uses: dict[int, dict[str, Any]] = {
        row["upstream"]: dict(row)
        for row in UpstreamUse.objects.filter(upstream__in=[r.upstream for r in rows])
        .values("upstream")
        .annotate(tokens=Count("token", distinct=True), users=Count("user", distinct=True))
    }
    calls = _calls_by_state(team, [r.upstream.name for r in rows], timezone.now() - CALLS_WINDOW)
    listed = [row.upstream for row in rows]
    warnings = team_warnings(team, listed)
    reviews = server_review.latest_reviews(listed)
    for row in rows:
        use: dict[str, Any] = uses.get(row.upstream.pk, {})
        row.tokens, row.users = use.get("tokens", 0), use.get("users", 0)
        row.calls = calls.get(row.upstream.name, {})
        row.warnings = warnings[row.upstream.pk]
        row.review = reviews.get(row.upstream.pk)
        row.status = server_review.status_of(row.review, server_review.reviewed_target(row.upstream))
    return [row for row in rows if (not status or row.status == status) and (not warned or row.warnings)]


@dataclass(frozen=True)
class ToolRow:
    """One tool on a server's page, with the badges its annotations earn."""

    name: str
    title: str
    badges: list[tuple[str, str]]
    """``(css class, label)`` pairs."""


def tool_rows(upstream: Upstream) -> list[ToolRow]:
    """The server's tools by name. Badges follow the annotations the server declared; a tool that
    declares neither read-only nor destructive says "no hints": MCP clients must assume it may write."""
    rows = []
    for name, entry in sorted(upstream.tools.items()):
        hints = entry.get("annotations", {})
        badges: list[tuple[str, str]] = []
        if hints.get("readOnlyHint") is True:
            badges.append(("hint-read-only", "read-only"))
        if hints.get("destructiveHint") is True:
            badges.append(("hint-destructive", "destructive"))
        if hints.get("idempotentHint") is True:
            badges.append(("hint-idempotent", "idempotent"))
        if hints.get("openWorldHint") is True:
            badges.append(("hint-open-world", "open world"))
        if "readOnlyHint" not in hints and "destructiveHint" not in hints:
            badges.append(("hint-none", "no hints"))
        rows.append(ToolRow(name=name, title=str(entry.get("title", "")), badges=badges))
    return rows


@dataclass
class UpstreamPage:
    """Everything a server's page shows."""

    upstream: Upstream
    uses: list[UpstreamUse]
    changes: list[tuple[UpstreamChange, list[tuple[str, str]]]]
    """Each change with its ``change_lines``."""
    tools: list[ToolRow]
    env: list[tuple[str, bool]]
    """The environment variable names, each with whether the name says its value is a secret."""
    calls: list[tuple[str, int]]
    """Calls of the last ``CALLS_WINDOW`` by state (``outcomes``)."""
    last_call_at: datetime | None
    warnings: list[PrivilegeWarning]
    reviews: list[ServerReview]
    """Its checklist reviews, newest first (the latest 50)."""
    status: str

    @property
    def status_label(self) -> str:
        return server_review.STATUS_LABELS[self.status]

    @property
    def review(self) -> ServerReview | None:
        return self.reviews[0] if self.reviews else None


def upstream_page(*, upstream: Upstream) -> UpstreamPage:
    """A server's details: who uses it from which tokens, its change history (newest first, the latest
    100), its tools and its calls of the last 30 days by state."""
    since = timezone.now() - CALLS_WINDOW
    calls = _calls_by_state(upstream.team, [upstream.name], since).get(upstream.name, {})
    last_call = ToolCall.objects.filter(team=upstream.team, server=upstream.name).aggregate(
        at=Max("created_at")
    )
    reviews = list(upstream.reviews.select_related("author").order_by("-at", "-pk")[:50])
    return UpstreamPage(
        upstream=upstream,
        uses=list(upstream.uses.select_related("token", "user").order_by("-last_seen_at")[:200]),
        changes=[
            (change, change_lines(change))
            for change in upstream.changes.select_related("token", "user").order_by("-at", "-pk")[:100]
        ],
        tools=tool_rows(upstream),
        env=[(name, is_sensitive_key(name)) for name in upstream.env_names],
        calls=outcomes(calls),
        last_call_at=last_call["at"],
        warnings=upstream_warnings(upstream),
        reviews=reviews,
        status=server_review.status_of(
            reviews[0] if reviews else None, server_review.reviewed_target(upstream)
        ),
    )

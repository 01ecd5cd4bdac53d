"""The audit trail as people read it: a team's calls and audit events, filtered, searched, shown with
their secrets masked, and exported as CSV or JSON Lines (see docs/audit.md, "Reading and exporting").

Reads are plain functions over querysets; the one write is ``audit_export_record``, which records an
export in the audit log. Nothing here changes a stored call or event: masking happens on the way out
(``approvals.masking``), so the hash chain is untouched.

Full-text search runs in two steps. The database narrows the rows with a case-insensitive substring
match on the arguments' JSON text (a ``Cast`` to text: the same query on SQLite and PostgreSQL), the
reason and the result summary (for events: their data). Then each candidate is matched again against
what the reader is shown, the *masked* text: a search can never find a row by a secret it does not
show, so it cannot be used to guess a masked token character by character.
"""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any, Literal, TypeVar

from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast

from approvals.masking import mask_json, mask_text
from approvals.models import AuditEvent, BridgeToken, Membership, Team, ToolCall, ToolPin
from approvals.services.audit import audit_record, canonical_time

What = Literal["calls", "events"]
Format = Literal["csv", "jsonl"]
PER_PAGE = 50
EXPORT_CHUNK_ROWS = 500
"""Rows fetched per database round trip while exporting (``QuerySet.iterator(chunk_size=…)``)."""
_EXPORT_FLUSH_BYTES = 64 * 1024
"""Lines are sent in pieces of about this size: not one write per row, never the whole file at once."""
_MAX_SCAN_PAGE = 10_000

_CALL_RELATIONS = ("team", "token", "requester", "decided_by", "rule")


# --- filters -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditFilters:
    """What the reader asked for. Empty fields do not filter. Validated by the page's form."""

    since: datetime | None = None
    """Rows from this moment on (inclusive)."""
    until: datetime | None = None
    """Rows before this moment (exclusive; the form makes "until 2025-01-31" mean the whole day)."""
    user: str = ""
    """Email or username, case-insensitive: a call's requester or decider, an event's actor (also one
    since deleted, by the name the event kept)."""
    token: str = ""
    """A bridge token's visible prefix (8 hex digits)."""
    server: str = ""
    tool: str = ""
    outcome: str = ""
    """A call state (``ToolCall.State``); for events, the state of their call."""
    kind: str = ""
    """An event kind (``call.denied``), or a family ending with a dot (``token.``). Calls: those with
    such an event."""
    q: str = ""
    """Text to find (case-insensitive) in a call's arguments, reason or result summary; in an event's data."""

    def is_empty(self) -> bool:
        return not any(self.as_record().values())

    def as_record(self) -> dict[str, str]:
        """The filters that are set, as text, for the ``audit.exported`` event. The search text is
        masked: the audit log holds no secret, not even one an auditor searched for."""
        record: dict[str, str] = {}
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            if isinstance(value, datetime):
                record[name] = canonical_time(value)
            elif value:
                record[name] = mask_text(str(value)) if name == "q" else str(value)
        return record


def search_variants(q: str) -> list[str]:
    """The forms text takes inside stored JSON: as typed, and JSON-escaped (quotes and backslashes
    escaped; non-ASCII kept, or as ``\\uXXXX`` as SQLite stores it)."""
    escaped = json.dumps(q, ensure_ascii=False)[1:-1]
    ascii_escaped = json.dumps(q, ensure_ascii=True)[1:-1]
    return list(dict.fromkeys([q, escaped, ascii_escaped]))


def _kind_q(kind: str) -> Q:
    """An event kind, or a family of kinds when it ends with a dot."""
    return Q(kind__startswith=kind) if kind.endswith(".") else Q(kind=kind)


def _person_q(*relations: str, who: str) -> Q:
    condition = Q()
    for relation in relations:
        condition |= Q(**{f"{relation}__email__iexact": who}) | Q(**{f"{relation}__username__iexact": who})
    return condition


def calls_matching(
    *, team: Team, filters: AuditFilters, requester_id: int | None = None
) -> QuerySet[ToolCall]:
    """The team's calls that pass the filters, newest first; with ``requester_id``, only that person's.

    With a search text this is a superset: ``visible_matches`` keeps the rows whose *shown* text matches.
    """
    calls = ToolCall.objects.select_related(*_CALL_RELATIONS).filter(team=team)
    if requester_id is not None:
        calls = calls.filter(requester_id=requester_id)
    if filters.since is not None:
        calls = calls.filter(created_at__gte=filters.since)
    if filters.until is not None:
        calls = calls.filter(created_at__lt=filters.until)
    if filters.user:
        calls = calls.filter(_person_q("requester", "decided_by", who=filters.user))
    if filters.token:
        calls = calls.filter(token__prefix=filters.token)
    if filters.server:
        calls = calls.filter(server=filters.server)
    if filters.tool:
        calls = calls.filter(tool=filters.tool)
    if filters.outcome:
        calls = calls.filter(state=filters.outcome)
    if filters.kind:
        # IN (one set of the team's events), not EXISTS per call: audit events have no index on call_id.
        events = AuditEvent.objects.filter(_kind_q(filters.kind), team_id=team.pk, call_id__isnull=False)
        calls = calls.filter(pk__in=events.values("call_id"))
    if filters.q:
        text = Q(reason__icontains=filters.q) | Q(result_summary__icontains=filters.q)
        for variant in search_variants(filters.q):
            text |= Q(arguments_text__icontains=variant)
        calls = calls.annotate(arguments_text=Cast("arguments", output_field=TextField())).filter(text)
    return calls.order_by("-created_at", "-pk")


def events_matching(*, team: Team, filters: AuditFilters) -> QuerySet[AuditEvent]:
    """The team's audit events that pass the filters, newest first (by ``seq``).

    Server and tool are those of the event's call (or named in the event); a search matches the event's
    data. With a search text this is a superset: ``visible_matches`` keeps what the reader is shown.
    """
    events = (
        AuditEvent.objects.select_related("actor", "token", "call")
        .defer("call__arguments", "call__risks", "call__result_summary")
        .filter(team_id=team.pk)
    )
    if filters.since is not None:
        events = events.filter(created_at__gte=filters.since)
    if filters.until is not None:
        events = events.filter(created_at__lt=filters.until)
    if filters.user:
        who = filters.user
        events = events.filter(
            _person_q("actor", who=who)
            | Q(data__actor__email__iexact=who)
            | Q(data__actor__username__iexact=who)
        )
    if filters.token:
        events = events.filter(Q(token__prefix=filters.token) | Q(data__prefix=filters.token))
    if filters.server:
        events = events.filter(Q(call__server=filters.server) | Q(data__server=filters.server))
    if filters.tool:
        events = events.filter(Q(call__tool=filters.tool) | Q(data__tool=filters.tool))
    if filters.outcome:
        events = events.filter(call__state=filters.outcome)
    if filters.kind:
        events = events.filter(_kind_q(filters.kind))
    if filters.q:
        text = Q()
        for variant in search_variants(filters.q):
            text |= Q(data_text__icontains=variant)
        events = events.annotate(data_text=Cast("data", output_field=TextField())).filter(text)
    return events.order_by("-seq")


def events_of_call(call: ToolCall) -> QuerySet[AuditEvent]:
    """The audit events of one call, in chain order. (Its team's: the (team, time) index narrows the
    scan; there is no index on call_id.)"""
    return (
        AuditEvent.objects.select_related("actor", "token", "call")
        .defer("call__arguments", "call__risks", "call__result_summary")
        .filter(team_id=call.team_id, call_id=call.pk)
        .order_by("seq")
    )


def call_for_page(call_id: str) -> ToolCall | None:
    """The call with this id (any team: the caller checks access), or None for no such call."""
    try:
        key = uuid.UUID(call_id)
    except ValueError:
        return None
    return ToolCall.objects.select_related(*_CALL_RELATIONS).filter(pk=key).first()


KNOWN_KINDS = (
    "call.",
    "call.pending",
    "call.allowed",
    "call.denied",
    "call.expired",
    "call.cancelled",
    "call.started",
    "call.completed",
    "call.failed",
    "rule.",
    "token.",
    "token.issued",
    "token.revoked",
    "member.",
    "team.",
    "tool.",
    "audit.exported",
)
"""Suggested in the kind filter (any kind may be typed; a trailing dot means the family)."""


@dataclass(frozen=True)
class FilterChoices:
    """Suggestions for the filter form: the team's people, tokens, servers and tools. Cheap reads only
    (members, tokens, tool pins), never a scan of the calls."""

    people: list[str]
    tokens: list[tuple[str, str]]
    """``(prefix, label)`` of every token of the team, revoked ones included."""
    servers: list[str]
    tools: list[str]
    kinds: tuple[str, ...] = KNOWN_KINDS


def filter_choices(*, team: Team) -> FilterChoices:
    """What the filter form suggests for ``team``."""
    people = [
        str(email or username)
        for email, username in Membership.objects.filter(team=team)
        .order_by("user__email")
        .values_list("user__email", "user__username")
    ]
    tokens = [
        (
            token.prefix,
            f"{token.name} ({token.prefix}…) · {_person(token.user)}"
            + (" · revoked" if token.revoked_at else ""),
        )
        for token in BridgeToken.objects.filter(team=team).select_related("user").order_by("name", "pk")
    ]
    pins = ToolPin.objects.filter(team=team)
    servers = sorted(set(pins.values_list("server", flat=True)))
    tools = sorted(set(pins.values_list("tool", flat=True)))
    return FilterChoices(people=people, tokens=tokens, servers=servers, tools=tools)


# --- what the reader is shown ------------------------------------------------------------------------
@dataclass(frozen=True)
class ShownCall:
    """A call as pages and exports show it: the row, and its free text with secrets masked."""

    call: ToolCall
    arguments: Any
    reason: str
    result_summary: str
    risks: Any
    masked: bool
    """Whether masking hid anything (the shown text differs from the stored one)."""
    findings: Any = ()
    """What the bridge's inspection found in the result, excerpts masked again (docs/inspection.md)."""


@dataclass(frozen=True)
class ShownEvent:
    """An audit event as pages and exports show it: the row, its data with secrets masked, and names."""

    event: AuditEvent
    data: Any
    actor: str
    """Who did it, by the name the event kept (or the user's, or "Signoff" when nobody did)."""
    token_prefix: str
    server: str
    tool: str
    masked: bool

    @property
    def details(self) -> Any:
        """The data as a table shows it: without ``actor``, which has its own column."""
        if isinstance(self.data, dict):
            return {key: value for key, value in self.data.items() if key != "actor"}
        return self.data


def show_call(call: ToolCall) -> ShownCall:
    """The call with its arguments, reason, result summary and risk notes masked."""
    arguments = mask_json(call.arguments)
    reason = mask_text(call.reason)
    summary = mask_text(call.result_summary)
    risks = mask_json(call.risks)
    findings = mask_json(call.result_findings)
    changed = (arguments, reason, summary, risks, findings) != (
        call.arguments,
        call.reason,
        call.result_summary,
        call.risks,
        call.result_findings,
    )
    return ShownCall(call, arguments, reason, summary, risks, changed, findings)


def show_calls(calls: Iterable[ToolCall]) -> list[ShownCall]:
    return [show_call(call) for call in calls]


def _person(user: Any) -> str:
    return "" if user is None else str(user.email or user.get_username())


def show_event(event: AuditEvent) -> ShownEvent:
    """The event with its data masked, and the names of who and what it concerns."""
    data = event.data if isinstance(event.data, dict) else {}
    named = data.get("actor")
    kept: dict[str, Any] = named if isinstance(named, dict) else {}
    if event.actor_id is None:
        actor = "Signoff"
    else:
        # The name as it was when the event was written; the user may since have changed or gone.
        actor = (
            str(kept.get("email") or kept.get("username") or "")
            or _person(event.actor)
            or f"user #{event.actor_id}"
        )
    call = event.call if event.call_id is not None else None
    token = event.token if event.token_id is not None else None
    shown = mask_json(event.data)
    return ShownEvent(
        event=event,
        data=shown,
        actor=actor,
        token_prefix=token.prefix if token is not None else str(data.get("prefix") or ""),
        server=call.server if call is not None else str(data.get("server") or ""),
        tool=call.tool if call is not None else str(data.get("tool") or ""),
        masked=shown != event.data,
    )


def show_events(events: Iterable[AuditEvent]) -> list[ShownEvent]:
    return [show_event(event) for event in events]


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def call_text(shown: ShownCall) -> str:
    """The text a search matches on a call: its shown (masked) arguments, reason and result summary."""
    return "\n".join((_json_text(shown.arguments), shown.reason, shown.result_summary))


def event_text(shown: ShownEvent) -> str:
    """The text a search matches on an event: its shown (masked) data."""
    return _json_text(shown.data)


Row = TypeVar("Row")
Shown = TypeVar("Shown")


def visible_matches(
    rows: Iterable[Row], *, q: str, show: Callable[[Row], Shown], text: Callable[[Shown], str]
) -> Iterator[Shown]:
    """Each row, shown; with a search text, only those whose shown text contains it (case-insensitive).

    The database matched the stored text; this drops the rows that matched only inside a masked secret.
    """
    needles = [variant.casefold() for variant in search_variants(q)] if q else []
    for row in rows:
        shown = show(row)
        if not needles:
            yield shown
            continue
        haystack = text(shown).casefold()
        if any(needle in haystack for needle in needles):
            yield shown


@dataclass(frozen=True)
class ResultPage:
    """One page of shown rows. Without a search text the total is counted; with one it is not (each
    candidate must be masked and matched), and the page says only whether another follows."""

    rows: list[Any]
    number: int
    has_previous: bool
    has_next: bool
    total: int | None = None
    num_pages: int | None = None

    def previous_page_number(self) -> int:
        return self.number - 1

    def next_page_number(self) -> int:
        return self.number + 1


def _page_number(raw: str | None) -> int:
    try:
        return min(max(int(raw or 1), 1), _MAX_SCAN_PAGE)
    except ValueError:
        return 1


def result_page(
    rows: QuerySet[Any],
    *,
    q: str,
    show: Callable[[Any], Any],
    text: Callable[[Any], str],
    page: str | None,
    per_page: int = PER_PAGE,
) -> ResultPage:
    """The page ``page`` (1-based, as typed in the address; anything else is page 1) of the rows, shown."""
    if not q:
        paginator = Paginator(rows, per_page)
        current = paginator.get_page(page)
        return ResultPage(
            rows=[show(row) for row in current.object_list],
            number=current.number,
            has_previous=current.has_previous(),
            has_next=current.has_next(),
            total=paginator.count,
            num_pages=paginator.num_pages,
        )
    number = _page_number(page)
    skip = (number - 1) * per_page
    found: list[Any] = []
    # Stops as soon as the page and one more row are found: page n costs the rows up to it.
    for index, shown in enumerate(visible_matches(rows.iterator(chunk_size=200), q=q, show=show, text=text)):
        if index >= skip:
            found.append(shown)
            if len(found) > per_page:
                break
    return ResultPage(
        rows=found[:per_page], number=number, has_previous=number > 1, has_next=len(found) > per_page
    )


def calls_page(*, team: Team, filters: AuditFilters, page: str | None) -> ResultPage:
    """A page of the team's calls that pass the filters, shown with their secrets masked."""
    return result_page(
        calls_matching(team=team, filters=filters), q=filters.q, show=show_call, text=call_text, page=page
    )


def events_page(*, team: Team, filters: AuditFilters, page: str | None) -> ResultPage:
    """A page of the team's audit events that pass the filters, shown with their secrets masked."""
    return result_page(
        events_matching(team=team, filters=filters), q=filters.q, show=show_event, text=event_text, page=page
    )


# --- exports -----------------------------------------------------------------------------------------
CALL_COLUMNS = (
    "id",
    "created_at",
    "server",
    "tool",
    "state",
    "requester",
    "token_prefix",
    "token_name",
    "decided_via",
    "decided_by",
    "decided_at",
    "rule_id",
    "reason",
    "arguments",
    "arguments_hash",
    "deadline",
    "started_at",
    "finished_at",
    "duration_ms",
    "result_summary",
    "masked",
)
EVENT_COLUMNS = (
    "seq",
    "created_at",
    "kind",
    "actor",
    "actor_id",
    "token_prefix",
    "call_id",
    "server",
    "tool",
    "data",
    "prev_hash",
    "hash",
    "masked",
)
_JSON_COLUMNS = frozenset({"arguments", "data"})


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else canonical_time(moment)


def call_record(shown: ShownCall) -> dict[str, Any]:
    """One exported call (the keys of ``CALL_COLUMNS``), its secrets masked."""
    call = shown.call
    return {
        "id": str(call.pk),
        "created_at": _time(call.created_at),
        "server": call.server,
        "tool": call.tool,
        "state": call.state,
        "requester": _person(call.requester),
        "token_prefix": call.token.prefix,
        "token_name": call.token.name,
        "decided_via": call.decided_via,
        "decided_by": _person(call.decided_by),
        "decided_at": _time(call.decided_at),
        "rule_id": call.rule_id,
        "reason": shown.reason,
        "arguments": shown.arguments,
        "arguments_hash": call.arguments_hash,
        "deadline": _time(call.deadline),
        "started_at": _time(call.started_at),
        "finished_at": _time(call.finished_at),
        "duration_ms": call.duration_ms,
        "result_summary": shown.result_summary,
        "masked": shown.masked,
    }


def event_record(shown: ShownEvent) -> dict[str, Any]:
    """One exported audit event (the keys of ``EVENT_COLUMNS``), its data masked. ``masked`` says the
    data differ from what was hashed: such a row cannot be verified from the export (use the database
    dump of docs/audit.md to verify the chain)."""
    event = shown.event
    return {
        "seq": event.seq,
        "created_at": _time(event.created_at),
        "kind": event.kind,
        "actor": shown.actor,
        "actor_id": event.actor_id,
        "token_prefix": shown.token_prefix,
        "call_id": None if event.call_id is None else str(event.call_id),
        "server": shown.server,
        "tool": shown.tool,
        "data": shown.data,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
        "masked": shown.masked,
    }


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(column: str, value: Any) -> Any:
    """A CSV cell. JSON columns as compact JSON; text that a spreadsheet would run as a formula
    (``=HYPERLINK(…)`` in a tool argument) gets a leading apostrophe (OWASP "CSV injection")."""
    if value is None:
        return ""
    if column in _JSON_COLUMNS:
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


class _Line:
    """A file-like object whose ``write`` returns what it was given (for ``csv.writer``)."""

    def write(self, text: str) -> str:
        return text


def csv_lines(records: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> Iterator[str]:
    """CSV (RFC 4180, CRLF line ends) with a header row, one line per record."""
    writer = csv.writer(_Line())
    yield writer.writerow(columns)
    for record in records:
        yield writer.writerow([_csv_cell(column, record[column]) for column in columns])


def jsonl_lines(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    """JSON Lines: one JSON object per line (UTF-8, non-ASCII as is)."""
    for record in records:
        yield json.dumps(record, ensure_ascii=False) + "\n"


def _in_pieces(lines: Iterable[str]) -> Generator[str, None, None]:
    buffer: list[str] = []
    size = 0
    for line in lines:
        buffer.append(line)
        size += len(line)
        if size >= _EXPORT_FLUSH_BYTES:
            yield "".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer)


def export_lines(*, team: Team, filters: AuditFilters, what: What, fmt: Format) -> Generator[str, None, None]:
    """The export, as pieces of text to stream: the team's calls or events that pass the filters (and
    whose shown text matches the search), newest first, with their secrets masked. Rows are read
    ``EXPORT_CHUNK_ROWS`` at a time (a server-side cursor on PostgreSQL); the file is never held whole."""
    records: Iterator[dict[str, Any]]
    columns: tuple[str, ...]
    if what == "calls":
        calls = calls_matching(team=team, filters=filters).iterator(chunk_size=EXPORT_CHUNK_ROWS)
        records = map(call_record, visible_matches(calls, q=filters.q, show=show_call, text=call_text))
        columns = CALL_COLUMNS
    else:
        events = events_matching(team=team, filters=filters).iterator(chunk_size=EXPORT_CHUNK_ROWS)
        records = map(event_record, visible_matches(events, q=filters.q, show=show_event, text=event_text))
        columns = EVENT_COLUMNS
    lines = csv_lines(records, columns) if fmt == "csv" else jsonl_lines(records)
    return _in_pieces(lines)


def export_filename(*, team: Team, what: What, fmt: Format, today: date) -> str:
    """``signoff-calls-alpha-2025-01-31.csv``: what, the team's slug (safe in a header) and the day."""
    return f"signoff-{what}-{team.slug}-{today:%Y-%m-%d}.{fmt}"


def export_content_type(fmt: Format) -> str:
    return "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson; charset=utf-8"


def audit_export_record(
    *, team: Team, actor_id: int, what: What, fmt: Format, filters: AuditFilters
) -> AuditEvent:
    """Record that someone exported the team's audit trail (``audit.exported``), with what, the format
    and the filters. Written before the first byte is sent: an export cut short is still on record."""
    with transaction.atomic():
        return audit_record(
            kind="audit.exported",
            team=team,
            actor_id=actor_id,
            what=what,
            format=fmt,
            filters=filters.as_record(),
        )

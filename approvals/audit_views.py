"""The auditor's pages: the Audit page (a team's calls and audit events, filtered and searched), its CSV
and JSON Lines exports, and the page of one call.

Admins and auditors see the Audit page and export it; everyone who may see a call sees its page (admins,
reviewers and auditors their team's calls, a member their own). Every decision is in ``approvals.access``;
filtering, masking and the export's rows are in ``approvals.services.audit_search``. These views only
validate the filter form and translate.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Generator, Iterator
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from approvals import access
from approvals.models import Team, ToolCall
from approvals.services import audit_search
from approvals.services.audit_search import AuditFilters
from approvals.views import _select_team

# --- the filter form -----------------------------------------------------------------------------------
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_MINUTE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?:Z|[+-]\d{2}:?\d{2})?")
_SECOND = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:Z|[+-]\d{2}:?\d{2})?")


def parse_moment(text: str, *, end: bool) -> datetime:
    """An ISO 8601 date or time as typed (``2025-01-31``, ``2025-01-31T09:30``, with seconds or an
    offset; without an offset in the server's time zone, UTC by default).

    With ``end``, the moment just after what was named, so that "until 2025-01-31" includes that whole
    day and "until 09:30" that whole minute: the bound is exclusive. Raises ValueError.
    """
    text = text.strip()
    moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, timezone.get_current_timezone())
    if end:
        if _DAY.fullmatch(text):
            moment += timedelta(days=1)
        elif _MINUTE.fullmatch(text):
            moment += timedelta(minutes=1)
        elif _SECOND.fullmatch(text):
            moment += timedelta(seconds=1)
    return moment


class _MomentField(forms.CharField):
    """A date or date and time (``<input type="datetime-local">``), as ``parse_moment`` reads it."""

    def __init__(self, *, end: bool, **kwargs: Any) -> None:
        self.end = end
        kwargs.setdefault("widget", forms.DateTimeInput(attrs={"type": "datetime-local", "step": 1}))
        super().__init__(required=False, max_length=40, **kwargs)

    def clean(self, value: Any) -> datetime | None:
        text = super().clean(value)
        if not text:
            return None
        try:
            return parse_moment(text, end=self.end)
        except (ValueError, OverflowError):
            raise forms.ValidationError(
                "Enter a date (2025-01-31) or a date and time (2025-01-31T09:30).", code="invalid"
            ) from None


class AuditFilterForm(forms.Form):
    """The Audit page's filters (GET). Every field is optional; a bad one is a form error, never a 500."""

    what = forms.ChoiceField(choices=[("calls", "Calls"), ("events", "Audit events")], required=False)
    since = _MomentField(end=False, label="From")
    until = _MomentField(end=True, label="Until")
    user = forms.CharField(
        required=False,
        max_length=254,
        label="User",
        help_text="Email or username: who made or decided a call, who did an event.",
    )
    token = forms.RegexField(
        regex=r"^[0-9a-f]{8}$",
        required=False,
        label="Token",
        error_messages={"invalid": "Choose a token (its prefix: 8 hex digits)."},
    )
    server = forms.CharField(required=False, max_length=128)
    tool = forms.CharField(required=False, max_length=128)
    outcome = forms.ChoiceField(choices=[("", "Any"), *ToolCall.State.choices], required=False)
    kind = forms.RegexField(
        regex=r"^[a-z_]+(\.[a-z_]+)*\.?$",
        required=False,
        max_length=40,
        label="Event kind",
        error_messages={"invalid": "An event kind such as call.denied, or a family such as token."},
    )
    q = forms.CharField(required=False, max_length=200, label="Search", strip=True)
    format = forms.ChoiceField(choices=[("csv", "CSV"), ("jsonl", "JSON Lines")], required=False)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        since, until = cleaned.get("since"), cleaned.get("until")
        if since is not None and until is not None and since >= until:
            raise forms.ValidationError("“From” must be before “Until”.")
        return cleaned

    def filters(self) -> AuditFilters:
        data = self.cleaned_data
        return AuditFilters(
            since=data["since"],
            until=data["until"],
            user=data["user"].strip(),
            token=data["token"],
            server=data["server"].strip(),
            tool=data["tool"].strip(),
            outcome=data["outcome"],
            kind=data["kind"],
            q=data["q"],
        )

    def chosen_what(self) -> audit_search.What:
        return "events" if self.cleaned_data.get("what") == "events" else "calls"

    def chosen_format(self) -> audit_search.Format:
        return "jsonl" if self.cleaned_data.get("format") == "jsonl" else "csv"


# --- helpers --------------------------------------------------------------------------------------------
def _audit_team(request: HttpRequest) -> Team | None:
    """The page's team (``?team=``, the session's, or the first), after checking the user may audit it."""
    team = _select_team(request)
    if team is not None:
        access.require_audit(request.user, team)
    return team


def _filter_query(request: HttpRequest, team: Team) -> str:
    """The current filters as a query string, for the tabs, the pager and the export links (which add
    their own ``what``, ``page`` and ``format``). Names the team: a link keeps meaning the same team."""
    query = request.GET.copy()
    for name in ("page", "format", "what", "team"):
        query.pop(name, None)
    query["team"] = team.slug
    return query.urlencode()


def _audit_page(request: HttpRequest, team: Team, form: AuditFilterForm) -> HttpResponse:
    valid = form.is_valid()
    what = form.chosen_what() if valid else ("events" if request.GET.get("what") == "events" else "calls")
    page = None
    if valid:
        filters = form.filters()
        pager = audit_search.calls_page if what == "calls" else audit_search.events_page
        page = pager(team=team, filters=filters, page=request.GET.get("page"))
    return render(
        request,
        "approvals/audit.html",
        {
            "team": team,
            "form": form,
            "what": what,
            "page": page,
            "filtered": valid and not form.filters().is_empty(),
            "query": _filter_query(request, team),
            "choices": audit_search.filter_choices(team=team),
        },
        status=200 if valid else 400,
    )


def _next_piece(pieces: Iterator[str]) -> bytes | None:
    piece = next(pieces, None)
    return None if piece is None else piece.encode("utf-8")


async def _pieces_async(pieces: Generator[str, None, None]) -> AsyncIterator[bytes]:
    """The export for an ASGI server (Daphne): each piece is read from the database in the request's own
    thread and sent before the next is read. (Given a plain iterator, Django under ASGI would first read
    all of it into a list.)"""
    step = sync_to_async(_next_piece, thread_sensitive=True)
    try:
        while (piece := await step(pieces)) is not None:
            yield piece
    finally:
        # Closing the generator closes its database cursor, in the thread that opened it.
        await sync_to_async(pieces.close, thread_sensitive=True)()


def _streamed(request: HttpRequest, pieces: Generator[str, None, None]) -> Any:
    """What a StreamingHttpResponse streams best under the server at hand: an async iterator under ASGI,
    a plain one under WSGI and the test client. Either way one piece at a time."""
    if isinstance(request, ASGIRequest):
        return _pieces_async(pieces)
    return (piece.encode("utf-8") for piece in pieces)


# --- views ----------------------------------------------------------------------------------------------
@require_GET
@login_required
def audit(request: HttpRequest) -> HttpResponse:
    """The team's calls (``?what=calls``) or audit events (``?what=events``), filtered, searched, paged."""
    team = _audit_team(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    return _audit_page(request, team, AuditFilterForm(request.GET))


@require_GET
@login_required
def audit_export(request: HttpRequest) -> HttpResponseBase:
    """Download the filtered calls or events as CSV or JSON Lines (``?format=csv|jsonl``), streamed.
    The export itself is recorded in the audit log (``audit.exported``)."""
    team = _audit_team(request)
    if team is None:
        raise PermissionDenied("You are not a member of a team.")
    form = AuditFilterForm(request.GET)
    if not form.is_valid():
        return _audit_page(request, team, form)
    what, fmt, filters = form.chosen_what(), form.chosen_format(), form.filters()
    audit_search.audit_export_record(
        team=team,
        actor_id=request.user.pk,  # type: ignore[arg-type]
        what=what,
        fmt=fmt,
        filters=filters,
    )
    pieces = audit_search.export_lines(team=team, filters=filters, what=what, fmt=fmt)
    response = StreamingHttpResponse(
        _streamed(request, pieces), content_type=audit_search.export_content_type(fmt)
    )
    filename = audit_search.export_filename(team=team, what=what, fmt=fmt, today=timezone.now().date())
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


@require_GET
@login_required
def call_detail(request: HttpRequest, call_id: str) -> HttpResponse:
    """One call: its arguments, decision, decider, times, rule and result, and its audit events with their
    place in the chain. Another team's call is 403, no such call 404."""
    _select_team(request)  # the navigation's teams
    call = audit_search.call_for_page(call_id)
    if call is None:
        raise Http404("No such call.")
    membership = access.require_call_read(request.user, call)
    request.team, request.membership = call.team, membership  # type: ignore[attr-defined]
    return render(
        request,
        "approvals/call_detail.html",
        {
            "team": call.team,
            "shown": audit_search.show_call(call),
            "events": audit_search.show_events(audit_search.events_of_call(call)),
            "can_read_rules": access.can_read_rules(request.user, call.team),
            "can_audit": access.can_audit(request.user, call.team),
        },
    )

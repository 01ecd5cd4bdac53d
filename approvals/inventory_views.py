"""The Inventory pages: every upstream MCP server the team's bridges front, and one server's page.

Admins and auditors read them (``approvals.access.require_inventory_read``); what they show is gathered by
``approvals.services.inventory``. These views only validate the filters and translate.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from approvals import access
from approvals.models import ToolCall, Upstream
from approvals.services import server_review
from approvals.services.inventory import CALLS_WINDOW, inventory_for, upstream_page
from approvals.views import _select_team

OUTCOMES = list(ToolCall.State.values)
"""The columns of "calls by outcome", in the order of a call's life."""


@require_GET
@login_required
def inventory(request: HttpRequest) -> HttpResponse:
    """The team's servers with transport, version, last seen, users and tokens, tools, calls of the last
    30 days, warnings and checklist status; filtered by ``?q=`` (a name), ``?transport=``, ``?status=``
    and ``?warned=1``."""
    team = _select_team(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    access.require_inventory_read(request.user, team)
    q = request.GET.get("q", "").strip()[:128]
    transport = request.GET.get("transport", "")
    transport = transport if transport in Upstream.Transport.values else ""
    status = request.GET.get("status", "")
    status = status if status in server_review.STATUS_LABELS else ""
    warned = request.GET.get("warned") == "1"
    rows = inventory_for(team=team, q=q, transport=transport, status=status, warned=warned)
    context = {
        "team": team,
        "rows": rows,
        "q": q,
        "transport": transport,
        "transports": Upstream.Transport.choices,
        "status": status,
        "statuses": list(server_review.STATUS_LABELS.items()),
        "warned": warned,
        "filtered": bool(q or transport or status or warned),
        "requires_review": team.require_reviewed_servers,
        "outcomes": OUTCOMES,
        "window_days": CALLS_WINDOW.days,
    }
    return render(request, "approvals/inventory.html", context)


@require_http_methods(["GET", "POST"])
@login_required
def inventory_server(request: HttpRequest, upstream_id: int) -> HttpResponse:
    """One server: what it is (masked command or URL, environment variable names, capabilities), its
    least-privilege warnings, its checklist status and reviews, its tools with their annotations, who runs
    it from which tokens, its change history and its calls. Admins sign the checklist off here (POST)."""
    _select_team(request)  # the navigation's teams
    upstream = get_object_or_404(Upstream.objects.select_related("team"), pk=upstream_id)
    access.require_inventory_read(request.user, upstream.team)
    error: server_review.ReviewError | None = None
    submitted: dict[str, Any] | None = None
    if request.method == "POST":
        access.require_admin(request.user, upstream.team)
        submitted = _posted_review(request)
        try:
            server_review.review_submit(upstream=upstream, author=request.user, **submitted)  # type: ignore[arg-type]
        except server_review.ReviewError as exc:
            error = exc
        else:
            verdict = "approved" if submitted["approved"] else "reviewed and not approved"
            messages.success(
                request, f"The server {upstream.name} is {verdict}; the review is in the audit log."
            )
            return redirect("approvals:inventory_server", upstream_id=upstream.pk)
    page = upstream_page(upstream=upstream)
    query = {"team": upstream.team.slug, "what": "calls", "server": upstream.name}
    context = {
        "team": upstream.team,
        "page": page,
        "upstream": upstream,
        "outcomes": OUTCOMES,
        "window_days": CALLS_WINDOW.days,
        "audit_url": f"{reverse('approvals:audit')}?{urlencode(query)}",
        "inventory_url": f"{reverse('approvals:inventory')}?{urlencode({'team': upstream.team.slug})}",
        "may_review": access.is_admin(request.user, upstream.team),
        "checklist": _checklist_rows(submitted or _previous_answers(page.review)),
        "review_note": (submitted or {}).get("note", ""),
        "review_error": error,
        "answer_choices": server_review.ANSWERS,
    }
    return render(request, "approvals/inventory_server.html", context, status=400 if error else 200)


def _posted_review(request: HttpRequest) -> dict[str, Any]:
    """The checklist form's fields as ``review_submit`` takes them (it validates them)."""
    return {
        "answers": {
            question.key: {
                "answer": request.POST.get(f"answer-{question.key}", ""),
                "note": request.POST.get(f"note-{question.key}", "")[: server_review.MAX_NOTE + 1],
            }
            for question in server_review.CHECKLIST
        },
        "approved": request.POST.get("verdict") == "approve",
        "note": request.POST.get("note", "")[:2001],
    }


def _previous_answers(review: Any) -> dict[str, Any]:
    """The newest review's answers, to start the next one from (a re-review changes little)."""
    return {"answers": review.answers if review is not None else {}}


def _checklist_rows(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The questions by section, each with the answer and note to show in the form."""
    answers = values.get("answers", {})
    rows = []
    for question in server_review.CHECKLIST:
        given = answers.get(question.key, {})
        rows.append(
            {
                "question": question,
                "answer": given.get("answer", ""),
                "note": given.get("note", ""),
            }
        )
    return rows

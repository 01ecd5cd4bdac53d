"""The Inventory pages: every upstream MCP server the team's bridges front, and one server's page.

Admins and auditors read them (``approvals.access.require_inventory_read``); what they show is gathered by
``approvals.services.inventory``. These views only validate the filters and translate.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET

from approvals import access
from approvals.models import ToolCall, Upstream
from approvals.services.inventory import CALLS_WINDOW, inventory_for, upstream_page
from approvals.views import _select_team

OUTCOMES = list(ToolCall.State.values)
"""The columns of "calls by outcome", in the order of a call's life."""


@require_GET
@login_required
def inventory(request: HttpRequest) -> HttpResponse:
    """The team's servers with transport, version, last seen, users and tokens, tools and calls of the
    last 30 days; filtered by ``?q=`` (a name) and ``?transport=``."""
    team = _select_team(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    access.require_inventory_read(request.user, team)
    q = request.GET.get("q", "").strip()[:128]
    transport = request.GET.get("transport", "")
    transport = transport if transport in Upstream.Transport.values else ""
    rows = inventory_for(team=team, q=q, transport=transport)
    context = {
        "team": team,
        "rows": rows,
        "q": q,
        "transport": transport,
        "transports": Upstream.Transport.choices,
        "outcomes": OUTCOMES,
        "window_days": CALLS_WINDOW.days,
    }
    return render(request, "approvals/inventory.html", context)


@require_GET
@login_required
def inventory_server(request: HttpRequest, upstream_id: int) -> HttpResponse:
    """One server: what it is (masked command or URL, environment variable names, capabilities), its
    tools with their annotations, who runs it from which tokens, its change history and its calls."""
    _select_team(request)  # the navigation's teams
    upstream = get_object_or_404(Upstream.objects.select_related("team"), pk=upstream_id)
    access.require_inventory_read(request.user, upstream.team)
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
    }
    return render(request, "approvals/inventory_server.html", context)

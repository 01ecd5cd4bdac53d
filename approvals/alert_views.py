"""The Alerts page: a team's alerts, open ones first; its admins acknowledge them, its auditors read them.

Who may do what is decided in ``approvals.access``; the work is done by ``approvals.services.alerts``.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from approvals import access
from approvals.models import Alert, Team
from approvals.services.alerts import (
    alert_acknowledge,
    alerts_acknowledge_all,
    alerts_for,
    open_alerts_count,
)
from approvals.views import _select_team

STATES = {"open": Alert.State.OPEN, "acknowledged": Alert.State.ACKNOWLEDGED}
"""The page's filter (``?state=``); anything else shows every alert."""


def _alerts_url(team: Team, state: str) -> str:
    query = {"team": team.slug} | ({"state": state} if state in STATES else {})
    return f"{reverse('approvals:alerts')}?{urlencode(query)}"


@require_GET
@login_required
def alerts(request: HttpRequest) -> HttpResponse:
    """The team's alerts, open ones first, then the most recently seen; filtered by ``?state=``."""
    team = _select_team(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    access.require_alerts_read(request.user, team)
    state = request.GET.get("state", "")
    state = state if state in STATES else ""
    page = Paginator(alerts_for(team=team, state=STATES.get(state)), 50).get_page(request.GET.get("page"))
    context = {
        "team": team,
        "page": page,
        "state": state,
        "can_acknowledge": access.can_acknowledge_alerts(request.user, team),
        "open_count": open_alerts_count(team=team),
    }
    return render(request, "approvals/alerts.html", context)


@require_POST
@login_required
def alert_acknowledge_view(request: HttpRequest, alert_id: int) -> HttpResponse:
    """An admin acknowledges one alert (another team's: 403; no such alert: 404)."""
    _select_team(request)  # the navigation's teams
    alert = get_object_or_404(Alert.objects.select_related("team", "token"), pk=alert_id)
    access.require_alerts_acknowledge(request.user, alert.team)
    if alert_acknowledge(alert=alert, by=request.user):  # type: ignore[arg-type]
        messages.success(request, "Alert acknowledged.")
    else:
        messages.info(request, "That alert was already acknowledged.")
    return redirect(_alerts_url(alert.team, request.POST.get("state", "")))


@require_POST
@login_required
def alerts_acknowledge_all_view(request: HttpRequest) -> HttpResponse:
    """An admin acknowledges every open alert of the team."""
    team = _select_team(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    access.require_alerts_acknowledge(request.user, team)
    count = alerts_acknowledge_all(team=team, by=request.user)  # type: ignore[arg-type]
    messages.success(request, f"{count} alert{'' if count == 1 else 's'} acknowledged.")
    return redirect(_alerts_url(team, request.POST.get("state", "")))

"""HTTP views: authenticate, check access, call one service or selector, render."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from approvals import access, selectors
from approvals.models import Team
from approvals.services import calls as call_services


def _select_team(request: HttpRequest) -> Team | None:
    """The team this page is about: ``?team=``, else the last one used, else the user's first."""
    teams = access.teams_for(request.user)
    request.user_teams = teams  # type: ignore[attr-defined]
    wanted = request.GET.get("team") or request.session.get("team_slug")
    team = next((t for t in teams if t.slug == wanted), None)
    if team is None and request.GET.get("team"):
        raise PermissionDenied("You are not a member of that team.")
    team = team or (teams[0] if teams else None)
    if team is not None:
        request.session["team_slug"] = team.slug
    request.team = team  # type: ignore[attr-defined]
    return team


@login_required
def queue(request: HttpRequest) -> HttpResponse:
    """The live queue of held calls (filled over the reviewer socket)."""
    team = _select_team(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    access.require_review(request.user, team)
    return render(request, "approvals/queue.html", {"team": team})


@login_required
def history(request: HttpRequest) -> HttpResponse:
    """Calls that left the queue, newest first."""
    team = _select_team(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    access.require_review(request.user, team)
    page = Paginator(selectors.decided_calls_for(team=team), 50).get_page(request.GET.get("page"))
    return render(request, "approvals/history.html", {"team": team, "page": page})


@require_POST
@login_required
def decide(request: HttpRequest, call_id: str) -> HttpResponse:
    """Form fallback for Allow / Deny / Always-Allow when scripts are off."""
    decision = request.POST.get("decision", "")
    if decision not in {"allow", "deny", "always_allow"}:
        messages.error(request, "Choose Allow, Deny or Always allow.")
        return redirect("approvals:queue")
    try:
        call = call_services.call_decide(
            call_id=call_id,
            reviewer=request.user,  # type: ignore[arg-type]
            allow=decision != "deny",
            always_allow=decision == "always_allow",
            reason=request.POST.get("reason", ""),
        )
    except call_services.CallNotFound:
        raise PermissionDenied("No such call in your teams.") from None
    except call_services.CallAlreadyDecided as exc:
        messages.warning(request, f"That call was already {exc.call.state}.")
    else:
        messages.success(request, f"{call.server} / {call.tool}: {call.state}.")
    return redirect("approvals:queue")

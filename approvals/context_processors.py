"""Template context shared by every page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest

from approvals import access
from approvals.models import Membership, Team
from approvals.services.alerts import open_alerts_count


def current_team(request: HttpRequest) -> dict[str, Any]:
    """The team the page is about (set by the view), the user's role in it, and their other teams.

    ``open_alerts``: for a team's admin, a callable counting its open alerts (the nav's badge), so that
    only a page that shows it runs the query; 0 for everyone else."""
    membership = getattr(request, "membership", None)
    team = getattr(request, "team", None)
    open_alerts: Callable[[], int] | int = 0
    if team is not None and membership is not None and membership.role == Membership.Role.ADMIN:
        admins_team: Team = team
        open_alerts = lambda: open_alerts_count(team=admins_team)  # noqa: E731 (a template calls it)
    return {
        "current_team": team,
        "current_role": membership.role if membership else None,
        "user_teams": getattr(request, "user_teams", []),
        "open_alerts": open_alerts,
    }


def two_factor(request: HttpRequest) -> dict[str, Any]:
    """``mfa_setup_teams``: the teams whose requirement of two-factor authentication the user has yet to
    meet (the banner on every page says so, with a link to set it up); ``mfa_required_teams``: all teams
    requiring it of the user, read only by the pages that show it (templates call a callable)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"mfa_setup_teams": [], "mfa_required_teams": []}
    return {
        "mfa_setup_teams": access.teams_needing_mfa_setup(user),
        "mfa_required_teams": lambda: access.teams_requiring_mfa(user),
    }

"""Template context shared by every page."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def current_team(request: HttpRequest) -> dict[str, Any]:
    """The team the page is about (set by the view), the user's role in it, and their other teams."""
    membership = getattr(request, "membership", None)
    return {
        "current_team": getattr(request, "team", None),
        "current_role": membership.role if membership else None,
        "user_teams": getattr(request, "user_teams", []),
    }

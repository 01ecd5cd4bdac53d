"""Template context shared by every page."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def current_team(request: HttpRequest) -> dict[str, Any]:
    """The team the page is about (set by the view) and the user's other teams."""
    return {"current_team": getattr(request, "team", None), "user_teams": getattr(request, "user_teams", [])}

"""The Limits pages: a team's rate limits with the current count of each, and, for admins, create, edit,
switch on and off, delete.

Admins manage limits; reviewers and auditors read them (as they read the rules); members and other teams
get 403. Every decision is in ``approvals.access``; every change is a service of
``approvals.services.limits``.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from approvals import access
from approvals.models import RateLimit, Team
from approvals.services import limits as limit_services
from approvals.services import rules as rule_services
from approvals.views import _select_team

NAME_WIDGET = {"autocomplete": "off", "spellcheck": "false"}


class LimitForm(forms.Form):
    max_calls = forms.IntegerField(
        label="At most",
        min_value=1,
        max_value=limit_services.MAX_CALLS,
        initial=60,
        widget=forms.NumberInput(attrs={"size": 8}),
    )
    window = forms.ChoiceField(label="Calls per", choices=RateLimit.Window.choices, initial="minute")
    scope = forms.ChoiceField(label="Counted", choices=RateLimit.Scope.choices, initial="token")
    server = forms.CharField(
        max_length=rule_services.MAX_NAME_CHARS,
        initial="*",
        help_text="The bridge's --name, or a glob such as * (case-sensitive).",
        widget=forms.TextInput(attrs={**NAME_WIDGET, "placeholder": "*"}),
    )
    tool = forms.CharField(
        max_length=rule_services.MAX_NAME_CHARS,
        initial="*",
        help_text="The tool's name, or a glob such as write_* .",
        widget=forms.TextInput(attrs={**NAME_WIDGET, "placeholder": "*"}),
    )
    note = forms.CharField(
        max_length=rule_services.MAX_NOTE_CHARS, required=False, widget=forms.TextInput(attrs={"size": 60})
    )
    enabled = forms.BooleanField(required=False, initial=True)

    def clean_server(self) -> str:
        return str(self.cleaned_data["server"]).strip()

    def clean_tool(self) -> str:
        return str(self.cleaned_data["tool"]).strip()

    @classmethod
    def for_limit(cls, limit: RateLimit) -> LimitForm:
        return cls(initial={name: getattr(limit, name) for name in cls.base_fields})

    def values(self) -> dict[str, Any]:
        return {name: self.cleaned_data.get(name) for name in self.fields}

    def add_service_errors(self, invalid: limit_services.LimitInvalid) -> None:
        for name, message in invalid.errors.items():
            self.add_error(name if name in self.fields else None, message)


def _team_or_none(request: HttpRequest) -> Team | None:
    """The page's team (``?team=``, the session's, or the first), after checking the user may read limits."""
    team = _select_team(request)
    if team is not None:
        access.require_limits_read(request.user, team)
    return team


def _limit_for(request: HttpRequest, limit_id: int) -> RateLimit:
    """The limit, if the user may change it (another team's: 403, no such limit: 404)."""
    _select_team(request)  # the navigation's teams
    limit = get_object_or_404(RateLimit.objects.select_related("team"), pk=limit_id)
    # Reading first: an admin or reviewer missing required two-factor is sent to set it up.
    access.require_limits_read(request.user, limit.team)
    access.require_limits_manage(request.user, limit.team)
    request.team = limit.team  # type: ignore[attr-defined]
    request.session["team_slug"] = limit.team.slug
    return limit


@require_GET
@login_required
def limits_list(request: HttpRequest) -> HttpResponse:
    """The team's rate limits, each with its count in the current window."""
    team = _team_or_none(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    now = timezone.now()
    rows = list(RateLimit.objects.filter(team=team).select_related("created_by").order_by("id"))
    usage = limit_services.limits_usage(team=team, limits=[r for r in rows if r.enabled], now=now)
    for row in rows:
        row.described = limit_services.describe(  # type: ignore[attr-defined]
            max_calls=row.max_calls, window=row.window, scope=row.scope, server=row.server, tool=row.tool
        )
        row.usage = usage.get(row.pk) if usage is not None else None  # type: ignore[attr-defined]
        if row.usage is not None:  # type: ignore[attr-defined]
            row.percent = min(100, round(100 * row.usage.count / row.max_calls))  # type: ignore[attr-defined]
    return render(
        request,
        "approvals/limits.html",
        {
            "team": team,
            "limits": rows,
            "counters_unavailable": usage is None and any(r.enabled for r in rows),
            "can_manage": access.can_manage_limits(request.user, team),
            "max_limits": limit_services.MAX_LIMITS_PER_TEAM,
        },
    )


@require_http_methods(["GET", "POST"])
@login_required
def limit_new(request: HttpRequest) -> HttpResponse:
    """Add a rate limit (admins)."""
    team = _team_or_none(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    access.require_limits_manage(request.user, team)
    form = LimitForm(request.POST) if request.method == "POST" else LimitForm()
    if request.method == "POST" and form.is_valid():
        try:
            limit = limit_services.limit_create(team=team, by=request.user, **form.values())  # type: ignore[arg-type]
        except limit_services.LimitInvalid as invalid:
            form.add_service_errors(invalid)
        else:
            messages.success(request, f"Rate limit #{limit.pk} ({limit_label(limit)}) is saved.")
            return redirect("approvals:limits")
    return render(request, "approvals/limits_form.html", {"team": team, "form": form, "limit": None})


def limit_label(limit: RateLimit) -> str:
    return limit_services.describe(
        max_calls=limit.max_calls,
        window=limit.window,
        scope=limit.scope,
        server=limit.server,
        tool=limit.tool,
    )


@require_http_methods(["GET", "POST"])
@login_required
def limit_edit(request: HttpRequest, limit_id: int) -> HttpResponse:
    """Change a rate limit (admins)."""
    limit = _limit_for(request, limit_id)
    form = LimitForm(request.POST) if request.method == "POST" else LimitForm.for_limit(limit)
    if request.method == "POST" and form.is_valid():
        try:
            limit_services.limit_update(limit=limit, by=request.user, **form.values())  # type: ignore[arg-type]
        except limit_services.LimitInvalid as invalid:
            form.add_service_errors(invalid)
        else:
            messages.success(request, f"Rate limit #{limit.pk} is saved.")
            return redirect("approvals:limits")
    return render(request, "approvals/limits_form.html", {"team": limit.team, "form": form, "limit": limit})


@require_POST
@login_required
def limit_enabled(request: HttpRequest, limit_id: int) -> HttpResponse:
    """Switch a rate limit on (``enabled=1``) or off (``enabled=0``) (admins)."""
    limit = _limit_for(request, limit_id)
    enabled = request.POST.get("enabled") == "1"
    if limit_services.limit_set_enabled(limit=limit, by=request.user, enabled=enabled):  # type: ignore[arg-type]
        messages.success(request, f"Rate limit #{limit.pk} is {'on' if enabled else 'off'}.")
    else:
        messages.info(request, f"Rate limit #{limit.pk} already was {'on' if enabled else 'off'}.")
    return redirect("approvals:limits")


@require_POST
@login_required
def limit_delete_view(request: HttpRequest, limit_id: int) -> HttpResponse:
    """Delete a rate limit (admins)."""
    limit = _limit_for(request, limit_id)
    label = f"#{limit.pk} ({limit_label(limit)})"
    limit_services.limit_delete(limit=limit, by=request.user)  # type: ignore[arg-type]
    messages.success(request, f"Rate limit {label} is deleted.")
    return redirect("approvals:limits")

"""The Rules pages: list and search, create, edit, switch on and off, delete, the calls a rule decided,
a dry run against a sample call, and the policy file's export and import.

Admins manage rules; reviewers and auditors read them (list, rule pages, dry run, export); reviewers may
also create rules unless the team restricts rule creation to admins (``Team.rules_admins_only``).
Members and other teams get 403. Every decision is in ``approvals.access``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from approvals import access, policy, policyfile
from approvals.models import Rule, Team, ToolCall
from approvals.services import audit_search
from approvals.services import rules as rule_services
from approvals.views import _select_team

RULES_PER_PAGE = 50
CALLS_PER_PAGE = 50
MAX_SAMPLE_CHARS = 65_536
CONSTRAINTS_HELP = (
    'A JSON list, all of which must hold: [{"path": "path", "op": "within", "value": "/srv/project"}]. '
    "Operators: equals, one_of, glob, regex, prefix, within, max_length, range (docs/policy.md)."
)
RESULT_LABELS = {
    "result_instructions": "Instructions and hidden text",
    "result_secrets": "Secrets",
    "result_personal_data": "Personal data",
}
"""The rule's overrides of the team's result policy (``Rule.RESULT_FIELDS``), as the pages name them."""
RESULT_CHOICES = [("", "The team's setting"), *((value, value) for value in Team.ResultAction.values)]


# --- forms ---------------------------------------------------------------------------------------------


def _json_field(text: str, *, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise forms.ValidationError(
            f"{what} is not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from None
    except RecursionError:
        raise forms.ValidationError(f"{what} is nested too deeply") from None


class RuleForm(forms.Form):
    effect = forms.ChoiceField(choices=Rule.Effect.choices, initial=Rule.Effect.ALLOW)
    server = forms.CharField(
        max_length=128,
        help_text="The bridge's --name, or a glob such as * (case-sensitive).",
        widget=forms.TextInput(attrs={"placeholder": "files", "autocomplete": "off", "spellcheck": "false"}),
    )
    tool = forms.CharField(
        max_length=128,
        help_text="The tool's name, or a glob such as read_* .",
        widget=forms.TextInput(
            attrs={"placeholder": "read_file", "autocomplete": "off", "spellcheck": "false"}
        ),
    )
    constraints = forms.CharField(
        required=False,
        help_text=CONSTRAINTS_HELP,
        widget=forms.Textarea(
            attrs={"rows": 6, "cols": 90, "class": "mono", "spellcheck": "false", "placeholder": "[]"}
        ),
    )
    note = forms.CharField(max_length=500, required=False, widget=forms.TextInput(attrs={"size": 60}))
    enabled = forms.BooleanField(required=False, initial=True)
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires (UTC)",
        help_text="Optional: the rule stops matching then.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    result_instructions = forms.ChoiceField(
        choices=RESULT_CHOICES, required=False, label=RESULT_LABELS["result_instructions"]
    )
    result_secrets = forms.ChoiceField(
        choices=RESULT_CHOICES, required=False, label=RESULT_LABELS["result_secrets"]
    )
    result_personal_data = forms.ChoiceField(
        choices=RESULT_CHOICES, required=False, label=RESULT_LABELS["result_personal_data"]
    )

    def __init__(self, *args: Any, team: Team | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if team is not None:  # the blank choice says what the team's setting is
            for name in Rule.RESULT_FIELDS:
                field = self.fields[name]
                assert isinstance(field, forms.ChoiceField)
                field.choices = [("", f"The team's setting ({getattr(team, name)})"), *RESULT_CHOICES[1:]]

    def clean_server(self) -> str:
        return str(self.cleaned_data["server"]).strip()

    def clean_tool(self) -> str:
        return str(self.cleaned_data["tool"]).strip()

    def clean_constraints(self) -> Any:
        text = str(self.cleaned_data.get("constraints") or "").strip()
        return _json_field(text, what="Constraints") if text else []

    @classmethod
    def for_rule(cls, rule: Rule) -> RuleForm:
        return cls(
            initial={
                "effect": rule.effect,
                "server": rule.server,
                "tool": rule.tool,
                "constraints": json.dumps(rule.constraints or [], indent=2, ensure_ascii=False),
                "note": rule.note,
                "enabled": rule.enabled,
                "expires_at": rule.expires_at,
                **{name: getattr(rule, name) for name in Rule.RESULT_FIELDS},
            },
            team=rule.team,
        )

    def values(self) -> dict[str, Any]:
        data = self.cleaned_data
        names = ("effect", "server", "tool", "constraints", "note", "enabled", "expires_at")
        return {name: data.get(name) for name in names} | {
            name: data.get(name) or "" for name in Rule.RESULT_FIELDS
        }

    def add_service_errors(self, invalid: rule_services.RuleInvalid) -> None:
        for name, message in invalid.errors.items():
            self.add_error(name if name in self.fields else None, message)


class DryRunForm(forms.Form):
    server = forms.CharField(
        max_length=128, widget=forms.TextInput(attrs={"placeholder": "files", "spellcheck": "false"})
    )
    tool = forms.CharField(
        max_length=128, widget=forms.TextInput(attrs={"placeholder": "read_file", "spellcheck": "false"})
    )
    arguments = forms.CharField(
        max_length=MAX_SAMPLE_CHARS,
        initial="{}",
        help_text="The call's arguments as a JSON object.",
        widget=forms.Textarea(attrs={"rows": 8, "cols": 90, "class": "mono", "spellcheck": "false"}),
    )

    def clean_arguments(self) -> dict[str, Any]:
        value = _json_field(str(self.cleaned_data["arguments"]), what="The arguments")
        if not isinstance(value, dict):
            raise forms.ValidationError('The arguments must be a JSON object, e.g. {"path": "/srv/x"}.')
        return value


class ImportForm(forms.Form):
    file = forms.FileField(label="Policy file (.yaml, .yml or .json)")
    format = forms.ChoiceField(
        choices=[("", "From the file name"), ("yaml", "YAML"), ("json", "JSON")], required=False
    )


# --- helpers -------------------------------------------------------------------------------------------


def _team_or_none(request: HttpRequest) -> Team | None:
    """The page's team (``?team=``, the session's, or the first), after checking the user may read rules."""
    team = _select_team(request)
    if team is not None:
        access.require_rules_read(request.user, team)
    return team


def _rule_for(request: HttpRequest, rule_id: int) -> Rule:
    """The rule, if the user may read its team's rules (another team's rule: 403, no such rule: 404)."""
    _select_team(request)  # the navigation's teams
    rule = get_object_or_404(
        Rule.objects.select_related("team", "created_by", "created_from_call"), pk=rule_id
    )
    membership = access.require_rules_read(request.user, rule.team)
    request.team = rule.team  # type: ignore[attr-defined]
    request.membership = membership  # type: ignore[attr-defined]
    request.session["team_slug"] = rule.team.slug
    return rule


def _decorate(rule: Rule, now: datetime) -> Rule:
    """Add what the pages show of a rule: its constraints in words, whether it expired or is broken."""
    try:
        described = [c.describe() for c in policy.parse_constraints(rule.constraints or [])]
        broken = rule.effect not in rule_services.EFFECTS
    except policy.PolicyError:
        described, broken = [json.dumps(rule.constraints)[:200]], True
    rule.described = described  # type: ignore[attr-defined]
    rule.broken = broken  # type: ignore[attr-defined]
    # Its overrides of the team's result policy: (what, action) for each it sets.
    rule.result_overrides = [  # type: ignore[attr-defined]
        (RESULT_LABELS[name], getattr(rule, name)) for name in Rule.RESULT_FIELDS if getattr(rule, name)
    ]
    rule.expired = rule.expires_at is not None and rule.expires_at <= now  # type: ignore[attr-defined]
    return rule


def _filtered_rules(team: Team, *, q: str, enabled: str, effect: str) -> QuerySet[Rule]:
    rules = Rule.objects.filter(team=team).select_related("created_by").annotate(decided=Count("calls"))
    if q:
        rules = rules.filter(Q(server__icontains=q) | Q(tool__icontains=q) | Q(note__icontains=q))
    if enabled in ("enabled", "disabled"):
        rules = rules.filter(enabled=enabled == "enabled")
    if effect in Rule.Effect.values:
        rules = rules.filter(effect=effect)
    return rules.order_by("id")


# --- pages ---------------------------------------------------------------------------------------------


@require_GET
@login_required
def rules_list(request: HttpRequest) -> HttpResponse:
    """The team's rules in evaluation order, searchable by server, tool and note."""
    team = _team_or_none(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    q = request.GET.get("q", "").strip()[:128]
    enabled = request.GET.get("enabled", "")
    effect = request.GET.get("effect", "")
    now = timezone.now()
    page = Paginator(_filtered_rules(team, q=q, enabled=enabled, effect=effect), RULES_PER_PAGE).get_page(
        request.GET.get("page")
    )
    for rule in page.object_list:
        _decorate(rule, now)
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "approvals/rules.html",
        {
            "team": team,
            "page": page,
            "q": q,
            "enabled": enabled,
            "effect": effect,
            "filtered": bool(q or enabled or effect),
            "total": Rule.objects.filter(team=team).count(),
            "query": query.urlencode(),
            "can_manage": access.is_admin(request.user, team),
            "can_create": access.can_create_rule(request.user, team),
        },
    )


@require_http_methods(["GET", "POST"])
@login_required
def rule_new(request: HttpRequest) -> HttpResponse:
    """Create a rule (admins; reviewers too unless the team restricts rule creation to admins)."""
    team = _team_or_none(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    access.require_rule_create(request.user, team)
    form = (
        RuleForm(request.POST, team=team)
        if request.method == "POST"
        else RuleForm(initial=_prefill(request), team=team)
    )
    if request.method == "POST" and form.is_valid():
        try:
            rule = rule_services.rule_create(team=team, by=request.user, **form.values())  # type: ignore[arg-type]
        except rule_services.RuleInvalid as invalid:
            form.add_service_errors(invalid)
        else:
            messages.success(request, f"Rule #{rule.pk} ({rule.effect} {rule.server}/{rule.tool}) is saved.")
            return redirect("approvals:rule_detail", rule_id=rule.pk)
    return render(request, "approvals/rules_form.html", {"team": team, "form": form, "rule": None})


def _prefill(request: HttpRequest) -> dict[str, Any]:
    """``?server=&tool=&effect=`` from a link (e.g. the dry run's "create a rule for this call")."""
    initial: dict[str, Any] = {"enabled": True, "constraints": "[]"}
    for name in ("server", "tool"):
        if request.GET.get(name):
            initial[name] = request.GET[name][:128]
    if request.GET.get("effect") in Rule.Effect.values:
        initial["effect"] = request.GET["effect"]
    return initial


@require_GET
@login_required
def rule_detail(request: HttpRequest, rule_id: int) -> HttpResponse:
    """One rule and the calls it decided, newest first, their secrets masked."""
    rule = _decorate(_rule_for(request, rule_id), timezone.now())
    # The result policy of the calls it allows, kind by kind: its own action, or the team's.
    results = [
        (RESULT_LABELS[name], getattr(rule, name) or getattr(rule.team, name), bool(getattr(rule, name)))
        for name in Rule.RESULT_FIELDS
    ]
    calls = (
        ToolCall.objects.filter(rule=rule).select_related("requester", "decided_by").order_by("-created_at")
    )
    page = Paginator(calls, CALLS_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "approvals/rules_detail.html",
        {
            "team": rule.team,
            "rule": rule,
            "results": results,
            "page": page,
            "rows": audit_search.show_calls(page.object_list),
            "can_manage": access.is_admin(request.user, rule.team),
        },
    )


@require_http_methods(["GET", "POST"])
@login_required
def rule_edit(request: HttpRequest, rule_id: int) -> HttpResponse:
    """Change a rule (admins)."""
    rule = _rule_for(request, rule_id)
    access.require_admin(request.user, rule.team)
    form = RuleForm(request.POST, team=rule.team) if request.method == "POST" else RuleForm.for_rule(rule)
    if request.method == "POST" and form.is_valid():
        try:
            rule_services.rule_update(rule=rule, by=request.user, **form.values())  # type: ignore[arg-type]
        except rule_services.RuleInvalid as invalid:
            form.add_service_errors(invalid)
        else:
            messages.success(request, f"Rule #{rule.pk} is saved.")
            return redirect("approvals:rule_detail", rule_id=rule.pk)
    return render(request, "approvals/rules_form.html", {"team": rule.team, "form": form, "rule": rule})


@require_POST
@login_required
def rule_enabled(request: HttpRequest, rule_id: int) -> HttpResponse:
    """Switch a rule on (``enabled=1``) or off (``enabled=0``) (admins)."""
    rule = _rule_for(request, rule_id)
    access.require_admin(request.user, rule.team)
    enabled = request.POST.get("enabled") == "1"
    if rule_services.rule_set_enabled(rule=rule, by=request.user, enabled=enabled):  # type: ignore[arg-type]
        messages.success(request, f"Rule #{rule.pk} is {'on' if enabled else 'off'}.")
    else:
        messages.info(request, f"Rule #{rule.pk} already was {'on' if enabled else 'off'}.")
    return redirect(_back(request, reverse("approvals:rules")))


@require_POST
@login_required
def rule_delete_view(request: HttpRequest, rule_id: int) -> HttpResponse:
    """Delete a rule (admins). The calls it decided keep their reason."""
    rule = _rule_for(request, rule_id)
    access.require_admin(request.user, rule.team)
    label = f"#{rule.pk} ({rule.effect} {rule.server}/{rule.tool})"
    rule_services.rule_delete(rule=rule, by=request.user)  # type: ignore[arg-type]
    messages.success(request, f"Rule {label} is deleted.")
    return redirect("approvals:rules")


def _back(request: HttpRequest, default: str) -> str:
    """Where a small form came from, if it is one of our pages."""
    target = request.POST.get("next", "")
    safe = url_has_allowed_host_and_scheme(target, allowed_hosts=None) and target.startswith("/")
    return target if safe else default


@require_http_methods(["GET", "POST"])
@login_required
def rules_dry_run(request: HttpRequest) -> HttpResponse:
    """Try the team's rules on a sample call: which rule wins and why. Nothing is saved."""
    team = _team_or_none(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    form = DryRunForm(request.POST) if request.method == "POST" else DryRunForm(initial=_sample(request))
    result = None
    if request.method == "POST" and form.is_valid():
        result = rule_services.rules_dry_run(
            team=team,
            server=form.cleaned_data["server"],
            tool=form.cleaned_data["tool"],
            arguments=form.cleaned_data["arguments"],
            now=timezone.now(),
        )
    return render(
        request,
        "approvals/rules_dry_run.html",
        {
            "team": team,
            "form": form,
            "result": result,
            "can_create": access.can_create_rule(request.user, team),
        },
    )


def _sample(request: HttpRequest) -> dict[str, Any]:
    initial: dict[str, Any] = {"arguments": "{}"}
    for name in ("server", "tool"):
        if request.GET.get(name):
            initial[name] = request.GET[name][:128]
    return initial


@require_GET
@login_required
def rules_export(request: HttpRequest) -> HttpResponse:
    """Download the team's rules and mode as a policy file (``?format=yaml`` or ``json``)."""
    team = _team_or_none(request)
    if team is None:
        raise PermissionDenied("You are not a member of a team.")
    fmt = request.GET.get("format", "yaml")
    if fmt not in policyfile.FORMATS:
        fmt = "yaml"
    text = policyfile.export_text(team, fmt=fmt)  # type: ignore[arg-type]
    content_type = "application/json" if fmt == "json" else "application/yaml"
    response = HttpResponse(text, content_type=f"{content_type}; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="signoff-rules-{team.slug}.{fmt}"'
    return response


@require_http_methods(["GET", "POST"])
@login_required
def rules_import(request: HttpRequest) -> HttpResponse:
    """Replace the team's rules (and mode) with a policy file's, all or nothing (admins)."""
    team = _team_or_none(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    access.require_admin(request.user, team)
    form = ImportForm(request.POST or None, request.FILES or None)
    problems: list[str] = []
    refused = ""
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        refused = upload.name or ""
        try:
            text = policyfile.decode_upload(upload.read(policyfile.MAX_FILE_BYTES + 1))
            result = policyfile.import_text(
                team=team,
                text=text,
                by=request.user,  # type: ignore[arg-type]
                fmt=form.cleaned_data["format"] or None,
                filename=upload.name or "",
            )
        except policyfile.PolicyFileError as error:
            problems = [str(problem) for problem in error.problems]
        else:
            messages.success(request, f"Imported {upload.name}: {result}.")
            return redirect("approvals:rules")
    return render(
        request,
        "approvals/rules_import.html",
        {"team": team, "form": form, "problems": problems, "refused": refused},
    )

"""HTTP views: authenticate, check access, call one service or selector, render."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from approvals import access, selectors
from approvals.forms import (
    InvitationForm,
    MemberAddForm,
    MemberRoleForm,
    TeamSettingsForm,
    TokenIssueForm,
    TokenNetworksForm,
)
from approvals.models import BridgeToken, Membership, Team
from approvals.services import audit_search
from approvals.services import calls as call_services
from approvals.services import results as result_services
from approvals.services.invitations import invitations_open_for
from approvals.services.networks import NetworksInvalid, team_networks_change, token_networks_change
from approvals.services.teams import (
    RESULT_POLICY_FIELDS,
    LastAdminError,
    MfaLockout,
    member_add,
    member_remove,
    team_settings_change,
    user_get_or_create,
)
from approvals.services.tokens import token_issue, token_revoke
from approvals.snippets import EXAMPLE_UPSTREAM, client_configs


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
    request.membership = access.membership_for(request.user, team) if team else None  # type: ignore[attr-defined]
    return team


@login_required
def queue(request: HttpRequest) -> HttpResponse:
    """The live queue of held calls (filled over the reviewer socket). Members land on their tokens."""
    team = _select_team(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    membership = access.require_member(request.user, team)
    if membership.role == Membership.Role.MEMBER and "team" not in request.GET:
        return redirect("approvals:tokens")
    if membership.role == Membership.Role.AUDITOR and "team" not in request.GET:
        return redirect("approvals:rules")
    access.require_review(request.user, team)
    return render(request, "approvals/queue.html", {"team": team})


@login_required
def history(request: HttpRequest) -> HttpResponse:
    """Calls that left the queue, newest first, their secrets masked: all of the team's for admins,
    reviewers and auditors, a member's own for a member."""
    team = _select_team(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    membership = access.require_history(request.user, team)
    own = None if access.sees_all_calls(membership) else request.user.pk
    calls = selectors.decided_calls_for(team=team, requester_id=own)
    page = Paginator(calls, 50).get_page(request.GET.get("page"))
    rows = audit_search.show_calls(page.object_list)
    context = {"team": team, "page": page, "rows": rows, "own_only": own is not None}
    return render(request, "approvals/history.html", context)


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
    except access.FourEyesRefused as exc:
        messages.error(request, str(exc))
    except call_services.CallAlreadyDecided as exc:
        messages.warning(request, f"That call was already {exc.call.state}.")
    except call_services.InvalidRule as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{call.server} / {call.tool}: {call.state}.")
    return redirect("approvals:queue")


@require_POST
@login_required
def decide_result(request: HttpRequest, call_id: str) -> HttpResponse:
    """Form fallback for Release / Mask / Block of a held result when scripts are off."""
    try:
        call = result_services.result_decide(
            call_id=call_id,
            reviewer=request.user,  # type: ignore[arg-type]
            decision=request.POST.get("decision", ""),
            reason=request.POST.get("reason", ""),
        )
    except call_services.CallNotFound:
        raise PermissionDenied("No such call in your teams.") from None
    except ValueError:
        messages.error(request, "Choose Release, Mask or Block.")
    except access.FourEyesRefused as exc:
        messages.error(request, str(exc))
    except result_services.ResultNotHeld as exc:
        messages.warning(request, f"That result was already {exc.call.get_result_review_display().lower()}.")
    else:
        messages.success(
            request, f"{call.server} / {call.tool}: result {call.get_result_review_display().lower()}."
        )
    return redirect("approvals:queue")


def _public_url(request: HttpRequest) -> str:
    """Where bridges reach this server: SIGNOFF_PUBLIC_URL when set, else the address this page came from."""
    if settings.SIGNOFF_PUBLIC_URL_SET:
        return str(settings.SIGNOFF_PUBLIC_URL)
    return request.build_absolute_uri("/").rstrip("/")


@login_required
def tokens(request: HttpRequest) -> HttpResponse:
    """Your bridge tokens in this team (admins see everyone's); issue a new one."""
    team = _select_team(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    access.require_member(request.user, team)
    is_admin = access.is_admin(request.user, team)
    form = TokenIssueForm(request.POST if request.method == "POST" else None)
    if request.method == "POST":
        access.require_token_issue(request.user, team)
    issued: tuple[BridgeToken, str] | None = None
    if request.method == "POST" and form.is_valid():
        days = form.cleaned_data["expires_in_days"]
        try:
            with transaction.atomic():  # a token whose networks are refused is not issued either
                issued = token_issue(
                    team=team,
                    user=request.user,  # type: ignore[arg-type]
                    name=form.cleaned_data["name"],
                    expires_at=timezone.now() + timedelta(days=days) if days else None,
                    servers=form.cleaned_data["servers"],
                )
                if form.cleaned_data["networks"]:
                    token_networks_change(
                        token=issued[0],
                        networks=form.cleaned_data["networks"],
                        by=request.user,  # type: ignore[arg-type]
                    )
        except NetworksInvalid as exc:
            issued = None
            form.add_error("networks", str(exc))
    if issued is not None:
        token, raw = issued
        # The example config names a server the token may front: its first plain name, else "files".
        example = next((s for s in token.servers if "*" not in s and "?" not in s), "files")
        configs = client_configs(
            public_url=_public_url(request), token=raw, name=example, upstream=EXAMPLE_UPSTREAM
        )
        response = render(
            request,
            "approvals/token_issued.html",
            {"team": team, "token": token, "raw": raw, "configs": configs, "server_name": example},
        )
        response["Cache-Control"] = "no-store"  # the raw token is on this page, and only here
        return response
    listed = BridgeToken.objects.filter(team=team).select_related("user").order_by("-created_at")
    if not is_admin:
        listed = listed.filter(user=request.user)  # type: ignore[misc]
    return render(
        request,
        "approvals/tokens.html",
        {
            "team": team,
            "tokens": listed,
            "form": form,
            "is_admin": is_admin,
            "now": timezone.now(),
            "team_networks": team.allowed_networks,
        },
    )


@require_POST
@login_required
def token_networks_view(request: HttpRequest, token_id: int) -> HttpResponse:
    """Change the networks a token may connect from: its owner (within the team's networks) or an admin."""
    token = get_object_or_404(BridgeToken.objects.select_related("team", "user"), pk=token_id)
    access.require_token_control(request.user, token)
    form = TokenNetworksForm(request.POST)
    if not form.is_valid():
        problems = " ".join(str(error) for errors in form.errors.values() for error in errors)
        messages.error(request, f"Token “{token.name}”: nothing changed. {problems}")
        return redirect("approvals:tokens")
    networks = form.cleaned_data["networks"]
    try:
        changed = token_networks_change(token=token, networks=networks, by=request.user)  # type: ignore[arg-type]
    except NetworksInvalid as exc:
        messages.error(request, f"Token “{token.name}”: nothing changed. {exc}")
    else:
        where = ", ".join(networks) if networks else "the team's allowed networks"
        if changed:
            messages.success(
                request,
                f"Token “{token.name}” may now connect from {where}. Bridges already connected stay; "
                "the networks apply when they next connect.",
            )
        else:
            messages.info(request, f"Token “{token.name}” already connects from {where}.")
    return redirect("approvals:tokens")


@require_POST
@login_required
def token_revoke_view(request: HttpRequest, token_id: int) -> HttpResponse:
    """Revoke a token: its bridges are closed and its held calls denied at once."""
    token = get_object_or_404(BridgeToken.objects.select_related("team", "user"), pk=token_id)
    access.require_token_control(request.user, token)
    if token_revoke(token=token, by=request.user, reason=f"revoked by {request.user.get_username()}"):  # type: ignore[arg-type]
        messages.success(
            request, f"Token “{token.name}” ({token.prefix}…) is revoked; its bridges were closed."
        )
    else:
        messages.info(request, f"Token “{token.name}” was already revoked.")
    return redirect("approvals:tokens")


@login_required
def members(request: HttpRequest) -> HttpResponse:
    """The team's people and roles (admins only); add someone."""
    team = _select_team(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    access.require_admin(request.user, team)
    form = MemberAddForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        user = user_get_or_create(email=form.cleaned_data["email"])
        try:
            member_add(team=team, user=user, role=form.cleaned_data["role"], by=request.user)  # type: ignore[arg-type]
        except LastAdminError as exc:
            messages.error(request, str(exc))
            return redirect("approvals:members")
        messages.success(
            request,
            f"{user.get_username()} is {form.cleaned_data['role']} in {team.name}. New accounts set their "
            "password with “Forgot your password?” on the login page.",
        )
        return redirect("approvals:members")
    people = Membership.objects.filter(team=team).select_related("user").order_by("user__username")
    return render(
        request,
        "approvals/members.html",
        {
            "team": team,
            "memberships": people,
            "form": form,
            "roles": Membership.Role.choices,
            "invite_form": InvitationForm(),
            "invitations": invitations_open_for(team=team),
        },
    )


@require_POST
@login_required
def member_role(request: HttpRequest, membership_id: int) -> HttpResponse:
    """Change a member's role."""
    membership = get_object_or_404(Membership.objects.select_related("team", "user"), pk=membership_id)
    access.require_admin(request.user, membership.team)
    form = MemberRoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a role.")
        return redirect("approvals:members")
    role = form.cleaned_data["role"]
    try:
        member_add(team=membership.team, user=membership.user, role=role, by=request.user)  # type: ignore[arg-type]
    except LastAdminError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{membership.user.get_username()} is now {role}.")
    return redirect("approvals:members")


@require_POST
@login_required
def member_remove_view(request: HttpRequest, membership_id: int) -> HttpResponse:
    """Offboard someone from the team at once."""
    membership = get_object_or_404(Membership.objects.select_related("team", "user"), pk=membership_id)
    access.require_admin(request.user, membership.team)
    try:
        member_remove(team=membership.team, user=membership.user, by=request.user)  # type: ignore[arg-type]
    except LastAdminError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request,
            f"{membership.user.get_username()} was removed: their tokens are revoked, their pages closed.",
        )
    return redirect("approvals:members")


@login_required
def team_settings(request: HttpRequest) -> HttpResponse:
    """The team's mode (review or whitelist), deadline for held calls and who may create rules (admins)."""
    team = _select_team(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    access.require_admin(request.user, team)
    form = TeamSettingsForm(request.POST if request.method == "POST" else None, instance=team)
    if request.method == "POST" and form.is_valid():
        networks = form.cleaned_data.get("allowed_networks_text")
        try:
            with transaction.atomic():  # all of the page's settings, or none
                team_settings_change(
                    team=team,
                    by=request.user,  # type: ignore[arg-type]
                    name=form.cleaned_data["name"],
                    mode=form.cleaned_data["mode"],
                    deadline=form.cleaned_data["default_deadline_seconds"],
                    rules_admins_only=form.cleaned_data["rules_admins_only"],
                    four_eyes=form.cleaned_data["four_eyes"],
                    require_mfa=form.cleaned_data["require_mfa"],
                    alert_calls_per_token_hour=form.cleaned_data.get("alert_calls_per_token_hour"),
                    alert_denials_per_10_minutes=form.cleaned_data.get("alert_denials_per_10_minutes"),
                    payload_retention_days=form.cleaned_data.get("payload_retention_days"),
                    result_policy={
                        field: action
                        for field in RESULT_POLICY_FIELDS
                        if (action := form.cleaned_data.get(field))
                    },
                    require_reviewed_servers=form.cleaned_data.get("require_reviewed_servers"),
                )
                if networks is not None:  # None: the post left the field out, the networks stay
                    team_networks_change(team=team, networks=networks, by=request.user)  # type: ignore[arg-type]
        except MfaLockout as exc:
            form.add_error("require_mfa", str(exc))
        else:
            messages.success(request, "Settings saved: they apply to the next call.")
            return redirect("approvals:team_settings")
    return render(request, "approvals/team_settings.html", {"team": team, "form": form})

"""The Notifications page of a team's admins: the team's channels (email, Slack-compatible webhook, signed
webhook), adding one, a test message, switching on and off, rotating a webhook's secret, deleting.

Admins only; everyone else gets 403 (``access.require_admin``). The work is done by
``approvals.services.notifications``; these views only translate.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from approvals import access
from approvals.models import NotificationChannel, Team
from approvals.services import notifications as service
from approvals.views import _public_url, _select_team

TARGET_HELP = {
    NotificationChannel.Kind.EMAIL: "Email addresses, separated by commas.",
    NotificationChannel.Kind.SLACK: "The incoming webhook URL (Slack, Mattermost, Rocket.Chat…).",
    NotificationChannel.Kind.WEBHOOK: "Your endpoint's https:// URL. Each request is signed with a secret "
    "shown once, after you add the channel.",
}


class ChannelForm(forms.Form):
    kind = forms.ChoiceField(choices=NotificationChannel.Kind.choices, label="Kind")
    name = forms.CharField(
        max_length=100,
        widget=forms.TextInput(attrs={"placeholder": "on-call reviewers", "autocomplete": "off"}),
    )
    target = forms.CharField(
        max_length=1000,
        label="Addresses or URL",
        widget=forms.TextInput(
            attrs={
                "placeholder": "reviewers@example.com or https://…",
                "autocomplete": "off",
                "spellcheck": "false",
                "size": 48,
            }
        ),
    )
    events = forms.MultipleChoiceField(
        choices=list(service.EVENTS.items()),
        initial=["call.held"],
        widget=forms.CheckboxSelectMultiple,
        label="Tell it about",
    )


def _page(team: Team) -> HttpResponse:
    return redirect(reverse("approvals:notifications") + f"?team={team.slug}")


def _channel_for_admin(request: HttpRequest, channel_id: int) -> NotificationChannel:
    """The channel, 404 when there is none, 403 unless the user administers its team."""
    channel = get_object_or_404(NotificationChannel.objects.select_related("team"), pk=channel_id)
    access.require_admin(request.user, channel.team)
    return channel


def _secret_page(
    request: HttpRequest, channel: NotificationChannel, secret: str, *, rotated: bool
) -> HttpResponse:
    response = render(
        request,
        "approvals/notifications_secret.html",
        {"team": channel.team, "channel": channel, "secret": secret, "rotated": rotated},
    )
    response["Cache-Control"] = "no-store"  # the secret is on this page, and only here
    return response


@require_http_methods(["GET", "POST"])
@login_required
def notifications(request: HttpRequest) -> HttpResponse:
    """The team's channels, and the form that adds one."""
    team = _select_team(request)
    if team is None:
        return render(request, "approvals/no_team.html")
    access.require_admin(request.user, team)
    form = ChannelForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            channel, secret = service.channel_create(
                team=team,
                by=request.user,
                kind=form.cleaned_data["kind"],
                name=form.cleaned_data["name"],
                target=form.cleaned_data["target"],
                events=form.cleaned_data["events"],
            )
        except service.ChannelInvalid as exc:
            form.add_error(exc.field, str(exc))
        else:
            if secret:
                return _secret_page(request, channel, secret, rotated=False)
            messages.success(request, f"Channel “{channel.name}” added. Send it a test message to check it.")
            return _page(team)
    channels = [
        (channel, service.shown_target(channel))
        for channel in NotificationChannel.objects.filter(team=team).order_by("created_at", "pk")
    ]
    context = {
        "team": team,
        "form": form,
        "channels": channels,
        "events": service.EVENTS,
        "target_help": TARGET_HELP,
        "allow_private": service.private_targets_allowed(),
    }
    return render(request, "approvals/notifications.html", context)


@require_POST
@login_required
def notification_test(request: HttpRequest, channel_id: int) -> HttpResponse:
    """Send one test message through the channel now and say how it went."""
    channel = _channel_for_admin(request, channel_id)
    link = _public_url(request) + reverse("approvals:notifications") + f"?team={channel.team.slug}"
    outcome = service.channel_send_test(channel=channel, by=request.user, link=link)
    if outcome.ok:
        messages.success(request, f"Test message delivered to “{channel.name}”.")
    else:
        messages.error(request, f"The test message to “{channel.name}” failed: {outcome.error}")
    return _page(channel.team)


@require_POST
@login_required
def notification_rotate(request: HttpRequest, channel_id: int) -> HttpResponse:
    """A new signing secret for a signed webhook, shown once."""
    channel = _channel_for_admin(request, channel_id)
    try:
        secret = service.channel_rotate_secret(channel=channel, by=request.user)
    except service.ChannelInvalid as exc:
        messages.error(request, str(exc))
        return _page(channel.team)
    return _secret_page(request, channel, secret, rotated=True)


@require_POST
@login_required
def notification_enabled(request: HttpRequest, channel_id: int) -> HttpResponse:
    """Switch a channel on (``enabled=1``) or off (``enabled=0``)."""
    channel = _channel_for_admin(request, channel_id)
    enabled = request.POST.get("enabled") == "1"
    service.channel_set_enabled(channel=channel, by=request.user, enabled=enabled)
    messages.success(request, f"Channel “{channel.name}” {'on' if enabled else 'off'}.")
    return _page(channel.team)


@require_POST
@login_required
def notification_delete(request: HttpRequest, channel_id: int) -> HttpResponse:
    """Remove a channel."""
    channel = _channel_for_admin(request, channel_id)
    service.channel_delete(channel=channel, by=request.user)
    messages.success(request, f"Channel “{channel.name}” deleted.")
    return _page(channel.team)

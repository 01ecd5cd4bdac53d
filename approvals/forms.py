"""Forms for the team pages. Validation only; the work is done by services."""

from __future__ import annotations

from typing import Any

from django import forms

from approvals.models import Membership, Team
from approvals.services.networks import MAX_NETWORKS, NetworksInvalid, networks_parse
from approvals.services.tokens import TokenScopeInvalid, token_servers_parse

EXPIRY_CHOICES = [
    ("", "Never"),
    ("7", "In 7 days"),
    ("30", "In 30 days"),
    ("90", "In 90 days"),
    ("365", "In a year"),
]


class TokenIssueForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        help_text="What uses it, e.g. “laptop, Claude Desktop”.",
        widget=forms.TextInput(attrs={"placeholder": "laptop, Claude Desktop", "autocomplete": "off"}),
    )
    expires_in_days = forms.TypedChoiceField(
        choices=EXPIRY_CHOICES, coerce=int, empty_value=None, required=False, label="Expires"
    )
    servers = forms.CharField(
        max_length=2000,
        required=False,
        label="Servers",
        help_text="Only these servers (mcpbridge --name), separated by commas or spaces; * and ? are "
        "wildcards. Empty: any server.",
        widget=forms.TextInput(attrs={"placeholder": "any server", "autocomplete": "off"}),
    )

    networks = forms.CharField(
        max_length=4000,
        required=False,
        label="Networks",
        help_text="Only from these client address ranges (CIDR, e.g. 10.0.0.0/8 or 2001:db8::/32), separated "
        "by commas or spaces. Empty: the team's allowed networks.",
        widget=forms.TextInput(attrs={"placeholder": "the team's", "autocomplete": "off"}),
    )

    def clean_servers(self) -> list[str]:
        try:
            return token_servers_parse(self.cleaned_data.get("servers") or "")
        except TokenScopeInvalid as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_networks(self) -> list[str]:
        return _networks(self.cleaned_data.get("networks"))


def _networks(text: str | None) -> list[str]:
    """A typed list of networks, validated and normalised (``approvals.services.networks``)."""
    try:
        return networks_parse(text or "")
    except NetworksInvalid as exc:
        raise forms.ValidationError(str(exc)) from None


class TokenNetworksForm(forms.Form):
    """Change the networks an existing token may connect from."""

    networks = forms.CharField(
        max_length=4000,
        required=False,
        label="Networks",
        help_text="CIDR ranges separated by commas or spaces; empty: the team's allowed networks.",
        widget=forms.TextInput(attrs={"placeholder": "the team's", "autocomplete": "off"}),
    )

    def clean_networks(self) -> list[str]:
        return _networks(self.cleaned_data.get("networks"))


class MemberAddForm(forms.Form):
    email = forms.EmailField(help_text="Their login. A new account is created if they have none.")
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER)


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)


class TeamSettingsForm(forms.ModelForm):
    class Meta:
        model = Team
        fields = [
            "name",
            "mode",
            "default_deadline_seconds",
            "rules_admins_only",
            "four_eyes",
            "require_mfa",
            "alert_calls_per_token_hour",
            "alert_denials_per_10_minutes",
            "payload_retention_days",
            "result_instructions",
            "result_secrets",
            "result_personal_data",
            "require_reviewed_servers",
        ]
        labels = {
            "default_deadline_seconds": "Deadline for held calls (seconds)",
            "rules_admins_only": "Only admins create rules (Always-Allow included)",
            "four_eyes": "Four eyes: nobody approves a call made with their own token",
            "require_mfa": "Reviewers and admins must use two-factor authentication",
            "alert_calls_per_token_hour": "Alert when one token makes more calls in an hour than",
            "alert_denials_per_10_minutes": "Alert when more calls are denied within 10 minutes than",
            "payload_retention_days": "Clear call arguments and results after (days)",
            "result_instructions": "Instructions aimed at the model, hidden text",
            "result_secrets": "Secrets (API keys, tokens, private keys, passwords)",
            "result_personal_data": "Personal data (emails, phone and card numbers)",
            "require_reviewed_servers": "Only approved servers: bridges may front only servers whose "
            "security checklist an admin approved",
        }
        widgets = {"mode": forms.RadioSelect}

    allowed_networks_text = forms.CharField(
        max_length=8000,
        required=False,
        label="Allowed networks",
        help_text=f"One CIDR range per line (e.g. 10.0.0.0/8, 192.168.1.0/24, 2001:db8::/32), at most "
        f"{MAX_NETWORKS}. Bridges may connect only from these; empty: from anywhere. A token with networks "
        "of its own uses those instead.",
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "anywhere", "autocomplete": "off"}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Left out of a post (an older page, a script), a threshold keeps its value: None to the service.
        for name in ALERT_THRESHOLDS:
            field = self.fields[name]
            field.required = False
            field.widget.attrs.update(min=0, max=MAX_ALERT_THRESHOLD)
        # Likewise the retention: left out of a post, it keeps its value.
        self.fields["payload_retention_days"].required = False
        self.fields["payload_retention_days"].widget.attrs.update(min=0, max=MAX_RETENTION_DAYS)
        # And the result policy: a field left out keeps its action.
        for name in ("result_instructions", "result_secrets", "result_personal_data"):
            self.fields[name].required = False
        if self.instance.pk is not None:
            self.fields["allowed_networks_text"].initial = "\n".join(self.instance.allowed_networks or [])

    def clean_allowed_networks_text(self) -> list[str] | None:
        """The team's networks; None when the post left the field out (an older page): they stay."""
        if self.data is not None and "allowed_networks_text" not in self.data:
            return None
        return _networks(self.cleaned_data.get("allowed_networks_text"))

    def clean_default_deadline_seconds(self) -> int:
        seconds = int(self.cleaned_data["default_deadline_seconds"])
        if not 10 <= seconds <= 86400:
            raise forms.ValidationError("Between 10 seconds and a day (86400).")
        return seconds

    def clean_payload_retention_days(self) -> int | None:
        days = self.cleaned_data.get("payload_retention_days")
        if days is not None and not 0 <= days <= MAX_RETENTION_DAYS:
            raise forms.ValidationError(f"Between 0 (keep) and {MAX_RETENTION_DAYS:,} days.")
        return days

    def clean_alert_calls_per_token_hour(self) -> int | None:
        return _threshold(self.cleaned_data.get("alert_calls_per_token_hour"))

    def clean_alert_denials_per_10_minutes(self) -> int | None:
        return _threshold(self.cleaned_data.get("alert_denials_per_10_minutes"))


ALERT_THRESHOLDS = ("alert_calls_per_token_hour", "alert_denials_per_10_minutes")
MAX_ALERT_THRESHOLD = 1_000_000
MAX_RETENTION_DAYS = 36_500


def _threshold(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= MAX_ALERT_THRESHOLD:
        raise forms.ValidationError(f"Between 0 (off) and {MAX_ALERT_THRESHOLD:,}.")
    return value


INVITATION_VALIDITY_CHOICES = [
    ("1", "1 day"),
    ("3", "3 days"),
    ("7", "7 days"),
    ("14", "14 days"),
    ("30", "30 days"),
]


class InvitationForm(forms.Form):
    email = forms.EmailField(
        help_text="Where the link goes. It works once, for this address only.",
        widget=forms.EmailInput(attrs={"placeholder": "name@example.com", "autocomplete": "off"}),
    )
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER)
    valid_for_days = forms.TypedChoiceField(
        choices=INVITATION_VALIDITY_CHOICES, coerce=int, initial="7", label="Link expires in"
    )

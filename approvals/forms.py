"""Forms for the team pages. Validation only; the work is done by services."""

from __future__ import annotations

from django import forms

from approvals.models import Membership, Team

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


class MemberAddForm(forms.Form):
    email = forms.EmailField(help_text="Their login. A new account is created if they have none.")
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER)


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)


class TeamSettingsForm(forms.ModelForm):
    class Meta:
        model = Team
        fields = ["name", "mode", "default_deadline_seconds", "rules_admins_only", "four_eyes", "require_mfa"]
        labels = {
            "default_deadline_seconds": "Deadline for held calls (seconds)",
            "rules_admins_only": "Only admins create rules (Always-Allow included)",
            "four_eyes": "Four eyes: nobody approves a call made with their own token",
            "require_mfa": "Reviewers and admins must use two-factor authentication",
        }
        widgets = {"mode": forms.RadioSelect}

    def clean_default_deadline_seconds(self) -> int:
        seconds = int(self.cleaned_data["default_deadline_seconds"])
        if not 10 <= seconds <= 86400:
            raise forms.ValidationError("Between 10 seconds and a day (86400).")
        return seconds

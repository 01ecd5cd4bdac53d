"""Forms for the team pages. Validation only; the work is done by services."""

from __future__ import annotations

from django import forms

from approvals.models import Membership

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

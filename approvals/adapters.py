"""django-allauth hooks."""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from django.http import HttpRequest


class ClosedSignupAdapter(DefaultAccountAdapter):
    """Nobody signs up on their own: admins add people (invitations come with the people issue)."""

    def is_open_for_signup(self, request: HttpRequest) -> bool:
        return False

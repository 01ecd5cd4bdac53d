"""django-allauth hooks."""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.utils import user_email, user_username
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse


def _is_signup(request: HttpRequest) -> bool:
    match = getattr(request, "resolver_match", None)
    return match is not None and match.url_name == "account_signup"


class ClosedSignupAdapter(DefaultAccountAdapter):
    """Nobody signs up on their own: signup opens only for the holder of an open invitation, for the
    invited address only, and the new account joins the invitation's team as it signs in."""

    def is_open_for_signup(self, request: HttpRequest) -> bool:
        from approvals.invitation_views import session_invitation

        return session_invitation(request) is not None

    def clean_email(self, email: str) -> str:
        """On the signup page, only the invited address: the link proved that one, not another."""
        email = super().clean_email(email)
        request = self.request
        if request is not None and _is_signup(request):
            from approvals.invitation_views import session_invitation

            invitation = session_invitation(request)
            if invitation is None or email.strip().lower() != invitation.email.lower():
                raise ValidationError(
                    "Sign up with the address you were invited at"
                    + (f": {invitation.email}." if invitation else "."),
                    code="not_invited",
                )
        return email

    def populate_username(self, request: HttpRequest, user: AbstractBaseUser) -> None:
        """The username is the email address, as for accounts an admin or operator creates."""
        email = (user_email(user) or "").lower()
        username_field = get_user_model()._meta.get_field("username")
        if (
            email
            and not user_username(user)
            and len(email) <= (username_field.max_length or 150)
            and not get_user_model().objects.filter(username__iexact=email).exists()
        ):
            user_username(user, email)
        super().populate_username(request, user)

    def post_login(self, request: HttpRequest, user: AbstractBaseUser, **kwargs: Any) -> HttpResponse:
        """A signup through an invitation ends in the team: accept it before the redirect is followed."""
        if kwargs.get("signup"):
            from approvals.invitation_views import accept_session_invitation

            accept_session_invitation(request, user)  # type: ignore[arg-type]
        return super().post_login(request, user, **kwargs)

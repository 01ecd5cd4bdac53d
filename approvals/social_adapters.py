"""django-allauth hooks for single sign-on (OpenID Connect): SSO signs in people Signoff already knows.

Signup stays closed: an SSO login either belongs to an existing user (connected before, or matched now by an
email address the provider says it verified) or it is refused with a page that says whom to ask. The one
exception is the password login's: a browser holding an open invitation may sign up, and through SSO only
as the invited address, verified by the provider (the account adapter then joins the team).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from allauth.account.adapter import get_adapter as get_account_adapter
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django.contrib.auth import get_user_model
from django.http import HttpRequest
from django.shortcuts import render

if TYPE_CHECKING:
    from allauth.socialaccount.models import SocialLogin


def verified_emails(sociallogin: SocialLogin) -> list[str]:
    """The addresses of the provider account that the provider itself marked verified (``email_verified``)."""
    return [address.email for address in sociallogin.email_addresses if address.verified and address.email]


def existing_user_for(sociallogin: SocialLogin) -> Any | None:
    """The one active user whose email equals a provider-verified address of the login, or None.

    An unverified address matches nobody: anyone can type any address into their own identity provider
    profile, and matching on it would hand them that person's account.
    """
    user_model = get_user_model()
    for email in verified_emails(sociallogin):
        matches = list(user_model._default_manager.filter(email__iexact=email, is_active=True)[:2])
        if len(matches) == 1:
            return matches[0]
    return None


def invited_here(request: HttpRequest, sociallogin: SocialLogin) -> bool:
    """The browser holds an open invitation (from its link) for one of the login's verified addresses."""
    from approvals.invitation_views import session_invitation

    invitation = session_invitation(request)
    if invitation is None:
        return False
    return invitation.email.lower() in {email.lower() for email in verified_emails(sociallogin)}


class ExistingUsersSocialAccountAdapter(DefaultSocialAccountAdapter):
    """Connects an SSO login to the existing user with the same verified email; refuses unknown people."""

    def pre_social_login(self, request: HttpRequest, sociallogin: SocialLogin) -> None:
        """A provider account seen for the first time is connected to its existing user, if there is one.

        Connecting (rather than allauth's email authentication) keeps the user's password: they may still
        sign in either way. Later logins find the user through the connected account.
        """
        if sociallogin.is_existing:
            return
        user = existing_user_for(sociallogin)
        if user is not None:
            sociallogin.connect(request, user)

    def is_open_for_signup(self, request: HttpRequest, sociallogin: SocialLogin) -> bool:
        """Only for an invitation to the address the provider verified; else a page saying whom to ask."""
        if get_account_adapter(request).is_open_for_signup(request) and invited_here(request, sociallogin):
            return True
        response = render(
            request,
            "socialaccount/unknown_user.html",
            {"provider_name": sociallogin.provider.name, "emails": verified_emails(sociallogin)},
            status=403,
        )
        raise ImmediateHttpResponse(response)

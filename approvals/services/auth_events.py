"""Audit events of signing in and out and of two-factor authentication (kinds ``auth.*``).

They belong to no team: a login is the person's, whatever teams they are in. Each records where the request
came from (address, a shortened user agent) and never a secret: no password, no code, no TOTP secret, no
recovery code. Called by the signal receivers in ``approvals.signals``.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.http import HttpRequest

from approvals.models import AuditEvent
from approvals.services.audit import audit_record

USER_AGENT_MAX = 160
LOGIN_MAX = 254


def is_person_request(request: HttpRequest | None) -> bool:
    """Whether the request came over HTTP from someone's client.

    Django's test client (``force_login``, ``logout``) and code logging a user in or out without a request
    build a bare ``HttpRequest`` that has no method: nobody signed in or out, there is nothing to record.
    """
    return request is not None and request.method is not None


def client_of(request: HttpRequest | None) -> dict[str, str]:
    """Where the request came from: the peer's address and the start of its user agent.

    The peer is the one that connected (``REMOTE_ADDR``): a forwarded-for header is whatever the client
    wrote, unless a proxy we know set it, and no proxy is configured as trusted.
    """
    meta = request.META if request is not None else {}
    return {
        "ip": str(meta.get("REMOTE_ADDR") or ""),
        "user_agent": str(meta.get("HTTP_USER_AGENT") or "")[:USER_AGENT_MAX],
    }


def attempted_login(credentials: dict[str, Any]) -> str | None:
    """The email a failed login was tried with, when it is one.

    Anything else typed into the email field is left out: people paste their password there by mistake.
    """
    login = str(credentials.get("email") or credentials.get("username") or "").strip()[:LOGIN_MAX]
    try:
        validate_email(login)
    except ValidationError:
        return None
    return login


def auth_event_record(
    *, kind: str, request: HttpRequest | None, user_id: int | None, **data: Any
) -> AuditEvent:
    """Append an ``auth.*`` event for the user (the actor; None when unknown) with where it came from."""
    client = client_of(request)
    with transaction.atomic():
        return audit_record(
            kind=kind, team=None, actor_id=user_id, ip=client["ip"], user_agent=client["user_agent"], **data
        )


def login_methods(request: HttpRequest, user: Any) -> list[str]:
    """How the user proved who they are in this login, in order: ``password``, ``mfa:totp``,
    ``mfa:recovery_codes``, ``socialaccount:<provider>``… (allauth's record of the session; no secrets)."""
    from allauth.account.authentication import get_authentication_records

    methods = []
    for record in get_authentication_records(request, user):
        detail = record.get("type") or record.get("provider")
        methods.append(f"{record.get('method')}:{detail}" if detail else str(record.get("method")))
    return methods

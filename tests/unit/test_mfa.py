"""Two-factor authentication, teams that require it, sign-in audit events and single sign-on (issue 4).

- A team with ``require_mfa`` gives its admins and reviewers without an authenticator app a member's rights:
  pages they may no longer see send them to the two-factor page, writes are 403 with the reason, the review
  socket refuses them, and open review pages close when the app is turned off or the team starts requiring
  it. Members and auditors are not asked (see ``access.MFA_ROLES``). Every route is in the access matrix.
- Logins (password, two-factor, recovery code, SSO), failed logins, logouts and two-factor changes are
  ``auth.*`` audit events with the client's address and user agent, and no secret.
- SSO: the provider settings come from the environment; a tiny OpenID Connect provider in this module
  signs people in for real: existing people by provider-verified email, nobody else.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import TOTP, format_hotp_value, generate_totp_secret, hotp_value
from allauth.socialaccount.models import SocialAccount
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client
from django.urls import reverse

from approvals import access
from approvals.models import AuditEvent, Membership, Team, ToolCall
from approvals.services.teams import member_add, team_settings_change, user_get_or_create
from approvals.services.tokens import token_issue
from config.sso import oidc_providers_from_env

from .conftest import Issued, clear_cache
from .sockets import expect_close, receive, receive_until

PASSWORD = "correct horse battery staple"
LOGIN = reverse("account_login")
MFA_INDEX = reverse("mfa_index")
MFA_AUTHENTICATE = reverse("mfa_authenticate")
QUEUE = reverse("approvals:queue")
ORIGIN = (b"origin", b"http://127.0.0.1")
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36"


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    """TOTP codes are marked used, and login failures counted, in the cache: no test sees another's."""
    clear_cache()
    yield
    clear_cache()


# --- helpers --------------------------------------------------------------------------------------------
def totp_now(secret: str) -> str:
    """The current code of the secret (RFC 6238, as the user's app computes it), never one about to roll
    over: the server accepts only the current 30-second step."""
    if 30 - time.time() % 30 < 1.5:
        time.sleep(30 - time.time() % 30 + 0.1)
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30))


def activate_totp(user: Any) -> str:
    """Give the user an authenticator app and recovery codes, as activating it does; return the secret."""
    secret = generate_totp_secret()
    TOTP.activate(user, secret)
    RecoveryCodes.activate(user)
    return secret


def recovery_codes_of(user: Any) -> list[str]:
    authenticator = Authenticator.objects.get(user=user, type=Authenticator.Type.RECOVERY_CODES)
    return list(authenticator.wrap().get_unused_codes())


def require_mfa(team: Team, on: bool = True) -> None:
    Team.objects.filter(pk=team.pk).update(require_mfa=on)


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def password_login(user: Any, password: str = PASSWORD) -> tuple[Client, Any]:
    """A browser-like client through the real login form; returns it and the response."""
    client = Client(HTTP_USER_AGENT=BROWSER)
    response = client.post(LOGIN, {"login": user.email, "password": password})
    return client, response


def confirm_access(client: Client) -> None:
    """Enter the password again: changing two-factor settings asks for it (allauth's re-authentication)."""
    response = client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    assert response.status_code == 302, response.content.decode()


def events(kind_prefix: str = "auth.") -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(kind__startswith=kind_prefix).order_by("seq"))


def kinds(kind_prefix: str = "auth.") -> list[str]:
    return [event.kind for event in events(kind_prefix)]


@pytest.fixture
def auditor(team_a: Team) -> Any:
    user = user_get_or_create(email="audrey@example.com", password=PASSWORD)
    member_add(team=team_a, user=user, role="auditor")
    return user


@pytest.fixture
def people(admin: Any, reviewer: Any, member: Any, auditor: Any) -> dict[str, Any]:
    return {"admin": admin, "reviewer": reviewer, "member": member, "auditor": auditor}


# --- the settings builder for OpenID Connect ------------------------------------------------------------
OIDC_VARS = (
    "SIGNOFF_OIDC_PROVIDER_ID",
    "SIGNOFF_OIDC_NAME",
    "SIGNOFF_OIDC_SERVER_URL",
    "SIGNOFF_OIDC_CLIENT_ID",
    "SIGNOFF_OIDC_CLIENT_SECRET",
    "SIGNOFF_OIDC_CLIENT_SECRET_FILE",
)


@pytest.fixture
def oidc_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OIDC_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_no_oidc_environment_means_no_provider(oidc_env: pytest.MonkeyPatch) -> None:
    assert oidc_providers_from_env() == {}


def test_the_oidc_provider_is_built_from_the_environment(oidc_env: pytest.MonkeyPatch) -> None:
    oidc_env.setenv("SIGNOFF_OIDC_SERVER_URL", "https://id.example.com/realms/acme/")
    oidc_env.setenv("SIGNOFF_OIDC_CLIENT_ID", "signoff")
    oidc_env.setenv("SIGNOFF_OIDC_CLIENT_SECRET", "s3cret")
    oidc_env.setenv("SIGNOFF_OIDC_PROVIDER_ID", "acme")
    oidc_env.setenv("SIGNOFF_OIDC_NAME", "Acme SSO")
    assert oidc_providers_from_env() == {
        "openid_connect": {
            "OAUTH_PKCE_ENABLED": True,
            "APPS": [
                {
                    "provider_id": "acme",
                    "name": "Acme SSO",
                    "client_id": "signoff",
                    "secret": "s3cret",
                    "settings": {"server_url": "https://id.example.com/realms/acme"},
                }
            ],
        }
    }


def test_the_oidc_defaults_and_the_secret_from_a_file(oidc_env: pytest.MonkeyPatch, tmp_path: Any) -> None:
    secret_file = tmp_path / "oidc_secret"
    secret_file.write_text("from-a-file\n")
    oidc_env.setenv("SIGNOFF_OIDC_SERVER_URL", "https://id.example.com")
    oidc_env.setenv("SIGNOFF_OIDC_CLIENT_ID", "signoff")
    oidc_env.setenv("SIGNOFF_OIDC_CLIENT_SECRET_FILE", str(secret_file))
    [app] = oidc_providers_from_env()["openid_connect"]["APPS"]
    assert (app["provider_id"], app["name"], app["secret"]) == ("sso", "SSO", "from-a-file")


@pytest.mark.parametrize(
    ("variables", "error"),
    [
        (
            {"SIGNOFF_OIDC_SERVER_URL": "https://id.example.com"},
            "SIGNOFF_OIDC_CLIENT_ID, SIGNOFF_OIDC_CLIENT_SECRET",
        ),
        ({"SIGNOFF_OIDC_CLIENT_SECRET": "x"}, "set SIGNOFF_OIDC_SERVER_URL, SIGNOFF_OIDC_CLIENT_ID too"),
        (
            {
                "SIGNOFF_OIDC_SERVER_URL": "id.example.com",
                "SIGNOFF_OIDC_CLIENT_ID": "a",
                "SIGNOFF_OIDC_CLIENT_SECRET": "b",
            },
            "must be an http(s) address",
        ),
        (
            {
                "SIGNOFF_OIDC_SERVER_URL": "https://id.example.com",
                "SIGNOFF_OIDC_CLIENT_ID": "a",
                "SIGNOFF_OIDC_CLIENT_SECRET": "b",
                "SIGNOFF_OIDC_PROVIDER_ID": "../evil",
            },
            "SIGNOFF_OIDC_PROVIDER_ID must be",
        ),
    ],
)
def test_a_half_or_wrong_oidc_configuration_is_an_error(
    oidc_env: pytest.MonkeyPatch, variables: dict[str, str], error: str
) -> None:
    for name, value in variables.items():
        oidc_env.setenv(name, value)
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        oidc_providers_from_env()


# --- require_mfa: who may do what -----------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize("role", ["admin", "reviewer"])
def test_without_an_app_a_reviewer_or_admin_is_sent_to_set_it_up(
    people: dict[str, Any], team_a: Team, role: str
) -> None:
    require_mfa(team_a)
    client = client_for(people[role])
    response = client.get(QUEUE + "?team=alpha", follow=True)
    assert response.redirect_chain == [(MFA_INDEX, 302)]
    page = response.content.decode()
    assert "Alpha requires two-factor authentication of its reviewers and admins" in page  # the message
    assert 'id="mfa-required"' in page and reverse("mfa_activate_totp") in page
    # Landing after login (no ?team=) goes the same way.
    assert client.get(QUEUE)["Location"] == MFA_INDEX


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["admin", "reviewer"])
def test_a_refused_write_is_403_and_says_why(
    people: dict[str, Any], team_a: Team, member_token: Issued, submit: Callable, role: str
) -> None:
    require_mfa(team_a)
    call = submit(member_token.token).call
    response = client_for(people[role]).post(
        reverse("approvals:decide", args=[call.pk]), {"decision": "allow"}
    )
    assert response.status_code == 403
    page = response.content.decode()
    assert "Alpha requires two-factor authentication" in page
    assert f'href="{MFA_INDEX}"' in page
    assert ToolCall.objects.get(pk=call.pk).state == "pending"


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["admin", "reviewer"])
def test_with_an_app_the_role_is_back(people: dict[str, Any], team_a: Team, role: str) -> None:
    require_mfa(team_a)
    activate_totp(people[role])
    client = client_for(people[role])
    assert client.get(QUEUE + "?team=alpha").status_code == 200
    assert "requires two-factor" not in client.get(reverse("approvals:tokens")).content.decode()
    assert access.can_review(people[role], team_a)


@pytest.mark.django_db
def test_recovery_codes_alone_are_not_two_factor(reviewer: Any, team_a: Team) -> None:
    require_mfa(team_a)
    RecoveryCodes.activate(reviewer)
    assert not access.can_review(reviewer, team_a)


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["member", "auditor"])
def test_members_and_auditors_are_not_asked(people: dict[str, Any], team_a: Team, role: str) -> None:
    require_mfa(team_a)
    client = client_for(people[role])
    landing = {"member": reverse("approvals:tokens"), "auditor": reverse("approvals:rules")}[role]
    assert client.get(QUEUE)["Location"].startswith(landing)
    page = client.get(landing + "?team=alpha")
    assert page.status_code == 200
    assert "requires two-factor" not in page.content.decode()
    assert access.can_read_rules(people[role], team_a) is (role == "auditor")


@pytest.mark.django_db
def test_a_team_that_does_not_require_it_asks_nothing(admin: Any, team_a: Team) -> None:
    assert not team_a.require_mfa
    assert client_for(admin).get(reverse("approvals:members") + "?team=alpha").status_code == 200


@pytest.mark.django_db
def test_an_admin_without_an_app_keeps_a_members_rights(
    admin: Any, team_a: Team, member_token: Issued
) -> None:
    require_mfa(team_a)
    client = client_for(admin)
    own, _ = token_issue(team=team_a, user=admin, name="ada-laptop")
    page = client.get(reverse("approvals:tokens") + "?team=alpha").content.decode()
    assert own.prefix in page and member_token.token.prefix not in page  # only their own, like a member
    assert client.post(reverse("approvals:tokens"), {"name": "another"}).status_code == 200  # may issue
    assert client.post(reverse("approvals:token_revoke", args=[member_token.token.pk])).status_code == 403
    assert client.post(reverse("approvals:token_revoke", args=[own.pk])).status_code == 302  # their own
    assert not access.is_admin(admin, team_a)
    assert access.membership_for(admin, team_a).role == "admin"  # the role itself is unchanged


@pytest.mark.django_db
def test_only_the_missing_app_gives_the_mfa_refusal(reviewer: Any, team_a: Team) -> None:
    """A reviewer asking for an admin page is refused as before: two-factor would not change that."""
    require_mfa(team_a)
    with pytest.raises(access.MfaRequired):
        access.require_review(reviewer, team_a)
    with pytest.raises(access.PermissionDenied) as refused:
        access.require_admin(reviewer, team_a)
    assert not isinstance(refused.value, access.MfaRequired)


@pytest.mark.django_db
def test_the_banner_names_the_team_until_the_app_is_set_up(reviewer: Any, team_a: Team, team_b: Team) -> None:
    require_mfa(team_a)
    member_add(team=team_b, user=reviewer, role="member")  # bravo does not require it
    client = client_for(reviewer)
    page = client.get(reverse("approvals:tokens") + "?team=bravo").content.decode()
    assert 'class="banner banner-warn"' in page and "Alpha requires two-factor authentication" in page
    assert access.teams_needing_mfa_setup(reviewer) == [team_a]
    activate_totp(reviewer)
    assert "banner-warn" not in client.get(reverse("approvals:tokens") + "?team=bravo").content.decode()


@pytest.mark.django_db
def test_the_account_area_links_to_two_factor(member: Any) -> None:
    page = client_for(member).get(reverse("approvals:tokens")).content.decode()
    assert f'href="{MFA_INDEX}"' in page and ">Two-factor</a>" in page


@pytest.mark.django_db
def test_the_admin_site_logs_in_through_allauth(admin: Any) -> None:
    """Django admin's own login form would skip the second factor."""
    response = Client().get("/admin/login/?next=/admin/")
    assert response.status_code == 302 and response["Location"].startswith(LOGIN)


# --- the review socket --------------------------------------------------------------------------------------
@pytest.fixture
async def close_connections() -> AsyncIterator[None]:
    yield
    await database_sync_to_async(connections.close_all)()


@contextlib.asynccontextmanager
async def review_socket(cookie: bytes, team: str = "alpha") -> AsyncIterator[WebsocketCommunicator]:
    from config.asgi import application

    socket = WebsocketCommunicator(
        application, f"/ws/review/?team={team}", headers=[ORIGIN, (b"cookie", cookie)]
    )
    try:
        connected, _ = await socket.connect(timeout=3)
        assert connected
        yield socket
    finally:
        with contextlib.suppress(Exception):
            await socket.disconnect(timeout=3)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role", ["admin", "reviewer"])
async def test_the_review_socket_refuses_a_reviewer_without_an_app(
    people: dict[str, Any], team_a: Team, session_cookie: Callable, close_connections: None, role: str
) -> None:
    await database_sync_to_async(require_mfa)(team_a)
    cookie = await database_sync_to_async(session_cookie)(people[role])
    async with review_socket(cookie) as socket:
        assert (await receive(socket))["type"] == "error"
        await expect_close(socket, 4403)
    await database_sync_to_async(activate_totp)(people[role])
    async with review_socket(cookie) as socket:
        assert (await receive(socket))["type"] == "snapshot"


@pytest.mark.django_db(transaction=True)
async def test_turning_the_app_off_closes_the_review_page(
    reviewer: Any, team_a: Team, session_cookie: Callable, close_connections: None
) -> None:
    from allauth.mfa.base.internal.flows import delete_and_cleanup
    from django.test import RequestFactory

    def turn_off() -> None:
        request = RequestFactory().post("/accounts/2fa/totp/deactivate/")
        request.user = reviewer
        delete_and_cleanup(request, Authenticator.objects.get(user=reviewer, type=Authenticator.Type.TOTP))

    await database_sync_to_async(require_mfa)(team_a)
    await database_sync_to_async(activate_totp)(reviewer)
    cookie = await database_sync_to_async(session_cookie)(reviewer)
    async with review_socket(cookie) as socket:
        assert (await receive(socket))["type"] == "snapshot"
        await database_sync_to_async(turn_off)()
        closing = await receive_until(socket, "error")
        assert closing["message"] == "Access ended: two-factor authentication was turned off."
        await expect_close(socket, 4403)
    assert await database_sync_to_async(kinds)() == ["auth.mfa_deactivated", "auth.recovery_codes_removed"]


@pytest.mark.django_db(transaction=True)
async def test_requiring_it_closes_the_pages_of_reviewers_without_an_app(
    admin: Any, reviewer: Any, team_a: Team, session_cookie: Callable, close_connections: None
) -> None:
    await database_sync_to_async(activate_totp)(admin)
    admin_cookie = await database_sync_to_async(session_cookie)(admin)
    reviewer_cookie = await database_sync_to_async(session_cookie)(reviewer)
    async with review_socket(admin_cookie) as admins, review_socket(reviewer_cookie) as reviewers:
        assert (await receive(admins))["type"] == (await receive(reviewers))["type"] == "snapshot"
        await database_sync_to_async(team_settings_change)(
            team=team_a,
            by=admin,
            name=team_a.name,
            mode=team_a.mode,
            deadline=team_a.default_deadline_seconds,
            rules_admins_only=False,
            four_eyes=False,
            require_mfa=True,
        )
        closing = await receive_until(reviewers, "error")
        assert closing["message"] == "Access ended: the team now requires two-factor authentication."
        await expect_close(reviewers, 4403)
        assert await admins.receive_nothing(timeout=0.3)  # the admin has an app: their page stays


@pytest.mark.django_db(transaction=True)
async def test_a_page_open_before_the_requirement_can_no_longer_decide(
    reviewer: Any,
    team_a: Team,
    member_token: Issued,
    submit: Callable,
    session_cookie: Callable,
    close_connections: None,
) -> None:
    """Even when nothing told the page (a change made straight in the database), every decision asks again."""
    call = (await database_sync_to_async(submit)(member_token.token)).call
    cookie = await database_sync_to_async(session_cookie)(reviewer)
    async with review_socket(cookie) as socket:
        assert (await receive(socket))["type"] == "snapshot"
        await database_sync_to_async(require_mfa)(team_a)  # a queryset update: no signal
        await socket.send_json_to({"type": "decide", "call_id": str(call.pk), "decision": "allow"})
        refused = await receive_until(socket, "error")
        assert refused["call_id"] == str(call.pk)
    assert (await database_sync_to_async(ToolCall.objects.get)(pk=call.pk)).state == "pending"


# --- audit of logins and two-factor changes -------------------------------------------------------------
@pytest.mark.django_db
def test_a_password_login_and_logout_are_recorded(member: Any) -> None:
    client, response = password_login(member)
    assert response.status_code == 302
    client.post(reverse("account_logout"))
    login, logout = events()
    assert (login.kind, login.actor_id, login.team_id) == ("auth.login", member.pk, None)
    assert login.data["methods"] == ["password"]
    assert login.data["ip"] == "127.0.0.1"
    assert login.data["user_agent"] == BROWSER[:160]
    assert login.data["actor"]["email"] == member.email
    assert (logout.kind, logout.actor_id) == ("auth.logout", member.pk)


@pytest.mark.django_db
def test_a_failed_login_is_recorded_without_the_password(member: Any) -> None:
    _, response = password_login(member, password="not the password at all")
    assert response.status_code == 200  # the form again, with its error
    [failed] = events()
    assert (failed.kind, failed.actor_id) == ("auth.login_failed", None)
    assert failed.data["login"] == member.email
    assert "not the password" not in json.dumps(failed.data)


@pytest.mark.django_db
def test_a_password_typed_into_the_email_field_is_not_recorded(member: Any) -> None:
    Client().post(LOGIN, {"login": "hunter2-my-password", "password": "x"})
    assert all("hunter2" not in json.dumps(event.data) for event in AuditEvent.objects.all())


@pytest.mark.django_db
def test_test_client_logins_are_not_recorded(member: Any) -> None:
    client_for(member).logout()
    assert kinds() == []


@pytest.mark.django_db
def test_a_login_with_the_app_asks_for_the_code_and_records_both_steps(member: Any) -> None:
    secret = activate_totp(member)
    client, response = password_login(member)
    assert response["Location"] == MFA_AUTHENTICATE
    page = client.get(MFA_AUTHENTICATE).content.decode()
    assert "Enter your code" in page and 'autocomplete="one-time-code"' in page
    wrong = client.post(MFA_AUTHENTICATE, {"code": "000000" if totp_now(secret) != "000000" else "111111"})
    assert wrong.status_code == 200 and "Incorrect code" in wrong.content.decode()
    assert client.get(reverse("approvals:tokens")).status_code == 302  # not signed in yet
    response = client.post(MFA_AUTHENTICATE, {"code": totp_now(secret)})
    assert response.status_code == 302 and response["Location"] == QUEUE
    failed, login = events()
    assert (failed.kind, failed.actor_id, failed.data["reauthentication"]) == (
        "auth.mfa_failed",
        member.pk,
        False,
    )
    assert (login.kind, login.data["methods"]) == ("auth.login", ["password", "mfa:totp"])


@pytest.mark.django_db
def test_a_recovery_code_works_once_and_is_recorded(member: Any) -> None:
    activate_totp(member)
    code = recovery_codes_of(member)[0]
    client, _ = password_login(member)
    assert client.post(MFA_AUTHENTICATE, {"code": code})["Location"] == QUEUE
    assert kinds() == ["auth.recovery_code_used", "auth.login"]
    used, login = events()
    assert (used.actor_id, used.data["codes_left"]) == (member.pk, 9)
    assert login.data["methods"] == ["password", "mfa:recovery_codes"]
    assert code not in json.dumps([event.data for event in events()])
    client.post(reverse("account_logout"))
    again, _ = password_login(member)
    spent = again.post(MFA_AUTHENTICATE, {"code": code})
    assert spent.status_code == 200 and "Incorrect code" in spent.content.decode()


@pytest.mark.django_db(transaction=True)  # allauth signals activation and new codes on commit
def test_activating_regenerating_and_deactivating_are_recorded_without_secrets(member: Any) -> None:
    client, _ = password_login(member)
    response = client.get(reverse("mfa_activate_totp"))
    assert response["Location"].startswith(reverse("account_reauthenticate"))  # password again, first
    confirm_access(client)
    page = client.get(reverse("mfa_activate_totp"))
    assert page.status_code == 200
    text = page.content.decode()
    assert 'src="data:image/svg+xml;base64,' in text  # the QR code
    secret = page.context["form"].secret
    assert f'value="{secret}"' in text
    response = client.post(reverse("mfa_activate_totp"), {"code": totp_now(secret)})
    assert response["Location"] == reverse("mfa_view_recovery_codes")
    codes_page = client.get(reverse("mfa_view_recovery_codes")).content.decode()
    first_codes = recovery_codes_of(member)
    assert all(code in codes_page for code in first_codes)
    download = client.get(reverse("mfa_download_recovery_codes"))
    assert download.content.decode().split() == first_codes
    assert client.post(reverse("mfa_generate_recovery_codes"))["Location"] == reverse(
        "mfa_view_recovery_codes"
    )
    assert client.post(reverse("mfa_deactivate_totp"))["Location"] == MFA_INDEX
    assert kinds()[1:] == [  # after the login
        "auth.mfa_activated",
        "auth.recovery_codes_generated",
        "auth.recovery_codes_generated",
        "auth.mfa_deactivated",
        "auth.recovery_codes_removed",
    ]
    recorded = json.dumps([event.data for event in events()])
    assert secret not in recorded
    assert not any(code in recorded for code in first_codes)
    assert events()[3].data["replaced_earlier"] is True


@pytest.mark.django_db
def test_the_two_factor_pages_fit_the_layout(member: Any) -> None:
    client, _ = password_login(member)
    index = client.get(MFA_INDEX).content.decode()
    assert 'class="topbar"' in index and "signoff/app.css" in index
    assert "Activate an authenticator app" in index and "<script>" not in index
    confirm_access(client)
    activate = client.get(reverse("mfa_activate_totp")).content.decode()
    assert 'class="mfa-steps"' in activate and "<script>" not in activate


# --- single sign-on with a tiny OpenID Connect provider -----------------------------------------------------
@dataclass
class Identity:
    sub: str
    email: str
    email_verified: bool = True


@dataclass
class TinyOidcProvider:
    """Discovery, authorization (answers at once for ``identity``), token, userinfo and keys endpoints."""

    url: str
    client_id: str
    secret: str
    identity: Identity | None = None
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    key: Any = field(default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "userinfo_endpoint": f"{self.url}/userinfo",
            "jwks_uri": f"{self.url}/jwks",
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def claims(self) -> dict[str, Any]:
        assert self.identity is not None
        return {
            "sub": self.identity.sub,
            "email": self.identity.email,
            "email_verified": self.identity.email_verified,
        }

    def id_token(self, nonce: str | None) -> str:
        now = int(time.time())
        claims = {**self.claims(), "iss": self.url, "aud": self.client_id, "iat": now, "exp": now + 300}
        if nonce:
            claims["nonce"] = nonce
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}


def _handler(provider: TinyOidcProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, body: dict[str, Any], status: int = 200) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            params = {k: v[0] for k, v in parse_qs(query).items()}
            if path == "/.well-known/openid-configuration":
                self._json(provider.discovery())
            elif path == "/jwks":
                self._json(provider.jwks())
            elif path == "/authorize":
                assert params["client_id"] == provider.client_id and params["response_type"] == "code"
                code = secrets.token_urlsafe(16)
                provider.codes[code] = params
                self.send_response(302)
                location = f"{params['redirect_uri']}?{urlencode({'code': code, 'state': params['state']})}"
                self.send_header("Location", location)
                self.end_headers()
            elif path == "/userinfo":
                ok = self.headers.get("Authorization") == "Bearer access-token"
                self._json(provider.claims() if ok else {"error": "invalid_token"}, 200 if ok else 401)
            else:
                self._json({"error": "not found"}, 404)

        def do_POST(self) -> None:
            form = {
                k: v[0]
                for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()).items()
            }
            asked = provider.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            challenge = (
                base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            )
            if (
                self.path != "/token"
                or asked is None
                or (form.get("client_id"), form.get("client_secret")) != (provider.client_id, provider.secret)
                or asked.get("code_challenge") != challenge  # PKCE is on
            ):
                self._json({"error": "invalid_grant"}, 400)
                return
            self._json(
                {
                    "access_token": "access-token",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": provider.id_token(asked.get("nonce")),
                }
            )

    return Handler


@pytest.fixture
def oidc_provider(settings: Any) -> Iterator[TinyOidcProvider]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    provider = TinyOidcProvider(
        url=f"http://127.0.0.1:{server.server_port}", client_id="signoff", secret="s3cret"
    )
    server.RequestHandlerClass = _handler(provider)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.SOCIALACCOUNT_PROVIDERS = {
        "openid_connect": {
            "OAUTH_PKCE_ENABLED": True,
            "APPS": [
                {
                    "provider_id": "acme",
                    "name": "Acme ID",
                    "client_id": provider.client_id,
                    "secret": provider.secret,
                    "settings": {"server_url": provider.url},
                }
            ],
        }
    }
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()


SSO_LOGIN = "/accounts/oidc/acme/login/"


def sso_login(client: Client, provider: TinyOidcProvider) -> Any:
    """Click "Sign in with Acme ID", let the provider answer, and come back to Signoff's callback."""
    to_provider = client.post(SSO_LOGIN + "?process=login")
    assert to_provider.status_code == 302
    authorize = urlsplit(to_provider["Location"])
    assert f"{authorize.scheme}://{authorize.netloc}{authorize.path}" == f"{provider.url}/authorize"

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(to_provider["Location"], timeout=5)
        raise AssertionError("the provider should redirect back")
    except urllib.error.HTTPError as back:
        callback = urlsplit(back.headers["Location"])
    assert callback.path == "/accounts/oidc/acme/login/callback/"
    return client.get(f"{callback.path}?{callback.query}")


@pytest.mark.django_db
def test_without_sso_the_login_page_has_no_button(settings: Any) -> None:
    settings.SOCIALACCOUNT_PROVIDERS = {}
    page = Client().get(LOGIN).content.decode()
    assert "Sign in with" not in page
    assert Client().post(SSO_LOGIN).status_code == 404


@pytest.mark.django_db
def test_the_login_page_shows_the_button_and_it_leads_to_the_provider(
    oidc_provider: TinyOidcProvider,
) -> None:
    page = Client().get(LOGIN).content.decode()
    assert "Sign in with Acme ID" in page
    assert f'action="{SSO_LOGIN}?process=login"' in page
    response = Client().post(SSO_LOGIN + "?process=login")
    location = urlsplit(response["Location"])
    params = parse_qs(location.query)
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{oidc_provider.url}/authorize"
    assert params["client_id"] == ["signoff"] and params["code_challenge_method"] == ["S256"]
    assert params["redirect_uri"] == ["http://testserver/accounts/oidc/acme/login/callback/"]
    assert set(params["scope"][0].split()) == {"openid", "profile", "email"}


@pytest.mark.django_db
def test_sso_signs_in_an_existing_user_by_verified_email(
    member: Any, oidc_provider: TinyOidcProvider
) -> None:
    oidc_provider.identity = Identity(sub="u-123", email="MAX@example.com")
    client = Client()
    response = sso_login(client, oidc_provider)
    assert response.status_code == 302 and response["Location"] == QUEUE
    assert client.get(reverse("approvals:tokens")).context["user"] == member
    assert SocialAccount.objects.get(provider="acme", uid="u-123").user == member
    assert events()[-1].data["methods"] == ["socialaccount:acme"]
    assert member.has_usable_password() and get_user_model().objects.get(pk=member.pk).has_usable_password()
    # The next time, the connected account is found by its subject, whatever the email says now.
    client.post(reverse("account_logout"))
    oidc_provider.identity = Identity(sub="u-123", email="max.renamed@example.com")
    assert sso_login(client, oidc_provider)["Location"] == QUEUE


@pytest.mark.django_db
def test_sso_still_asks_for_the_second_factor(member: Any, oidc_provider: TinyOidcProvider) -> None:
    secret = activate_totp(member)
    oidc_provider.identity = Identity(sub="u-123", email=member.email)
    client = Client()
    assert sso_login(client, oidc_provider)["Location"] == MFA_AUTHENTICATE
    assert client.post(MFA_AUTHENTICATE, {"code": totp_now(secret)})["Location"] == QUEUE


@pytest.mark.django_db
@pytest.mark.parametrize(
    "identity",
    [
        Identity(sub="u-404", email="stranger@example.com"),  # nobody has this email
        Identity(sub="u-405", email="max@example.com", email_verified=False),  # not verified by the provider
    ],
    ids=["unknown", "unverified"],
)
def test_sso_refuses_people_signoff_does_not_know(
    member: Any, oidc_provider: TinyOidcProvider, identity: Identity
) -> None:
    users = get_user_model().objects.count()
    oidc_provider.identity = identity
    client = Client()
    response = sso_login(client, oidc_provider)
    assert response.status_code == 403
    assert "No Signoff account for you yet" in response.content.decode()
    assert get_user_model().objects.count() == users
    assert not SocialAccount.objects.exists()
    assert client.get(reverse("approvals:tokens")).status_code == 302  # not signed in


@pytest.mark.django_db
@pytest.mark.parametrize("email", ["newcomer@example.com", "someone.else@example.com"])
def test_an_invitation_lets_only_its_address_sign_up_through_sso(
    admin: Any, team_a: Team, oidc_provider: TinyOidcProvider, email: str
) -> None:
    from approvals.services.invitations import invitation_create

    _, secret = invitation_create(team=team_a, email="newcomer@example.com", role="reviewer", by=admin)
    client = Client()
    assert client.get(reverse("approvals:invitation_accept", kwargs={"secret": secret})).status_code == 200
    oidc_provider.identity = Identity(sub="u-new", email=email)
    response = sso_login(client, oidc_provider)
    created = get_user_model().objects.filter(email=email).first()
    if email == "newcomer@example.com":
        assert response.status_code == 302
        assert created is not None
        assert Membership.objects.get(team=team_a, user=created).role == "reviewer"
    else:
        assert response.status_code == 403 and created is None

"""Hardening (issue 6, point 4; docs/security.md): the deploy check, the Content-Security-Policy and pages
that need no inline script or style, the reviewer socket's Origin check, and both sockets' limits."""

# The world and socket fixtures are imported from their modules; as test parameters they "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib import admin as django_admin
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from approvals import security
from approvals.models import ToolCall
from mcpbridge import protocol

from .sockets import expect_close, receive
from .test_access_matrix import MATRIX, ROLES, World, url_for, world  # noqa: F401 - world is a fixture
from .test_consumers import call, open_bridge, open_review, open_socket, reviewer_cookie  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


# --- settings: the deploy check ------------------------------------------------------------------------
def _manage(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SIGNOFF_", "DJANGO_"))}
    clean = {k: v for k, v in clean.items() if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY"}}
    clean.update(SIGNOFF_STATE_DIR=str(tmp_path), **env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], env=clean, cwd=ROOT, capture_output=True, text=True
    )


PRODUCTION = {
    "SECRET_KEY": "k8Vq2-production-secret-that-is-long-and-random-enough-4f9Xz7LmQ0wR3tY6uP1aS5dF8gH",
    "SIGNOFF_PUBLIC_URL": "https://signoff.example.com",
    "ALLOWED_HOSTS": "signoff.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://signoff.example.com",
    "SIGNOFF_TRUST_PROXY_TLS_HEADER": "true",
    "SIGNOFF_DEBUG": "false",
}


def test_the_deploy_check_passes_with_production_settings(tmp_path: Path) -> None:
    result = _manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNINGS" not in result.stdout + result.stderr


_PROBE = (
    "from django.conf import settings as s; import json; print(json.dumps([s.DEBUG, s.SECURE_HSTS_SECONDS, "
    "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT, s.SECURE_PROXY_SSL_HEADER]))"
)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, [False, 0, False, False, False, None]),  # the embedded default, on http://127.0.0.1:8000
        (PRODUCTION, [False, 31536000, True, True, True, ["HTTP_X_FORWARDED_PROTO", "https"]]),
        # https without a trusted proxy header: no redirect (it would loop), the rest as in production
        ({"SIGNOFF_PUBLIC_URL": "https://s.example"}, [False, 31536000, True, True, False, None]),
        (
            {**PRODUCTION, "SIGNOFF_HSTS_SECONDS": "60", "SIGNOFF_SSL_REDIRECT": "false"},
            [False, 60, True, True, False, ["HTTP_X_FORWARDED_PROTO", "https"]],
        ),
        (
            {"SIGNOFF_TRUST_PROXY_TLS_HEADER": "true"},
            [False, 0, False, False, False, ["HTTP_X_FORWARDED_PROTO", "https"]],
        ),
    ],
    ids=["embedded", "production", "https-no-proxy", "overrides", "http-behind-proxy"],
)
def test_the_security_settings_follow_the_environment(
    tmp_path: Path, env: dict[str, str], expected: list
) -> None:
    import json

    result = _manage(tmp_path, "shell", "-c", _PROBE, **env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


@pytest.mark.django_db
def test_every_response_has_the_security_headers(client: Client) -> None:
    response = client.get(reverse("account_login"))
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    policy = response[security.CSP_HEADER]
    assert "script-src 'self';" in policy and "style-src 'self';" in policy
    assert "frame-ancestors 'none'" in policy and "object-src 'none'" in policy
    assert "connect-src 'self' ws://testserver wss://testserver;" in policy


# --- the policy -----------------------------------------------------------------------------------------
def test_the_policy_allows_own_scripts_data_images_and_the_page_socket_only() -> None:
    policy = security.content_security_policy(
        connect=security.socket_origins_for("s.example"), form_action=[]
    )
    assert policy == (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self' ws://s.example wss://s.example; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'; object-src 'none'"
    )
    assert "unsafe" not in policy


@pytest.mark.django_db
def test_the_public_address_and_the_sso_issuer_are_allowed(client: Client, settings: Any) -> None:
    settings.SIGNOFF_PUBLIC_URL, settings.SIGNOFF_PUBLIC_URL_SET = "https://signoff.example.com", True
    settings.SOCIALACCOUNT_PROVIDERS = {
        "openid_connect": {
            "APPS": [
                {
                    "provider_id": "sso",
                    "name": "SSO",
                    "client_id": "signoff",
                    "secret": "s",
                    "settings": {"server_url": "https://id.example.com/realms/acme"},
                }
            ]
        }
    }
    policy = client.get(reverse("account_login"))[security.CSP_HEADER]
    assert "wss://signoff.example.com" in policy
    assert "form-action 'self' https://id.example.com;" in policy


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://Signoff.example.com/x", "https://signoff.example.com"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("https://[::1]:8443/", "https://[::1]:8443"),
        ("javascript:alert(1)", ""),
        ("", ""),
    ],
)
def test_origin_of(url: str, origin: str) -> None:
    assert security.origin_of(url) == origin


# --- every page renders without inline script or style ------------------------------------------------
INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.I)
EVENT_HANDLER = re.compile(r"<[^>]*\son[a-z]+\s*=", re.I)
STYLE = re.compile(r"<[^>]*\sstyle\s*=|<style\b", re.I)


def assert_csp_ready(response: Any, where: str) -> None:
    assert security.CSP_HEADER in response, where
    html = response.content.decode()
    for name, pattern in (
        ("inline script", INLINE_SCRIPT),
        ("event handler", EVENT_HANDLER),
        ("style", STYLE),
    ):
        found = pattern.search(html)
        assert found is None, f"{where}: {name} {html[found.start() : found.start() + 120]!r}"


def confirm_access(client: Client) -> None:
    """Enter the password again, as allauth asks before two-factor settings change."""
    response = client.post(reverse("account_reauthenticate"), {"password": "correct horse battery staple"})
    assert response.status_code == 302


def _plain_paths(patterns: list[Any], prefix: str = "") -> list[str]:
    """The addresses of the routes without parameters, under ``prefix``."""
    paths = []
    for pattern in patterns:
        route = str(pattern.pattern)
        if "<" in route or "(" in route or "^" in route:
            continue
        if isinstance(pattern, URLResolver):
            paths += _plain_paths(pattern.url_patterns, prefix + route)
        elif isinstance(pattern, URLPattern):
            paths.append("/" + prefix + route)
    return paths


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["admin", "anonymous"])
def test_every_page_is_csp_ready(world: World, role: str) -> None:
    client = Client()
    if role == "admin":
        superuser = world.users["admin"]
        get_user_model().objects.filter(pk=superuser.pk).update(is_staff=True, is_superuser=True)
        client.force_login(superuser)
        confirm_access(client)  # else the two-factor pages redirect to the password prompt
    index = ROLES.index(role)
    pages = [url_for(name, world) for name, (get, _) in MATRIX.items() if get.split()[index] == "200"]
    allauth = next(p for p in get_resolver().url_patterns if str(p.pattern) == "accounts/")
    pages += _plain_paths(allauth.url_patterns, "accounts/")
    if role == "admin":
        pages.append(reverse("admin:index"))
        for model in django_admin.site._registry:
            meta = model._meta
            pages += [
                reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"),
                reverse(f"admin:{meta.app_label}_{meta.model_name}_add"),
            ]
        pages.append(reverse("admin:auth_user_change", args=[superuser.pk]))
        pages.append(reverse("admin:auth_user_password_change", args=[superuser.pk]))
    pages += ["/no-such-page/"]
    rendered = 0
    for page in pages:
        response = client.get(page)
        if response.status_code in (301, 302):
            continue
        if response.get("Content-Type", "").startswith("text/html"):
            assert_csp_ready(response, f"{role} GET {page}")
            rendered += 1
    assert rendered >= (40 if role == "admin" else 5), rendered


@pytest.mark.django_db
def test_the_two_factor_qr_code_is_a_data_image_the_policy_allows(admin: Any) -> None:
    client = Client()
    client.force_login(admin)
    confirm_access(client)
    response = client.get(reverse("mfa_activate_totp"))
    assert response.status_code == 200
    assert 'src="data:image/' in response.content.decode()
    assert "img-src 'self' data:;" in response[security.CSP_HEADER]
    assert_csp_ready(response, "totp activation")


def test_no_template_or_script_carries_inline_code() -> None:
    """Also the templates no test renders (e-mail bodies are text, not pages)."""
    for path in sorted((ROOT / "templates").rglob("*.html")):
        text = path.read_text()
        for pattern in (INLINE_SCRIPT, EVENT_HANDLER, STYLE):
            assert pattern.search(text) is None, f"{path.relative_to(ROOT)}: {pattern.pattern}"
    for path in sorted((ROOT / "static" / "signoff").glob("*.js")):
        # innerHTML with a style attribute, or a style attribute set as text, needs 'unsafe-inline'.
        text = path.read_text()
        assert not re.search(r"style\s*=\s*[\"']|setAttribute\(\s*[\"']style|cssText", text), path.name


# --- the reviewer socket's Origin --------------------------------------------------------------------
pytest_async = pytest.mark.django_db(transaction=True)


async def _review_with(open_socket: Any, cookie: bytes, origin: bytes | None, *, accepted: bool) -> Any:
    headers = [(b"cookie", cookie)] + ([(b"origin", origin)] if origin is not None else [])
    return await open_socket("/ws/review/?team=alpha", headers, accepted=accepted)


@pytest_async
@pytest.mark.parametrize(
    "origin",
    [b"https://evil.example", b"http://127.0.0.1.evil.example", b"null", b"", None],
    ids=["foreign", "lookalike", "null", "empty", "missing"],
)
async def test_a_review_socket_from_elsewhere_is_refused(
    open_socket: Any,
    reviewer_cookie: bytes,
    origin: bytes | None,
) -> None:
    await _review_with(open_socket, reviewer_cookie, origin, accepted=False)


@pytest_async
@pytest.mark.parametrize("origin", [b"http://127.0.0.1:8000", b"http://localhost:8000", b"https://127.0.0.1"])
async def test_a_review_socket_from_the_public_origin_or_an_allowed_host_is_accepted(
    open_socket: Any,
    reviewer_cookie: bytes,
    origin: bytes,
) -> None:
    review = await _review_with(open_socket, reviewer_cookie, origin, accepted=True)
    assert (await receive(review))["type"] == "snapshot"


@pytest_async
async def test_allowed_hosts_star_does_not_open_the_review_socket_to_every_origin(
    open_socket: Any,
    reviewer_cookie: bytes,
    settings: Any,
) -> None:
    settings.ALLOWED_HOSTS = ["*"]
    settings.SIGNOFF_PUBLIC_URL = "https://signoff.example.com"
    await _review_with(open_socket, reviewer_cookie, b"https://evil.example", accepted=False)
    await _review_with(open_socket, reviewer_cookie, None, accepted=False)
    await _review_with(open_socket, reviewer_cookie, b"http://signoff.example.com", accepted=False)  # scheme
    review = await _review_with(open_socket, reviewer_cookie, b"https://signoff.example.com", accepted=True)
    assert (await receive(review))["type"] == "snapshot"


@pytest_async
async def test_the_bridge_socket_needs_no_origin_and_ignores_a_foreign_one(
    open_socket: Any, member_token
) -> None:
    for headers in ([], [(b"origin", b"https://evil.example")]):
        socket = await open_socket(
            "/ws/bridge/", [(b"authorization", f"Bearer {member_token.raw}".encode()), *headers]
        )
        await socket.send_to(text_data=call(ref="o1"))
        assert (await receive(socket))["code"] == "hello_required"  # served, not refused


# --- the sockets' limits -----------------------------------------------------------------------------
count_calls = database_sync_to_async(ToolCall.objects.count)


@pytest_async
async def test_an_oversized_bridge_frame_denies_its_call_and_keeps_the_socket(
    open_bridge: Any,
    member_token: Any,
    settings: Any,
) -> None:
    settings.SIGNOFF_WS_BRIDGE_MAX_FRAME_BYTES = 4096
    socket = await open_bridge(member_token.raw)
    for blob in ("x" * 5000, "é" * 3000):  # the second is 3000 characters but 6000 bytes
        await socket.send_to(text_data=call(ref="big", blob=blob))
        error = await receive(socket)
        assert (error["type"], error["code"], error["ref"]) == ("error", "frame_too_large", "big")
    await socket.send_to(text_data=call(ref="small"))
    assert (await receive(socket))["ref"] == "small"
    assert await count_calls() == 1


@pytest_async
async def test_a_flooding_bridge_is_rate_limited_then_closed(
    open_bridge: Any,
    member_token: Any,
    settings: Any,
) -> None:
    settings.SIGNOFF_WS_BRIDGE_RATE, settings.SIGNOFF_WS_BRIDGE_BURST = 0.001, 5
    socket = await open_bridge(member_token.raw)  # the hello took one token
    for _ in range(4):
        await socket.send_to(text_data=protocol.encode(protocol.Status(call_ids=[])))  # answered by nothing
    for n in range(5):
        await socket.send_to(text_data=call(ref=f"flood{n}"))
        error = await receive(socket)
        assert (error["code"], error["ref"]) == ("rate_limited", f"flood{n}")
    await expect_close(socket, security.CLOSE_TOO_MANY_MESSAGES)
    assert await count_calls() == 0  # every refused call was denied by the bridge, none is held


@pytest_async
async def test_an_oversized_review_frame_is_refused_and_closes_the_socket(
    open_review: Any,
    reviewer_cookie: bytes,
) -> None:
    review = await open_review(reviewer_cookie)
    await receive(review)  # snapshot
    await review.send_to(text_data="x" * 20_000)
    error = await receive(review)
    assert (error["type"], error["code"]) == ("error", "frame_too_large")
    await expect_close(review, security.CLOSE_FRAME_TOO_LARGE)


@pytest_async
async def test_a_flooding_review_socket_is_rate_limited_then_closed(
    open_review: Any,
    reviewer_cookie: bytes,
    settings: Any,
) -> None:
    settings.SIGNOFF_WS_REVIEW_RATE, settings.SIGNOFF_WS_REVIEW_BURST = 0.001, 3
    review = await open_review(reviewer_cookie)
    await receive(review)  # snapshot
    for _ in range(3):
        await review.send_json_to({"type": "ping"})
        assert (await receive(review))["message"] == "unknown message type"
    for _ in range(3):
        await review.send_json_to({"type": "ping"})
        assert (await receive(review))["code"] == "rate_limited"
    await expect_close(review, security.CLOSE_TOO_MANY_MESSAGES)


# --- the token bucket and the gate, without sockets ----------------------------------------------------
def test_a_bucket_starts_full_and_refuses_past_its_burst() -> None:
    bucket = security.TokenBucket(rate=10, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]


def test_a_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = security.TokenBucket(rate=10, burst=3)
    for _ in range(3):
        bucket.take(0.0)
    assert bucket.take(0.05) is False  # half a token
    assert bucket.take(0.1) is True
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at the burst


def test_a_clock_going_back_gives_no_tokens() -> None:
    bucket = security.TokenBucket(rate=1, burst=1)
    assert bucket.take(10.0) is True
    assert bucket.take(5.0) is False
    assert bucket.take(10.5) is False  # still measured from 10.0
    assert bucket.take(11.0) is True


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0)])
def test_a_bucket_needs_a_positive_rate_and_burst(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        security.TokenBucket(rate=rate, burst=burst)


def test_the_gate_closes_only_after_a_burst_of_refusals_in_a_row() -> None:
    now = [0.0]
    gate = security.FrameGate(
        security.SocketLimits(max_frame_bytes=10, rate=1, burst=2),
        close_oversized=False,
        clock=lambda: now[0],
    )
    assert gate.check("a") is None and gate.check("b") is None
    first = gate.check("c")
    assert first is not None and (first.code, first.close) == ("rate_limited", False)
    now[0] = 1.0  # one token back: the streak of refusals ends
    assert gate.check("d") is None
    assert gate.check("e") is not None and not gate.closed
    last = gate.check("f")
    assert last is not None and last.close and gate.closed


@pytest.mark.parametrize("close_oversized", [True, False])
def test_the_gate_measures_frames_in_utf8_bytes(close_oversized: bool) -> None:
    gate = security.FrameGate(
        security.SocketLimits(max_frame_bytes=8, rate=100, burst=100), close_oversized=close_oversized
    )
    assert gate.check("12345678") is None and gate.check(b"12345678") is None and gate.check("éééé") is None
    refusal = gate.check("ééééé")  # 5 characters, 10 bytes
    assert refusal is not None and (refusal.code, refusal.close) == ("frame_too_large", close_oversized)


@pytest.mark.parametrize(
    ("frame", "ref"),
    [
        (call(ref="r42"), "r42"),
        (call(ref="r42").encode(), "r42"),
        ('{"type": "claim", "call_id": "x", "ref" : "c1"}', "c1"),
        ('{"type": "call", "arguments": {"a": "' + "x" * 5000 + '"}, "ref": "late"}', None),
        ("not json at all", None),
    ],
)
def test_the_ref_of_a_refused_frame(frame: str | bytes, ref: str | None) -> None:
    assert security.ref_of_refused(frame) == ref

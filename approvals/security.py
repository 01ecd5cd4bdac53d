"""Hardening (docs/security.md): the Content-Security-Policy header, the reviewer socket's Origin check and
the per-connection limits of both websockets.

Everything here is a plain function or a small class without Django state, except the middleware and the
validator, which read the settings on every use (tests change them; a process never does).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from channels.security.websocket import OriginValidator
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse

# --- Content-Security-Policy ---------------------------------------------------------------------------
CSP_HEADER = "Content-Security-Policy"


def origin_of(url: str) -> str:
    """``https://Host:8443/path`` → ``https://host:8443``; empty for anything that is not http(s)/ws(s)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in {"http", "https", "ws", "wss"} or not parts.hostname:
        return ""
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"  # IPv6 literal
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def socket_origins_for(host: str) -> list[str]:
    """The websocket origins a page served from ``host`` (``name[:port]``) connects to.

    Both schemes: an https page served through a proxy that Django does not know about still opens
    ``wss:``, and a cleartext ``ws:`` from an https page is blocked as mixed content anyway.
    """
    return [f"ws://{host}", f"wss://{host}"] if host else []


def content_security_policy(*, connect: list[str], form_action: list[str]) -> str:
    """The policy: own scripts and styles only (no inline ones), data: images (the MFA QR code), no frames.

    ``connect`` adds websocket origins to ``connect-src``; ``form_action`` adds the origins a form may post
    to (or be redirected to after posting: the OpenID Connect provider).
    """
    directives = [
        ("default-src", ["'self'"]),
        ("script-src", ["'self'"]),
        ("style-src", ["'self'"]),
        ("img-src", ["'self'", "data:"]),
        ("connect-src", ["'self'", *connect]),
        ("frame-ancestors", ["'none'"]),
        ("base-uri", ["'none'"]),
        ("form-action", ["'self'", *form_action]),
        ("object-src", ["'none'"]),
    ]
    return "; ".join(f"{name} {' '.join(dict.fromkeys(values))}" for name, values in directives)


def oidc_form_origins(providers: dict[str, Any]) -> list[str]:
    """The origin of every configured OpenID Connect issuer (``SOCIALACCOUNT_PROVIDERS``, config/sso.py).

    The SSO button posts to Signoff, which redirects to the issuer; browsers apply ``form-action`` to that
    redirect too, so without the issuer's origin the sign-in would be blocked.
    """
    apps = providers.get("openid_connect", {}).get("APPS", [])
    origins = (origin_of(app.get("settings", {}).get("server_url", "")) for app in apps)
    return [origin for origin in origins if origin]


def policy_for(request: HttpRequest) -> str:
    """The policy for one response: the page's own websocket origin, and the public URL's if set."""
    try:
        host = request.get_host()
    except DisallowedHost:  # the response is Django's 400 already; it connects nowhere
        host = ""
    connect = socket_origins_for(host)
    public = origin_of(settings.SIGNOFF_PUBLIC_URL) if settings.SIGNOFF_PUBLIC_URL_SET else ""
    if public:
        connect += socket_origins_for(urlsplit(public).netloc)
    return content_security_policy(
        connect=connect, form_action=oidc_form_origins(settings.SOCIALACCOUNT_PROVIDERS)
    )


class ContentSecurityPolicyMiddleware:
    """Sends the policy with every response that has none of its own.

    Django 5.2 has no CSP support. Django's admin (5.2) has no inline scripts, event handlers or style
    attributes either, so it gets the same policy (tests/unit/test_hardening.py walks its pages).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if CSP_HEADER not in response:
            response[CSP_HEADER] = policy_for(request)
        return response


# --- The reviewer socket's Origin ------------------------------------------------------------------------
def reviewer_socket_origins() -> list[str]:
    """Origins that may open a reviewer socket: the public URL's, and every ALLOWED_HOSTS entry.

    A host pattern without a scheme matches that host on any scheme and port (as channels reads it). ``*``
    is left out: with ``ALLOWED_HOSTS=*`` only the public URL's origin may connect, so that a catch-all
    host setting never turns the check off.
    """
    origins = [origin_of(settings.SIGNOFF_PUBLIC_URL)]
    origins += [host for host in settings.ALLOWED_HOSTS if host != "*"]
    return [origin for origin in origins if origin]


class ReviewerOriginValidator(OriginValidator):
    """Refuses a reviewer socket whose ``Origin`` is foreign or missing (cross-site websocket hijacking).

    A cross-site page could otherwise open the socket with the reviewer's session cookie and decide calls.
    Browsers always send ``Origin`` on websockets, so a socket without one is not from a reviewer's page and
    is refused as well. The bridge's socket is not behind this: it authenticates by bearer token.
    """

    def __init__(self, application: Any) -> None:
        super().__init__(application, [])

    def valid_origin(self, parsed_origin: Any) -> bool:
        self.allowed_origins = reviewer_socket_origins()  # read now: the settings may differ per test
        return bool(super().valid_origin(parsed_origin))


# --- Per-connection limits -------------------------------------------------------------------------------
CLOSE_TOO_MANY_MESSAGES = 4429
"""Close code after persistent flooding (not one of the bridge's fatal codes: it reconnects with backoff)."""
CLOSE_FRAME_TOO_LARGE = 4413
"""Close code of a reviewer socket that sent an oversized frame (reviewers' pages never do)."""


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; a message takes one. Starts full.

    Pure: the caller passes the time (seconds, monotonic), so tests need no clock.
    """

    rate: float
    burst: float
    tokens: float = field(init=False)
    stamp: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.tokens = self.burst

    def take(self, now: float) -> bool:
        """Take a token if there is one; ``False`` means the message is over the rate."""
        if self.stamp is not None and now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now if self.stamp is None else max(self.stamp, now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(frozen=True)
class SocketLimits:
    """One socket kind's limits (settings ``SIGNOFF_WS_<KIND>_*``)."""

    max_frame_bytes: int
    rate: float
    burst: int


@dataclass(frozen=True)
class Refusal:
    """Why a frame is refused: the error code for the client and whether the socket is to be closed."""

    code: Literal["rate_limited", "frame_too_large"]
    message: str
    close: bool


def frame_over(frame: str | bytes, limit: int) -> bool:
    """Whether a frame is over ``limit`` bytes on the wire (a text frame travels as UTF-8).

    A character is 1 to 4 bytes, so only a text frame between limit/4 and limit characters is encoded.
    """
    if isinstance(frame, bytes) or len(frame) > limit:
        return len(frame) > limit
    if len(frame) * 4 <= limit:
        return False
    return len(frame.encode("utf-8", "surrogatepass")) > limit


class FrameGate:
    """One connection's limits: the frame size and a token bucket, closing after persistent flooding.

    ``close_oversized``: whether an oversized frame ends the connection (reviewer) or only its own request
    (bridge: the error names the call's ``ref``, the bridge denies that call and nothing else is lost).
    A flood is persistent once ``burst`` frames in a row were refused: the client ignores ``rate_limited``.
    """

    def __init__(
        self,
        limits: SocketLimits,
        *,
        close_oversized: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.close_oversized = close_oversized
        self.clock = clock
        self.bucket = TokenBucket(rate=limits.rate, burst=limits.burst)
        self.refused_in_a_row = 0
        self.closed = False
        """Set once a refusal closed the connection: frames still in flight are dropped unanswered."""

    def check(self, frame: str | bytes) -> Refusal | None:
        """``None`` to handle the frame, or why not."""
        refusal = self._refusal(frame)
        if refusal is not None and refusal.close:
            self.closed = True
        return refusal

    def _refusal(self, frame: str | bytes) -> Refusal | None:
        if not self.bucket.take(self.clock()):
            self.refused_in_a_row += 1
            return Refusal(
                code="rate_limited",
                message=f"more than {self.limits.rate:g} messages a second: slow down",
                close=self.refused_in_a_row >= self.limits.burst,
            )
        self.refused_in_a_row = 0
        if frame_over(frame, self.limits.max_frame_bytes):
            return Refusal(
                code="frame_too_large",
                message=f"frame too large: over {self.limits.max_frame_bytes} bytes",
                close=self.close_oversized,
            )
        return None


def bridge_limits() -> SocketLimits:
    """The bridge socket's limits from the settings."""
    return SocketLimits(
        max_frame_bytes=settings.SIGNOFF_WS_BRIDGE_MAX_FRAME_BYTES,
        rate=settings.SIGNOFF_WS_BRIDGE_RATE,
        burst=settings.SIGNOFF_WS_BRIDGE_BURST,
    )


def reviewer_limits() -> SocketLimits:
    """The reviewer socket's limits from the settings."""
    return SocketLimits(
        max_frame_bytes=settings.SIGNOFF_WS_REVIEW_MAX_FRAME_BYTES,
        rate=settings.SIGNOFF_WS_REVIEW_RATE,
        burst=settings.SIGNOFF_WS_REVIEW_BURST,
    )


# The ref is the second key of every request frame the bridge encodes (after "type"), so it sits near the
# start; only that much of a refused frame is read (parsing all of it is what the refusal saves).
_REF = re.compile(r'"ref"\s*:\s*"([^"\\]{1,64})"')
REF_SCAN_CHARS = 4096


def ref_of_refused(frame: str | bytes) -> str | None:
    """The ``ref`` of a frame refused unparsed, if its first few KiB name one, so the bridge can fail that
    one request at once instead of at its timeout."""
    head = frame[:REF_SCAN_CHARS]
    text = head.decode("utf-8", "replace") if isinstance(head, bytes) else head
    match = _REF.search(text)
    return match.group(1) if match else None

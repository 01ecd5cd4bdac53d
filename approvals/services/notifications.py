"""Telling people: held calls to a team's reviewers, alerts to its admins, through the team's channels.

A team's admins configure its channels (``NotificationChannel``) on the Notifications page: email
addresses, a Slack-compatible incoming webhook, or a generic webhook signed with HMAC-SHA256. Each
channel subscribes to events: ``call.held`` (a call waits for a human: for the reviewers) and ``alert``
(for the admins).

``notify_team`` is what the rest of Signoff calls. It queues one Celery task per subscribed channel,
after the current transaction commits (a call that was rolled back is never announced). The task
(``approvals.tasks.deliver_notification``) calls ``deliver_to_channel`` and owns the retries:

- a network error, a timeout or a 5xx answer is *transient*: retried up to ``MAX_RETRIES`` times with
  exponential backoff (``retry_countdown``: 2, 4, 8, 16, 32 s, ±25 % jitter);
- a 4xx (or 3xx: redirects are not followed) answer, a refused address or a rejected recipient is
  *permanent*: not retried;
- after the last failure the channel's ``last_error``/``last_error_at`` are set, the failure is counted
  (``approvals.metrics.count_notification_failure``) and logged. A success sets ``last_sent_at``.

With no Redis (the embedded default) Celery runs tasks eagerly, in-process: ``delay()`` would deliver
inside the web request (or the bridge's call), retries included, and Celery's eager mode runs a retry at
once, ignoring its countdown. So in eager mode ``notify_team`` runs ``deliver_with_retries`` in a daemon
thread instead: the request never waits for a receiver, and that thread pauses between attempts for at
most ``EAGER_RETRY_PAUSE_CAP`` seconds (the countdown a worker would wait, capped), so one bad receiver
ties up that thread for at most ``(MAX_RETRIES + 1) * DELIVERY_TIMEOUT + MAX_RETRIES *
EAGER_RETRY_PAUSE_CAP`` seconds (40 s) and nothing else. Such a delivery in progress is lost if the
process exits; with Redis the broker keeps it.

Webhook addresses are checked against SSRF (``check_webhook_url``, ``resolve_public``): http(s) only, and
no loopback, private, link-local or otherwise non-public address, unless
``settings.SIGNOFF_WEBHOOK_ALLOW_PRIVATE``. The check runs when a channel is saved and again at every
delivery, which then connects to the very address it checked (a DNS answer that changes in between
cannot send it elsewhere), and redirects are never followed.

The wire format, the signature and the verification recipe are in ``docs/notifications.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import random
import re
import secrets
import smtplib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import close_old_connections, connections, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from approvals import metrics
from approvals.masking import mask_json, mask_text
from approvals.models import NotificationChannel, Team, ToolCall
from approvals.services.audit import audit_record

log = logging.getLogger(__name__)

Kind = NotificationChannel.Kind

EVENTS: dict[str, str] = {
    "call.held": "A call is held for a human (for the reviewers)",
    "alert": "An alert is raised (for the admins)",
}
"""The events a channel may subscribe to, with what they mean."""
TEST_EVENT = "test"
"""The event of the message sent by the "Send a test message" button (to any channel, subscribed or not)."""

DELIVERY_TIMEOUT = 5.0
"""Seconds to connect to and hear back from a receiver (per attempt)."""
MAX_RETRIES = 5
"""Retries after the first attempt of a transient failure (network error, timeout, 5xx)."""
RETRY_BACKOFF_BASE = 2.0
"""Seconds before the first retry; doubled for each next one (capped by RETRY_BACKOFF_MAX)."""
RETRY_BACKOFF_MAX = 600.0
EAGER_RETRY_PAUSE_CAP = 2.0
"""In eager mode (no worker), the longest pause between two retries of the background thread."""
REPLAY_WINDOW_SECONDS = 300
"""Receivers reject a signed webhook whose timestamp is further than this from their clock."""
MAX_ARGUMENTS_CHARS = 500
"""How much of a held call's (masked) arguments a message's text shows."""
MAX_RECIPIENTS = 20
SIGNATURE_HEADER = "X-Signoff-Signature"
TIMESTAMP_HEADER = "X-Signoff-Timestamp"
USER_AGENT = "Signoff-Notifications/1"

_PAYLOAD_KEYS = {"call.held": "call", "alert": "alert", TEST_EVENT: "test"}
"""Under which key of a webhook's body the event's payload goes."""


# --- errors ------------------------------------------------------------------------------------------
class ChannelInvalid(ValueError):
    """A channel's target, kind or events cannot be used; the message says why, for the admin, and
    ``field`` which of the form's fields is wrong."""

    def __init__(self, message: str, *, field: str = "target") -> None:
        super().__init__(message)
        self.field = field


class DeliveryFailed(Exception):
    """One attempt to deliver failed. ``permanent``: retrying cannot help (4xx, refused address)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


# --- signatures ----------------------------------------------------------------------------------------
def sign(*, secret: str, timestamp: int | str, body: bytes) -> str:
    """The ``X-Signoff-Signature`` value: ``sha256=`` and the hex HMAC-SHA256, keyed with the channel's
    secret (its UTF-8 bytes), of ``f"{timestamp}.{body}"``. The timestamp is signed too, so that a
    captured message cannot be replayed later with a fresh timestamp."""
    signed = str(timestamp).encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def timestamp_is_fresh(
    timestamp: str, *, now: float | None = None, window: int = REPLAY_WINDOW_SECONDS
) -> bool:
    """Whether a ``X-Signoff-Timestamp`` (unix seconds) is within ``window`` seconds of ``now``: older
    (a replay) and from the future (a clock far off) are refused alike."""
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    now = time.time() if now is None else now
    return abs(now - int(timestamp)) <= window


def verify_signature(
    *,
    secret: str,
    timestamp: str,
    signature: str,
    body: bytes,
    now: float | None = None,
    window: int = REPLAY_WINDOW_SECONDS,
) -> bool:
    """What a receiver does: the timestamp is fresh and the signature matches (in constant time).

    The same recipe in other languages is in ``docs/notifications.md``.
    """
    if not timestamp_is_fresh(timestamp, now=now, window=window):
        return False
    return hmac.compare_digest(sign(secret=secret, timestamp=timestamp, body=body), signature)


def new_secret() -> str:
    """A fresh webhook secret: 256 random bits, as 64 hex digits (easy to pass to ``openssl -hmac``)."""
    return secrets.token_hex(32)


# --- targets: validation and the SSRF rule --------------------------------------------------------------
def _address_is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable unicast: not loopback, private, link-local (cloud metadata), CGNAT, multicast,
    reserved or unspecified. An IPv4-mapped IPv6 address is judged by its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def private_targets_allowed() -> bool:
    """Whether the operator allowed webhooks to internal addresses (SIGNOFF_WEBHOOK_ALLOW_PRIVATE)."""
    return bool(getattr(settings, "SIGNOFF_WEBHOOK_ALLOW_PRIVATE", False))


def check_webhook_url(url: str, *, resolve: bool = True) -> str:
    """The URL, stripped, if Signoff may post to it; else ChannelInvalid saying why.

    http or https only, with a host, no user:password. Unless ``SIGNOFF_WEBHOOK_ALLOW_PRIVATE``: no
    literal non-public address, no ``localhost`` name, and (with ``resolve``) no host name that resolves
    to a non-public address. A name that does not resolve now is accepted (DNS may be down); delivery
    checks again and refuses it then.
    """
    url = url.strip()
    if len(url) > 1000:
        raise ChannelInvalid("The URL is too long (1,000 characters at most).")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ChannelInvalid("The URL may not contain spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ChannelInvalid("That is not a valid URL.") from None
    if parts.scheme not in {"http", "https"}:
        raise ChannelInvalid("Only http:// and https:// URLs can receive notifications.")
    host = parts.hostname
    if not host:
        raise ChannelInvalid("The URL has no host.")
    if parts.username or parts.password:
        raise ChannelInvalid(
            "Put no user name or password in the URL; webhooks are authenticated by signature."
        )
    if port == 0:
        raise ChannelInvalid("That port is not valid.")
    if private_targets_allowed():
        return url
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        if not _address_is_public(literal):
            raise ChannelInvalid(_private_refusal(host))
        return url
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        raise ChannelInvalid(_private_refusal(host))
    if resolve:
        try:
            resolve_public(host, port or (443 if parts.scheme == "https" else 80))
        except DeliveryFailed as exc:
            if exc.permanent:
                raise ChannelInvalid(str(exc)) from None
    return url


def _private_refusal(host: str) -> str:
    return (
        f"{host} is a loopback, private or otherwise internal address: Signoff does not post there "
        "(the server's operator can allow it with SIGNOFF_WEBHOOK_ALLOW_PRIVATE)."
    )


def resolve_public(host: str, port: int) -> str:
    """The address to connect to for ``host``: its first resolved address, after checking that none of
    them is non-public (unless allowed). DeliveryFailed: transient when the name does not resolve,
    permanent when it resolves to an internal address."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise DeliveryFailed(f"cannot resolve {host}: {exc}", permanent=False) from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise DeliveryFailed(f"cannot resolve {host}", permanent=False)
    if not private_targets_allowed():
        for text in addresses:
            if not _address_is_public(ipaddress.ip_address(text.split("%", 1)[0])):
                raise DeliveryFailed(_private_refusal(host), permanent=True)
    return addresses[0]


def parse_emails(text: str) -> list[str]:
    """The addresses of an email channel's target (comma, semicolon or whitespace separated), each
    valid; ChannelInvalid otherwise."""
    addresses = [part for part in re.split(r"[,;\s]+", text.strip()) if part]
    if not addresses:
        raise ChannelInvalid("Give at least one email address.")
    if len(addresses) > MAX_RECIPIENTS:
        raise ChannelInvalid(f"At most {MAX_RECIPIENTS} addresses per channel.")
    for address in addresses:
        try:
            validate_email(address)
        except ValidationError:
            raise ChannelInvalid(f"“{address}” is not a valid email address.") from None
    return list(dict.fromkeys(addresses))


def clean_target(kind: str, target: str) -> str:
    """The stored form of a channel's target, validated for its kind; ChannelInvalid otherwise."""
    if kind == Kind.EMAIL:
        return ", ".join(parse_emails(target))
    if kind in (Kind.SLACK, Kind.WEBHOOK):
        return check_webhook_url(target)
    raise ChannelInvalid(f"Unknown channel kind {kind!r}.", field="kind")


def clean_events(events: Iterable[str]) -> list[str]:
    """The subscribed events, known ones only, in a stable order; ChannelInvalid when none."""
    chosen = set(events)
    unknown = chosen - set(EVENTS)
    if unknown:
        raise ChannelInvalid(f"Unknown events: {', '.join(sorted(unknown))}.", field="events")
    if not chosen:
        raise ChannelInvalid("Choose at least one event.", field="events")
    return [event for event in EVENTS if event in chosen]


def shown_target(channel: NotificationChannel) -> str:
    """A channel's target as pages show it: a webhook URL's path and query often hold its credential
    (Slack's do), so only the scheme and host of a webhook are shown."""
    if channel.kind == Kind.EMAIL:
        return channel.target
    parts = urlsplit(channel.target)
    rest = "/…" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{parts.netloc}{rest}"


# --- channels: the admins' changes (each audited) --------------------------------------------------------
def channel_create(
    *, team: Team, by: Any, kind: str, name: str, target: str, events: Iterable[str]
) -> tuple[NotificationChannel, str | None]:
    """Add a channel to the team. Returns it and, for a signed webhook, its new secret (shown once)."""
    name = " ".join(name.split())[:100]
    if not name:
        raise ChannelInvalid("Give the channel a name.", field="name")
    target = clean_target(kind, target)
    chosen = clean_events(events)
    secret = new_secret() if kind == Kind.WEBHOOK else ""
    with transaction.atomic():
        channel = NotificationChannel.objects.create(
            team=team, kind=kind, name=name, target=target, secret=secret, events=chosen, created_by=by
        )
        audit_record(
            kind="notification.channel_added",
            team=team,
            actor_id=by.pk,
            channel=channel.pk,
            channel_kind=kind,
            name=name,
            target=mask_text(shown_target(channel)),
            events=chosen,
        )
    return channel, secret or None


def channel_set_enabled(*, channel: NotificationChannel, by: Any, enabled: bool) -> bool:
    """Switch a channel on or off. Returns whether anything changed (only a change is audited)."""
    with transaction.atomic():
        changed = (
            NotificationChannel.objects.filter(pk=channel.pk).exclude(enabled=enabled).update(enabled=enabled)
        )
        if changed:
            channel.enabled = enabled
            audit_record(
                kind="notification.channel_enabled" if enabled else "notification.channel_disabled",
                team=channel.team,
                actor_id=by.pk,
                channel=channel.pk,
                name=channel.name,
            )
    return bool(changed)


def channel_rotate_secret(*, channel: NotificationChannel, by: Any) -> str:
    """A new signing secret for a signed webhook (the old one stops at once). Returns it, shown once."""
    if channel.kind != Kind.WEBHOOK:
        raise ChannelInvalid("Only signed webhooks have a secret.")
    secret = new_secret()
    with transaction.atomic():
        NotificationChannel.objects.filter(pk=channel.pk).update(secret=secret)
        channel.secret = secret
        audit_record(
            kind="notification.secret_rotated",
            team=channel.team,
            actor_id=by.pk,
            channel=channel.pk,
            name=channel.name,
        )
    return secret


def channel_delete(*, channel: NotificationChannel, by: Any) -> None:
    """Remove a channel; messages already queued for it are dropped when their task finds it gone."""
    with transaction.atomic():
        audit_record(
            kind="notification.channel_deleted",
            team=channel.team,
            actor_id=by.pk,
            channel=channel.pk,
            name=channel.name,
            channel_kind=channel.kind,
        )
        NotificationChannel.objects.filter(pk=channel.pk).delete()


# --- messages ----------------------------------------------------------------------------------------------
def build_message(
    *, team: Team, event: str, subject: str, text: str, link: str, payload: dict[str, Any]
) -> dict[str, Any]:
    """The JSON-serialisable message a task carries: the same for every channel of one event, with an
    ``id`` that stays the same over retries (receivers deduplicate on it)."""
    return {
        "id": str(uuid.uuid4()),
        "event": event,
        "team": team.slug,
        "team_name": team.name,
        "subject": _one_line(subject)[:200],
        "text": text,
        "link": link,
        "payload": payload,
        "created_at": timezone.now().isoformat(),
    }


def _one_line(text: str) -> str:
    """Whitespace collapsed: a subject (an email header, a chat title) holds no line break."""
    return " ".join(text.split())


def webhook_body(message: dict[str, Any]) -> bytes:
    """The generic webhook's JSON body (documented in docs/notifications.md): compact UTF-8 JSON with
    the message's fields and the event's payload under ``call``, ``alert`` or ``test``."""
    body = {
        "id": message["id"],
        "event": message["event"],
        "team": {"slug": message["team"], "name": message["team_name"]},
        "subject": message["subject"],
        "text": message["text"],
        "link": message["link"],
        "created_at": message["created_at"],
        _PAYLOAD_KEYS.get(message["event"], "data"): message["payload"],
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _slack_escape(text: str) -> str:
    """Slack's three control characters: untrusted text must not ping everyone (``<!channel>``) or
    disguise a link (``<https://evil|Open>``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(message: dict[str, Any]) -> bytes:
    """A Slack-compatible incoming webhook's body: ``{"text": …}`` with the subject, the text and the
    link (which Slack, Mattermost, Rocket.Chat and Teams' Slack adapter all turn into a link)."""
    text = f"*{_slack_escape(message['subject'])}*\n{_slack_escape(message['text'])}\n{message['link']}"
    return json.dumps({"text": text}, ensure_ascii=False).encode("utf-8")


def email_parts(message: dict[str, Any]) -> tuple[str, str]:
    """The subject and plain-text body of a message's email."""
    subject = message["subject"]
    if not subject.startswith("[Signoff]"):  # some callers tag their subject already
        subject = f"[Signoff] {subject}"
    body: str
    if message["event"] == "call.held":
        body = render_to_string(
            "email/call_held_message.txt", {"message": message, "call": message["payload"]}
        )
    else:
        body = f"{message['text']}\n\n{message['link']}\n\n-- \nSignoff, team {message['team_name']}\n"
    return subject, body


# --- delivery ------------------------------------------------------------------------------------------
class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address checked beforehand, while the Host header names the host."""

    def __init__(self, host: str, port: int | None, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to an address checked beforehand; the certificate is verified against the host name (SNI)."""

    def __init__(self, host: str, port: int | None, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]


def post_json(url: str, body: bytes, headers: dict[str, str], *, timeout: float = DELIVERY_TIMEOUT) -> int:
    """POST ``body`` to ``url`` under the SSRF rule; returns the status (2xx) or raises DeliveryFailed.

    No redirect is followed (it could point inside the network): a 3xx is a permanent failure, as is a
    4xx; a 5xx, a timeout or a network error is transient.
    """
    try:
        check_webhook_url(url, resolve=False)
    except ChannelInvalid as exc:
        raise DeliveryFailed(str(exc), permanent=True) from None
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = resolve_public(host, port)
    connection_class = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    # The port is always given: http.client would read "::1" (an IPv6 host without one) as port 1.
    connection = connection_class(host, port, address=address, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request(
            "POST",
            path,
            body=body,
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
        )
        response = connection.getresponse()
        status = response.status
        response.read(65536)  # a receiver's answer is not used; read a little so the connection ends cleanly
    except ssl.SSLCertVerificationError as exc:
        raise DeliveryFailed(f"TLS certificate refused: {exc.verify_message}", permanent=True) from None
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryFailed(f"cannot reach {host}: {exc or type(exc).__name__}", permanent=False) from None
    finally:
        connection.close()
    if 200 <= status < 300:
        return status
    permanent = status < 500
    raise DeliveryFailed(f"{host} answered HTTP {status}", permanent=permanent)


def signed_headers(
    *, secret: str, body: bytes, message: dict[str, Any], now: float | None = None
) -> dict[str, str]:
    """The generic webhook's headers: a fresh timestamp (so that a retry is not taken for a replay), its
    signature, the event and the message id (the same over retries)."""
    timestamp = str(int(time.time() if now is None else now))
    return {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret=secret, timestamp=timestamp, body=body),
        "X-Signoff-Event": message["event"],
        "X-Signoff-Delivery": message["id"],
    }


def deliver_to_channel(*, channel: NotificationChannel, message: dict[str, Any]) -> None:
    """One attempt to deliver a message through a channel. Raises DeliveryFailed."""
    if channel.kind == Kind.EMAIL:
        subject, body = email_parts(message)
        try:
            send_mail(
                subject,
                body,
                settings.DEFAULT_FROM_EMAIL,
                parse_emails(channel.target),
                fail_silently=False,
            )
        except ChannelInvalid as exc:
            raise DeliveryFailed(str(exc), permanent=True) from None
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as exc:
            raise DeliveryFailed(f"the mail server refused: {exc}", permanent=True) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"cannot send mail: {exc}", permanent=False) from None
    elif channel.kind == Kind.SLACK:
        post_json(channel.target, slack_body(message), {})
    elif channel.kind == Kind.WEBHOOK:
        signed = webhook_body(message)
        post_json(channel.target, signed, signed_headers(secret=channel.secret, body=signed, message=message))
    else:
        raise DeliveryFailed(f"unknown channel kind {channel.kind!r}", permanent=True)


def record_success(channel_id: int) -> None:
    """The channel delivered a message now."""
    NotificationChannel.objects.filter(pk=channel_id).update(last_sent_at=timezone.now())


def record_failure(channel_id: int, *, error: str, count: bool = True) -> None:
    """The channel failed for good (after its retries): shown on the Notifications page, counted (unless a
    test message) and logged."""
    channel = NotificationChannel.objects.filter(pk=channel_id).only("kind", "team_id", "name").first()
    error = mask_text(error)[:500]
    NotificationChannel.objects.filter(pk=channel_id).update(last_error=error, last_error_at=timezone.now())
    if channel is None:
        return
    if count:
        metrics.count_notification_failure(kind=channel.kind)
    log.warning(
        "notification failed: team=%s channel=%s (%s) kind=%s: %s",
        channel.team_id,
        channel.pk,
        channel.name,
        channel.kind,
        error,
    )


def retry_countdown(retries: int) -> float:
    """Seconds before retry number ``retries + 1``: exponential, ±25 % jitter so that receivers coming
    back up are not hit by every queued message at the same second."""
    base = min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_BASE * (2**retries))
    return float(base * random.uniform(0.75, 1.25))  # noqa: S311 (jitter, not a secret)


def delivery_attempt(*, channel_id: int, message: dict[str, Any], retries: int) -> float | None:
    """Attempt number ``retries + 1`` of a message through a channel.

    Returns None when done: delivered (``last_sent_at``), dropped (the channel was deleted or switched
    off meanwhile), or failed for good (a permanent failure, or a transient one on the last retry:
    ``record_failure``). Else the seconds to wait before the next attempt.
    """
    channel = NotificationChannel.objects.filter(pk=channel_id).first()
    if channel is None or not channel.enabled:
        return None
    try:
        deliver_to_channel(channel=channel, message=message)
    except DeliveryFailed as exc:
        if exc.permanent or retries >= MAX_RETRIES:
            attempts = retries + 1
            record_failure(channel_id, error=f"{exc} (after {attempts} attempt{'s' * (attempts > 1)})")
            return None
        return retry_countdown(retries)
    record_success(channel_id)
    return None


def deliver_with_retries(*, channel_id: int, message: dict[str, Any], pause_cap: float | None = None) -> None:
    """Every attempt of a message in this thread, pausing between them (at most ``pause_cap`` seconds,
    default ``EAGER_RETRY_PAUSE_CAP``): the embedded default's delivery, without a worker."""
    cap = EAGER_RETRY_PAUSE_CAP if pause_cap is None else pause_cap
    for retries in range(MAX_RETRIES + 1):
        countdown = delivery_attempt(channel_id=channel_id, message=message, retries=retries)
        if countdown is None:
            return
        time.sleep(min(countdown, cap))


@dataclass(frozen=True)
class TestOutcome:
    """What the "Send a test message" button reports."""

    ok: bool
    error: str = ""


def channel_send_test(*, channel: NotificationChannel, by: Any, link: str) -> TestOutcome:
    """Deliver one test message through the channel now, once (no retries), whether it is enabled or not,
    and record the outcome on the channel. Takes at most about DELIVERY_TIMEOUT seconds."""
    who = getattr(by, "email", "") or by.get_username()
    message = build_message(
        team=channel.team,
        event=TEST_EVENT,
        subject=f"Test message for “{channel.name}”",
        text=f"{who} sent this test from Signoff's Notifications page. If you read it, the channel works.",
        link=link,
        payload={"channel": channel.name, "requested_by": who},
    )
    try:
        deliver_to_channel(channel=channel, message=message)
    except DeliveryFailed as exc:
        record_failure(channel.pk, error=str(exc), count=False)
        return TestOutcome(False, mask_text(str(exc)))
    record_success(channel.pk)
    return TestOutcome(True)


# --- queueing ------------------------------------------------------------------------------------------
def subscribed_channels(*, team: Team, event: str) -> list[NotificationChannel]:
    """The team's enabled channels that subscribe to ``event``. (Filtered in Python: JSON containment
    lookups differ between SQLite and PostgreSQL, and a team has a handful of channels.)"""
    return [
        channel
        for channel in NotificationChannel.objects.filter(team=team, enabled=True).only("pk", "events")
        if event in (channel.events or [])
    ]


_eager_threads: list[threading.Thread] = []


def _run_eager(channel_id: int, message: dict[str, Any]) -> None:
    """Body of an eager-mode delivery thread: every attempt, then the thread's connections closed (each
    thread has its own). Not Celery's eager ``apply``: that runs a retry at once, and with
    CELERY_TASK_EAGER_PROPAGATES raises it instead of running it."""
    try:
        deliver_with_retries(channel_id=channel_id, message=message)
    except Exception:  # a thread has no caller to tell: log it
        log.exception("notification delivery crashed: channel=%s", channel_id)
    finally:
        close_old_connections()
        connections.close_all()


def _enqueue(channel_id: int, message: dict[str, Any]) -> None:
    """Start the delivery: on a worker (Redis), or in a daemon thread in eager mode (see module docstring)."""
    from approvals.tasks import deliver_notification

    if getattr(settings, "CELERY_TASK_ALWAYS_EAGER", False):
        thread = threading.Thread(
            target=_run_eager, args=(channel_id, message), name=f"notify-{channel_id}", daemon=True
        )
        _eager_threads[:] = [t for t in _eager_threads if t.is_alive()]
        _eager_threads.append(thread)
        thread.start()
    else:
        deliver_notification.delay(channel_id, message)


def wait_for_eager_deliveries(timeout: float = 30.0) -> None:
    """Wait for the eager-mode delivery threads started so far (tests; a clean shutdown)."""
    deadline = time.monotonic() + timeout
    for thread in list(_eager_threads):
        thread.join(max(0.0, deadline - time.monotonic()))


def notify_team(
    *, team: Team, event: str, subject: str, text: str, link: str, payload: dict[str, Any]
) -> None:
    """Queue one message per enabled channel of the team that subscribes to ``event`` ("call.held" or
    "alert"), sent after the current transaction commits, by Celery tasks with retries and backoff.

    ``text`` and ``payload`` leave the server: pass them masked (``approvals.masking``). Never raises for
    a delivery problem: failures are the tasks' to record.
    """
    if event not in EVENTS:
        raise ValueError(f"Unknown notification event {event!r}.")
    channels = subscribed_channels(team=team, event=event)
    if not channels:
        return
    message = build_message(team=team, event=event, subject=subject, text=text, link=link, payload=payload)
    for channel in channels:
        # robust: a broker that is down must not turn a committed call into an error for its bridge.
        transaction.on_commit(_enqueue_later(channel.pk, message), robust=True)


def _enqueue_later(channel_id: int, message: dict[str, Any]) -> Callable[[], None]:
    return lambda: _enqueue(channel_id, message)


# --- held calls ----------------------------------------------------------------------------------------
def public_url() -> str:
    """Where people reach this server (``SIGNOFF_PUBLIC_URL``), for links in messages."""
    return str(settings.SIGNOFF_PUBLIC_URL).rstrip("/")


def call_link(call: ToolCall) -> str:
    """The call's card in its team's queue (where it is decided)."""
    return f"{public_url()}/?team={call.team.slug}#call-{call.pk}"


def shorten(text: str, limit: int = MAX_ARGUMENTS_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cut_strings(value: Any, limit: int = 120) -> Any:
    """Each long string in a JSON value cut to ``limit``: one long argument must not hide the others."""
    if isinstance(value, dict):
        return {key: _cut_strings(item, limit) for key, item in value.items()}
    if isinstance(value, list):
        return [_cut_strings(item, limit) for item in value]
    return shorten(value, limit) if isinstance(value, str) else value


def call_held_payload(call: ToolCall) -> dict[str, Any]:
    """A held call as messages carry it, its arguments masked (they leave the server)."""
    return {
        "id": str(call.pk),
        "server": call.server,
        "tool": call.tool,
        "arguments": mask_json(call.arguments),
        "requester": call.requester.get_username(),
        "token": call.token.name,
        "reason": mask_text(call.reason),
        "risks": [
            {
                "kind": risk.get("kind", ""),
                "severity": risk.get("severity", ""),
                "message": risk.get("message", ""),
            }
            for risk in call.risks or []
        ],
        "created_at": call.created_at.isoformat(),
        "deadline": call.deadline.isoformat(),
        "url": f"{public_url()}/calls/{call.pk}/",
    }


def notify_result_held(call: ToolCall, *, findings: dict[str, int]) -> None:
    """Tell the team's ``call.held`` channels that a call's result waits for a reviewer (after commit). The
    result itself does not leave the server: only how many findings of each kind it holds."""
    payload = {
        **call_held_payload(call),
        "result_review": "held",
        "result_deadline": call.result_deadline.isoformat() if call.result_deadline else None,
        "findings": findings,
    }
    found = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in findings.items())
    deadline = call.result_deadline or call.deadline
    lines = [
        f"{call.server}/{call.tool}, run for {payload['requester']} (token “{payload['token']}”), returned a "
        f"result held for review: {found or 'findings'}.",
        f"Release, mask or block it by {deadline.astimezone(UTC):%Y-%m-%d %H:%M} UTC, or it is blocked.",
    ]
    notify_team(
        team=call.team,
        event="call.held",
        subject=f"Result held: {call.server}/{call.tool} by {payload['requester']}",
        text="\n".join(lines),
        link=call_link(call),
        payload=payload,
    )


def notify_call_held(call: ToolCall) -> None:
    """Tell the team's ``call.held`` channels that a call waits for a reviewer (after commit)."""
    payload = call_held_payload(call)
    arguments = shorten(json.dumps(_cut_strings(payload["arguments"]), ensure_ascii=False))
    lines = [
        f"{payload['requester']} (token “{payload['token']}”) asks to run {call.server}/{call.tool} with",
        arguments,
    ]
    lines += [f"⚠ {risk['message']}" for risk in payload["risks"] if risk["severity"] in ("warn", "block")]
    lines.append(f"Decide by {call.deadline.astimezone(UTC):%Y-%m-%d %H:%M} UTC, or it expires (denied).")
    notify_team(
        team=call.team,
        event="call.held",
        subject=f"Held: {call.server}/{call.tool} by {payload['requester']}",
        text="\n".join(lines),
        link=call_link(call),
        payload=payload,
    )

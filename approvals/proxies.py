"""Trusted reverse proxies: the client's address from ``X-Forwarded-For``, only when a trusted proxy sent it.

``TrustedProxyMiddleware`` wraps the whole ASGI application (``config/asgi.py``), for HTTP and websockets.
``SIGNOFF_TRUSTED_PROXIES`` lists the proxies' networks (CIDR). For a connection whose TCP peer is in one of
them, ``scope["client"]`` becomes the right-most ``X-Forwarded-For`` address that is not itself a trusted
proxy: the address the last trusted proxy saw (a client cannot choose it by sending a header of its own,
which the proxies append to, never read). With ``SIGNOFF_TRUST_PROXY_TLS_HEADER`` on, ``scope["scheme"]``
follows its ``X-Forwarded-Proto`` too.

From any other peer both headers are dropped from the scope, so that nothing behind (Django's
``SECURE_PROXY_SSL_HEADER`` included) can believe them: a client reaching Daphne directly gets its own
address and scheme. With no trusted proxies configured, nothing changes (the peer is the client; the TLS
header, when trusted, is believed from anyone as before: docs/deploy.md).

Django, Channels' consumers and the logs read the client's address from the scope
(``REMOTE_ADDR``), so that login rate limits, ``/metrics``'s loopback rule, the audit log's addresses and
the bridges' network allowlists (``approvals/services/networks.py``) all see the client, not the proxy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from django.conf import settings

from approvals.services.networks import Network, address_in, address_parse

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FORWARDED_FOR = b"x-forwarded-for"
FORWARDED_PROTO = b"x-forwarded-proto"
_FORWARDED = (FORWARDED_FOR, FORWARDED_PROTO)
MAX_FORWARDED_HOPS = 30
"""Addresses of ``X-Forwarded-For`` read at most, from the right: a longer chain is someone's padding."""
_SCHEMES = {
    "http": {"https": "https", "http": "http"},
    "websocket": {"https": "wss", "wss": "wss", "http": "ws", "ws": "ws"},
}


def forwarded_client(header_values: Sequence[bytes], trusted: Sequence[Network]) -> str | None:
    """The client's address from a trusted proxy's ``X-Forwarded-For`` headers (joined in order), or None.

    Walks from the right, skipping addresses of trusted proxies; the first other one is the client. When
    every address is a trusted proxy's, the left-most is. An entry that is not an address ends the walk
    (None: a proxy wrote something unexpected, so the peer's address stays).
    """
    entries = [
        entry.strip()
        for value in header_values
        for entry in value.decode("latin-1").split(",")
        if entry.strip()
    ]
    client: str | None = None
    for entry in reversed(entries[-MAX_FORWARDED_HOPS:]):
        address = address_parse(_without_port(entry))
        if address is None:
            return None
        client = str(address)
        if not address_in(client, trusted):
            return client
    return client


def _without_port(entry: str) -> str:
    """``[2001:db8::1]:443`` → ``2001:db8::1``, ``192.0.2.1:443`` → ``192.0.2.1``; others as they are."""
    if entry.startswith("[") and "]" in entry:
        return entry[1 : entry.index("]")]
    if entry.count(":") == 1:
        return entry.split(":", 1)[0]
    return entry


class TrustedProxyMiddleware:
    """Take the client's address (and scheme) from trusted proxies' headers only; see the module's text.

    ``trusted`` and ``trust_proto`` default to the settings ``SIGNOFF_TRUSTED_PROXIES`` and
    ``SIGNOFF_TRUST_PROXY_TLS_HEADER``, read at each connection (tests change them).
    """

    def __init__(
        self, app: ASGIApp, *, trusted: Sequence[str] | None = None, trust_proto: bool | None = None
    ) -> None:
        self.app = app
        self._trusted = trusted
        self._trust_proto = trust_proto
        self._parsed: tuple[tuple[str, ...], list[Network]] = ((), [])

    def _networks(self) -> list[Network]:
        texts = tuple(self._trusted if self._trusted is not None else settings.SIGNOFF_TRUSTED_PROXIES)
        if texts != self._parsed[0]:
            self._parsed = (texts, [ipaddress.ip_network(text, strict=False) for text in texts])
        return self._parsed[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            trusted = self._networks()
            if trusted:
                scope = self._rewrite(scope, trusted)
        await self.app(scope, receive, send)

    def _rewrite(self, scope: Scope, trusted: list[Network]) -> Scope:
        headers = list(scope.get("headers") or [])
        client = scope.get("client")
        peer = client[0] if client else None
        if not address_in(peer, trusted):
            # Not from a proxy: whatever it says about forwarding is the client's own claim.
            kept = [(name, value) for name, value in headers if name.lower() not in _FORWARDED]
            return scope if len(kept) == len(headers) else {**scope, "headers": kept}
        scope = dict(scope)
        forwarded = [value for name, value in headers if name.lower() == FORWARDED_FOR]
        address = forwarded_client(forwarded, trusted) if forwarded else None
        if address is not None:
            scope["client"] = (address, 0)
        trust_proto = self._trust_proto
        if trust_proto is None:
            trust_proto = bool(settings.SIGNOFF_TRUST_PROXY_TLS_HEADER)
        protos = [value for name, value in headers if name.lower() == FORWARDED_PROTO]
        if trust_proto and protos:
            # As Django reads SECURE_PROXY_SSL_HEADER: the first value.
            proto = protos[0].decode("latin-1").split(",", 1)[0].strip().lower()
            scheme = _SCHEMES[scope["type"]].get(proto)
            if scheme is not None:
                scope["scheme"] = scheme
        return scope

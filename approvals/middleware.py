"""ASGI middleware for the bridge socket: the bearer token from the Authorization header."""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from django.db import InterfaceError, OperationalError

from approvals.services.tokens import token_authenticate

log = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = "bridge_database_unavailable"
"""Scope key set when the token could not be checked because the database is unreachable: the consumer
then answers ``unavailable`` (close 4503) instead of the handshake failing with an HTTP 500."""


class BridgeTokenMiddleware:
    """Put the usable ``BridgeToken`` named by ``Authorization: Bearer …`` in ``scope['bridge_token']``.

    Tokens in the URL are never read: URLs end up in logs.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        token = None
        unavailable = False
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, raw = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and raw.strip():
                    try:
                        token = await database_sync_to_async(token_authenticate)(raw.strip())
                    except (OperationalError, InterfaceError) as exc:
                        log.error("bridge token not checked: the database is unreachable: %s", exc)
                        unavailable = True
                break
        return await self.inner(
            {**scope, "bridge_token": token, DATABASE_UNAVAILABLE: unavailable}, receive, send
        )

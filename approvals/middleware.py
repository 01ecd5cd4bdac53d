"""ASGI middleware for the bridge socket: the bearer token from the Authorization header."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from approvals.services.tokens import token_authenticate


class BridgeTokenMiddleware:
    """Put the usable ``BridgeToken`` named by ``Authorization: Bearer …`` in ``scope['bridge_token']``.

    Tokens in the URL are never read: URLs end up in logs.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        token = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, raw = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and raw.strip():
                    token = await database_sync_to_async(token_authenticate)(raw.strip())
                break
        return await self.inner({**scope, "bridge_token": token}, receive, send)

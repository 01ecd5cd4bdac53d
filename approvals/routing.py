"""Websocket routes, each behind the authentication it needs."""

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from approvals import consumers
from approvals.middleware import BridgeTokenMiddleware

websocket_urlpatterns = [
    # Bridges send no Origin header: they authenticate with their bearer token alone.
    path("ws/bridge/", BridgeTokenMiddleware(consumers.BridgeConsumer.as_asgi())),
    # Reviewers' pages use their login session; the Origin must be one of ALLOWED_HOSTS.
    path(
        "ws/review/",
        AllowedHostsOriginValidator(AuthMiddlewareStack(consumers.ReviewConsumer.as_asgi())),
    ),
]

"""Websocket routes, each behind the authentication it needs."""

from channels.auth import AuthMiddlewareStack
from django.urls import path

from approvals import consumers
from approvals.middleware import BridgeTokenMiddleware
from approvals.security import ReviewerOriginValidator

websocket_urlpatterns = [
    # Bridges send no Origin header: they authenticate with their bearer token alone.
    path("ws/bridge/", BridgeTokenMiddleware(consumers.BridgeConsumer.as_asgi())),
    # Reviewers' pages use their login session, so the Origin must be the public URL's or an ALLOWED_HOSTS
    # host, and present: a cross-site page must not ride a reviewer's cookie (docs/security.md).
    path("ws/review/", ReviewerOriginValidator(AuthMiddlewareStack(consumers.ReviewConsumer.as_asgi()))),
]

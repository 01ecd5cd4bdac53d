"""ASGI entry point: HTTP to Django, websockets to the consumers of ``approvals.routing``.

Canonical order: the Django ASGI app is built first so that models are ready before routing imports them.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from approvals.proxies import TrustedProxyMiddleware  # noqa: E402
from approvals.routing import websocket_urlpatterns  # noqa: E402
from approvals.sweeper import start_inprocess_sweeper  # noqa: E402

# Outermost: the client's address (and scheme) from trusted proxies only, for pages and sockets alike.
application = TrustedProxyMiddleware(
    ProtocolTypeRouter({"http": django_asgi_app, "websocket": URLRouter(websocket_urlpatterns)})
)

start_inprocess_sweeper(settings.SIGNOFF_INPROCESS_SWEEP_SECONDS)

"""ASGI entry point: HTTP to Django, websockets to the consumers of ``approvals.routing``.

Canonical order: the Django ASGI app is built first so that models are ready before routing imports them.
"""

from __future__ import annotations

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from approvals.proxies import TrustedProxyMiddleware  # noqa: E402
from approvals.realtime import recording_event_loop  # noqa: E402
from approvals.routing import websocket_urlpatterns  # noqa: E402
from approvals.sweeper import start_inprocess_sweeper  # noqa: E402

# The client's address (and scheme) from trusted proxies only, for pages and sockets alike; and the event loop
# that serves them, for events sent from threads of their own (approvals.realtime.send).
application = recording_event_loop(
    TrustedProxyMiddleware(
        ProtocolTypeRouter({"http": django_asgi_app, "websocket": URLRouter(websocket_urlpatterns)})
    )
)

start_inprocess_sweeper(settings.SIGNOFF_INPROCESS_SWEEP_SECONDS)

# The garbage collector stopped this process's event loop for 80-140 ms every second or two under load (a
# full collection over the whole heap): the p99 of every pushed frame (docs/performance.md, "Reviewers").
# What is loaded by now (Django, the apps, their modules: 120,000 objects) lives as long as the process, so
# it is frozen out of the collector's sight; and the youngest generation is collected every 10,000
# allocations instead of 700, which promotes far fewer short-lived objects (a fan-out's frames and tasks) to
# the old generations that full collections walk.
gc.freeze()
gc.set_threshold(10_000, 10, 10)

"""Endpoints for operators: ``/healthz`` (liveness), ``/readyz`` (readiness) and ``/metrics`` (Prometheus).

They live outside the ``approvals`` namespace (``config/urls.py``): no login, no team. ``/metrics`` is
guarded by ``SIGNOFF_METRICS_TOKEN`` (``Authorization: Bearer …``); without a token only loopback
addresses may scrape it. See docs/operations.md.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from approvals import metrics

log = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 2.0
"""Each readiness check gives up after this: a probe must answer before its own timeout."""


@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process serves HTTP. Touches no dependency, so that an outage of the database or
    Redis does not get every web process restarted (that is ``/readyz``'s job to report)."""
    return HttpResponse("ok\n", content_type="text/plain; charset=utf-8")


# --- readiness ------------------------------------------------------------------------------------------
def check_database() -> str:
    """One query on the default database."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return connection.vendor


def check_cache() -> str:
    """A write and a read through the cache (Redis with ``REDIS_URL``): rate limits and metrics use it."""
    key = f"signoff:readyz:{uuid.uuid4().hex}"
    cache.set(key, "1", timeout=10)
    if cache.get(key) != "1":
        raise RuntimeError("the cache did not return what was written")
    cache.delete(key)
    return str(settings.CACHES["default"]["BACKEND"].rsplit(".", 1)[-1])


def check_channel_layer() -> str:
    """A message sent to a fresh channel of the layer and received back: the path every decision takes
    to a bridge. With channels-redis this is a real round trip through Redis."""
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")

    async def round_trip() -> None:
        channel = await layer.new_channel("readyz")
        token = uuid.uuid4().hex
        await layer.send(channel, {"type": "readyz.ping", "token": token})
        message = await layer.receive(channel)
        if message.get("token") != token:
            raise RuntimeError("the channel layer returned another message")

    async def bounded() -> None:
        await asyncio.wait_for(round_trip(), CHECK_TIMEOUT_SECONDS)

    async_to_sync(bounded)()
    return type(layer).__name__


def check_broker() -> str:
    """The Celery broker answers (a connection and a Redis PING through kombu), when there is one: the
    embedded default runs tasks in-process and has none."""
    if not settings.REDIS_URL:
        return "in-process (no broker)"
    from kombu import Connection

    with Connection(
        settings.CELERY_BROKER_URL,
        connect_timeout=CHECK_TIMEOUT_SECONDS,
        transport_options={"socket_timeout": CHECK_TIMEOUT_SECONDS, "max_retries": 0},
    ) as broker:
        broker.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0, timeout=CHECK_TIMEOUT_SECONDS
        )
        client = broker.default_channel.client  # redis transport: the redis-py client
        if hasattr(client, "ping"):
            client.ping()
    return str(broker.transport_cls)


CHECKS: dict[str, Callable[[], str]] = {
    "database": check_database,
    "cache": check_cache,
    "channel_layer": check_channel_layer,
    "broker": check_broker,
}
"""What ``/readyz`` checks, by the name its JSON answer gives each."""


def readiness() -> tuple[bool, dict[str, dict[str, Any]]]:
    """Run every check; ``(all passed, {name: {"ok", "ms", "detail" | "error"}})``.

    A failed check's answer names the exception's type only: the body is public (probes carry no
    credentials) and messages hold host names and ports. The full error goes to the log.
    """
    results: dict[str, dict[str, Any]] = {}
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            detail = check()
        except Exception as exc:
            log.warning("readiness check %s failed", name, exc_info=True)
            results[name] = {"ok": False, "error": type(exc).__name__}
        else:
            results[name] = {"ok": True, "detail": detail}
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return all(result["ok"] for result in results.values()), results


@never_cache
@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: 200 when the database, the cache, the channel layer and the broker all answer, else
    503; the JSON body names each check and whether it passed."""
    ready, checks = readiness()
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )


# --- metrics ---------------------------------------------------------------------------------------------
def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def metrics_access_allowed(request: HttpRequest) -> bool:
    """With ``SIGNOFF_METRICS_TOKEN``: the request carries ``Authorization: Bearer <that token>``.
    Without it: the request comes from a loopback address (the scraper runs on the same host)."""
    expected = settings.SIGNOFF_METRICS_TOKEN
    if not expected:
        return _is_loopback(request.META.get("REMOTE_ADDR"))
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus exposition of ``approvals.metrics`` (Prometheus text format)."""
    if not metrics_access_allowed(request):
        response = HttpResponse("metrics need a bearer token\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="signoff-metrics"'
        return response
    return HttpResponse(generate_latest(metrics.registry()), content_type=CONTENT_TYPE_LATEST)

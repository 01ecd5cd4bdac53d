"""Prometheus metrics of Signoff (served at ``/metrics`` by ``approvals.health_views``).

A scrape must mean the same whichever process answers it: several Daphne processes sit behind one load
balancer, and some events (notification failures) happen in a Celery worker that serves no HTTP at all.
So nothing here is a plain per-process ``prometheus_client`` counter:

* **Calls** (by state, pending, oldest pending) are read from the database at scrape time
  (``SignoffCollector``), with cheap aggregate queries bounded by indexes, and shared for
  ``SIGNOFF_METRICS_CACHE_SECONDS`` through the Django cache so that N scrapers cost one query.
* **Counters and the decision-latency histogram** live in a shared store (``SharedStore``): Redis hashes
  updated with atomic ``HINCRBY``/``HINCRBYFLOAT`` when ``REDIS_URL`` is set, a locked dict in the
  embedded default (one process holds everything there: web, tasks, sweeper).
* **Connected sockets** are counted per process in memory (the consumers' connect/disconnect cost no I/O);
  with Redis a background thread publishes each process's counts under a key that expires
  (``SOCKETS_TTL_SECONDS``), and a scrape sums the live keys: a process that died drops out of the sum.
* **Process basics** (CPU, memory, file descriptors, GC) are those of the process that answered.

Failures to count never fail the request that counted: metrics are best effort, calls are not.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, Protocol

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

DECISION_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400)
"""Upper bounds (seconds) of the decision-latency histogram: people take seconds to hours."""
SOCKETS_TTL_SECONDS = 30
"""How long a process's published socket counts stay without a refresh (it refreshes every third of it)."""
SOCKET_KINDS = ("bridge", "reviewer")

# Names of the shared families (Redis hash names, and keys of the in-memory store).
_RATE_LIMIT_HITS = "rate_limit_hits"
_NOTIFICATION_FAILURES = "notification_failures"
_PAYLOADS_PURGED = "payloads_purged"
_DECISIONS = "decision_latency"


def _labels_key(labels: dict[str, str]) -> str:
    """A label set as a hash field: canonical JSON, so that equal sets are one field."""
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


# --- the shared store ---------------------------------------------------------------------------------
class SharedStore(Protocol):
    """Counters every process adds to and every scrape reads: ``family -> {labels key -> value}``."""

    def add(self, family: str, increments: dict[str, float]) -> None: ...

    def read(self, family: str) -> dict[str, float]: ...

    def publish_sockets(self, process: str, counts: dict[str, int]) -> None: ...

    def withdraw_sockets(self, process: str) -> None: ...

    def sockets(self) -> dict[str, dict[str, int]]: ...


class MemoryStore:
    """The embedded default's store: one process, so a locked dict is shared by everything."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, dict[str, float]] = {}
        self._sockets: dict[str, dict[str, int]] = {}

    def add(self, family: str, increments: dict[str, float]) -> None:
        with self._lock:
            values = self._families.setdefault(family, {})
            for field, amount in increments.items():
                values[field] = values.get(field, 0.0) + amount

    def read(self, family: str) -> dict[str, float]:
        with self._lock:
            return dict(self._families.get(family, {}))

    def publish_sockets(self, process: str, counts: dict[str, int]) -> None:
        with self._lock:
            self._sockets[process] = dict(counts)

    def withdraw_sockets(self, process: str) -> None:
        with self._lock:
            self._sockets.pop(process, None)

    def sockets(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {process: dict(counts) for process, counts in self._sockets.items()}


class RedisStore:
    """Redis hashes under ``<SIGNOFF_CHANNEL_PREFIX>:metrics:``; every update is one atomic command (or
    one MULTI), so concurrent processes never lose an increment. Short socket timeouts: a Redis outage
    costs a counted event at most half a second, then the failure is logged and the event uncounted."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self._client = redis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True
        )
        self._prefix = f"{prefix}:metrics:"

    def add(self, family: str, increments: dict[str, float]) -> None:
        with self._client.pipeline(transaction=True) as pipe:
            for field, amount in increments.items():
                # Always the float form: HINCRBY would fail on a field that ever held a fraction (a sum).
                pipe.hincrbyfloat(self._prefix + family, field, amount)
            pipe.execute()

    def read(self, family: str) -> dict[str, float]:
        raw: dict[str, str] = self._client.hgetall(self._prefix + family)  # type: ignore[assignment]
        return {field: float(value) for field, value in raw.items()}

    def publish_sockets(self, process: str, counts: dict[str, int]) -> None:
        self._client.set(self._sockets_key(process), json.dumps(counts), ex=SOCKETS_TTL_SECONDS)

    def withdraw_sockets(self, process: str) -> None:
        self._client.delete(self._sockets_key(process))

    def sockets(self) -> dict[str, dict[str, int]]:
        keys = list(self._client.scan_iter(match=self._sockets_key("*"), count=500))
        if not keys:
            return {}
        found: dict[str, dict[str, int]] = {}
        for key, value in zip(keys, self._client.mget(keys), strict=True):
            if value is not None:  # expired between SCAN and MGET
                found[str(key).rsplit(":sockets:", 1)[1]] = json.loads(value)
        return found

    def _sockets_key(self, process: str) -> str:
        return f"{self._prefix}sockets:{process}"


_store: SharedStore | None = None
_store_lock = threading.Lock()


def shared_store() -> SharedStore:
    """This process's handle on the shared store (Redis with ``REDIS_URL``, else in memory)."""
    global _store
    with _store_lock:
        if _store is None:
            url = getattr(settings, "REDIS_URL", "")
            _store = RedisStore(url, settings.SIGNOFF_CHANNEL_PREFIX) if url else MemoryStore()
        return _store


def use_store(store: SharedStore | None) -> None:
    """Replace the shared store (tests); None builds it again from the settings on next use."""
    global _store
    with _store_lock:
        _store = store


def _add(family: str, labels: dict[str, str], amount: float = 1.0) -> None:
    try:
        shared_store().add(family, {_labels_key(labels): amount})
    except Exception:
        log.warning("metrics: could not count %s %s", family, labels, exc_info=True)


# --- what other modules count ---------------------------------------------------------------------------
def count_rate_limit_hit(*, team_slug: str, scope: str) -> None:
    """One call denied by a rate limit."""
    _add(_RATE_LIMIT_HITS, {"team": team_slug, "scope": scope})


def count_notification_failure(*, kind: str) -> None:
    """One notification that could not be delivered (after its last retry)."""
    _add(_NOTIFICATION_FAILURES, {"kind": kind})


def count_payloads_purged(*, team_slug: str, count: int) -> None:
    """Retention cleared the arguments and results of ``count`` calls of a team."""
    if count:
        _add(_PAYLOADS_PURGED, {"team": team_slug}, count)


def observe_decision(*, decision: str, seconds: float) -> None:
    """A reviewer decided a held call ``seconds`` after it arrived (``decision``: allowed or denied).

    Stored as cumulative bucket counts and a sum, in one atomic update."""
    seconds = max(seconds, 0.0)
    label = {"decision": decision}
    increments = {
        _labels_key({**label, "le": _le(bound)}): 1.0 for bound in DECISION_BUCKETS if seconds <= bound
    }
    increments[_labels_key({**label, "le": "+Inf"})] = 1.0
    increments[_labels_key({**label, "stat": "sum"})] = seconds  # the count is the +Inf bucket
    try:
        shared_store().add(_DECISIONS, increments)
    except Exception:
        log.warning("metrics: could not observe a decision", exc_info=True)


def observe_human_decision(*, state: str, created_at: datetime, decided_at: datetime | None) -> None:
    """``observe_decision`` for a call a reviewer just decided (called on commit by ``call_decide``)."""
    if decided_at is not None:
        observe_decision(decision=state, seconds=(decided_at - created_at).total_seconds())


def _le(bound: float) -> str:
    return f"{float(bound):g}" if not float(bound).is_integer() else f"{float(bound):.1f}"


# --- connected sockets ----------------------------------------------------------------------------------
_sockets: dict[str, int] = dict.fromkeys(SOCKET_KINDS, 0)
_sockets_lock = threading.Lock()
_sockets_changed = threading.Event()
_publisher_started = False
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
"""This process in the published socket counts (random part: a pid reused after a restart is another)."""


def socket_opened(kind: str) -> None:
    """A bridge (``bridge``) or a reviewer's page (``reviewer``) connected to this process. No I/O: safe in
    async code. With Redis, the publisher thread shares the new count at once."""
    with _sockets_lock:
        _sockets[kind] += 1
    _changed()


def socket_closed(kind: str) -> None:
    """The matching disconnect of ``socket_opened``."""
    with _sockets_lock:
        _sockets[kind] = max(0, _sockets[kind] - 1)
    _changed()


def local_sockets() -> dict[str, int]:
    """This process's open sockets by kind."""
    with _sockets_lock:
        return dict(_sockets)


def _changed() -> None:
    global _publisher_started
    if not getattr(settings, "REDIS_URL", ""):
        return  # one process: the scrape reads the local counts directly
    _sockets_changed.set()
    if not _publisher_started:
        with _sockets_lock:
            if _publisher_started:
                return
            _publisher_started = True
        threading.Thread(target=_publish_loop, name="signoff-metrics-sockets", daemon=True).start()
        atexit.register(_withdraw)


def _withdraw() -> None:
    """At a clean exit, take this process's counts out at once rather than when their key expires."""
    try:
        shared_store().withdraw_sockets(PROCESS_ID)
    except Exception:
        log.debug("metrics: could not withdraw socket counts", exc_info=True)


def _publish_loop() -> None:
    """Publish this process's socket counts on every change and at least every third of the TTL."""
    while True:
        _sockets_changed.wait(SOCKETS_TTL_SECONDS / 3)
        _sockets_changed.clear()
        try:
            shared_store().publish_sockets(PROCESS_ID, local_sockets())
        except Exception:
            log.warning("metrics: could not publish socket counts", exc_info=True)


def cluster_sockets() -> tuple[dict[str, int], int]:
    """Open sockets by kind summed over every live web process, and how many processes that is.

    This process's own counts are always fresh; other processes' are at most a third of the TTL old."""
    mine = local_sockets()
    if not getattr(settings, "REDIS_URL", ""):
        return mine, 1
    published = shared_store().sockets()
    published.pop(PROCESS_ID, None)
    totals = dict(mine)
    for counts in published.values():
        for kind in SOCKET_KINDS:
            totals[kind] += int(counts.get(kind, 0))
    return totals, 1 + len(published)


# --- reading the database -------------------------------------------------------------------------------
def call_aggregates(*, now: datetime, window: timedelta) -> dict[str, Any]:
    """Calls per team and state that arrived within ``window`` before ``now``, and pending calls per team
    with the arrival of the oldest. Two grouped queries; plain data, so that it can be cached.

    Cost on a big table: the pending query is bounded by the ``(state, deadline)`` index. The window query
    filters on ``created_at`` (no index of its own) *and* on ``deadline >= start``, which every call of the
    window satisfies (a deadline is never before its call's arrival) and which the ``(state, deadline)``
    index answers: the rows read are those of the window, not the whole table.
    """
    from approvals.models import ToolCall

    start = now - window
    recent = (
        ToolCall.objects.filter(state__in=ToolCall.State.values, deadline__gte=start, created_at__gte=start)
        .values_list("team__slug", "state")
        .annotate(n=Count("pk"))
        .order_by()
    )
    pending = (
        ToolCall.objects.filter(state=ToolCall.State.PENDING)
        .values_list("team__slug")
        .annotate(n=Count("pk"), oldest=Min("created_at"))
        .order_by()
    )
    return {
        "recent": [[team, state, n] for team, state, n in recent],
        "pending": [[team, n, oldest.timestamp()] for team, n, oldest in pending],
    }


def _cached_call_aggregates() -> dict[str, Any]:
    """``call_aggregates``, shared through the Django cache for ``SIGNOFF_METRICS_CACHE_SECONDS``."""
    seconds = float(settings.SIGNOFF_METRICS_CACHE_SECONDS)
    window = timedelta(hours=settings.SIGNOFF_METRICS_WINDOW_HOURS)
    if seconds <= 0:
        return call_aggregates(now=timezone.now(), window=window)
    key = f"signoff:metrics:calls:{settings.SIGNOFF_METRICS_WINDOW_HOURS}"
    try:
        cached = cache.get(key)
    except Exception:
        cached = None  # the cache is down: the database still answers
    if cached is not None:
        return dict(cached)
    fresh = call_aggregates(now=timezone.now(), window=window)
    try:
        cache.set(key, fresh, timeout=seconds)
    except Exception:
        log.warning("metrics: could not cache call aggregates", exc_info=True)
    return fresh


# --- the collector ----------------------------------------------------------------------------------------
class SignoffCollector(Collector):
    """Signoff's own metrics, computed at each scrape (see the module's docstring for where each is from).

    A source that fails (database, shared store) drops its families from this scrape and sets
    ``signoff_metrics_source_up{source=…}`` to 0, rather than failing the whole scrape.
    """

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "signoff_metrics_source_up",
            "Whether this scrape could read a source of Signoff's metrics (1) or not (0).",
            labels=["source"],
        )
        try:
            yield from self._calls()
            up.add_metric(["database"], 1)
        except Exception:
            log.warning("metrics: could not read calls from the database", exc_info=True)
            up.add_metric(["database"], 0)
        try:
            yield from self._shared()
            up.add_metric(["shared_store"], 1)
        except Exception:
            log.warning("metrics: could not read the shared store", exc_info=True)
            up.add_metric(["shared_store"], 0)
        yield up

    def _calls(self) -> Iterator[Metric]:
        data = _cached_call_aggregates()  # read fully before yielding: a failure yields nothing
        hours = settings.SIGNOFF_METRICS_WINDOW_HOURS
        window = GaugeMetricFamily(
            "signoff_calls_window_seconds",
            "The window of signoff_calls_recent: calls that arrived this many seconds before the scrape.",
            value=hours * 3600,
        )
        recent = GaugeMetricFamily(
            "signoff_calls_recent",
            f"Calls that arrived in the last {hours} h, by team and current state "
            "(pending, allowed, denied, expired, cancelled, completed, failed).",
            labels=["team", "state"],
        )
        teams: set[str] = set()
        for team, state, count in data["recent"]:
            recent.add_metric([team, state], count)
            teams.add(team)
        pending = GaugeMetricFamily(
            "signoff_calls_pending", "Calls held for a reviewer's decision now, by team.", labels=["team"]
        )
        oldest = GaugeMetricFamily(
            "signoff_calls_pending_oldest_age_seconds",
            "Age of the oldest call held for a decision, by team.",
            labels=["team"],
        )
        now = time.time()
        waiting: set[str] = set()
        for team, count, first in data["pending"]:
            pending.add_metric([team], count)
            oldest.add_metric([team], max(0.0, now - first))
            waiting.add(team)
        for team in sorted(teams - waiting):  # an active team with nothing held reads 0, not "no data"
            pending.add_metric([team], 0)
        yield from (window, recent, pending, oldest)

    def _shared(self) -> Iterator[Metric]:
        store = shared_store()
        families: list[Metric] = []
        rate_limits = CounterMetricFamily(
            "signoff_rate_limit_hits",
            "Calls denied by a rate limit, by team and the limit's scope (token, team, tool).",
            labels=["team", "scope"],
        )
        for labels, value in _parsed(store.read(_RATE_LIMIT_HITS)):
            rate_limits.add_metric([labels.get("team", ""), labels.get("scope", "")], value)
        families.append(rate_limits)
        failures = CounterMetricFamily(
            "signoff_notification_failures",
            "Notifications that could not be delivered after their last retry, by channel kind.",
            labels=["kind"],
        )
        for labels, value in _parsed(store.read(_NOTIFICATION_FAILURES)):
            failures.add_metric([labels.get("kind", "")], value)
        families.append(failures)
        purged = CounterMetricFamily(
            "signoff_payloads_purged",
            "Calls whose arguments and result retention cleared, by team.",
            labels=["team"],
        )
        for labels, value in _parsed(store.read(_PAYLOADS_PURGED)):
            purged.add_metric([labels.get("team", "")], value)
        families.append(purged)
        families.append(_decision_histogram(store.read(_DECISIONS)))
        totals, processes = cluster_sockets()
        families.append(
            GaugeMetricFamily(
                "signoff_connected_bridges",
                "Bridges connected now, summed over every live web process.",
                value=totals["bridge"],
            )
        )
        families.append(
            GaugeMetricFamily(
                "signoff_connected_reviewers",
                "Reviewers' queue pages connected now, summed over every live web process.",
                value=totals["reviewer"],
            )
        )
        families.append(
            GaugeMetricFamily(
                "signoff_web_processes",
                "Web (Daphne) processes whose socket counts are in the two gauges above.",
                value=processes,
            )
        )
        yield from families


def _parsed(values: dict[str, float]) -> Iterator[tuple[dict[str, str], float]]:
    for key, value in sorted(values.items()):
        yield json.loads(key), value


def _decision_histogram(values: dict[str, float]) -> HistogramMetricFamily:
    histogram = HistogramMetricFamily(
        "signoff_decision_latency_seconds",
        "Time from a call's arrival to a reviewer's decision, by decision (allowed or denied).",
        labels=["decision"],
    )
    per_decision: dict[str, dict[str, float]] = {}
    for labels, value in _parsed(values):
        name = labels.get("le") or labels.get("stat", "")
        per_decision.setdefault(labels.get("decision", ""), {})[name] = value
    for decision, fields in sorted(per_decision.items()):
        buckets = [(_le(bound), fields.get(_le(bound), 0.0)) for bound in DECISION_BUCKETS]
        buckets.append(("+Inf", fields.get("+Inf", 0.0)))
        histogram.add_metric([decision], buckets, sum_value=fields.get("sum", 0.0))
    return histogram


def registry() -> CollectorRegistry:
    """A registry for one scrape: Signoff's collector and this process's basics.

    Built per scrape (cheap) rather than global, so that nothing registered elsewhere leaks in.
    """
    built = CollectorRegistry(auto_describe=False)
    built.register(SignoffCollector())
    ProcessCollector(registry=built)
    PlatformCollector(registry=built)
    GCCollector(registry=built)
    return built

"""For operators: structured logs, /metrics, /healthz, /readyz and payload retention."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.http import HttpResponse
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from approvals import metrics
from approvals.health_views import readiness
from approvals.logging import (
    JsonFormatter,
    LogContextFilter,
    RequestIdMiddleware,
    TextFormatter,
    log_bind,
    log_context,
    log_fields,
    log_formatter,
)
from approvals.masking import SecretMaskingFilter
from approvals.models import AuditEvent, Team, ToolCall
from approvals.services.audit import audit_verify
from approvals.services.calls import call_decide
from approvals.services.retention import payloads_purge_due, team_payloads_purge

from .conftest import Issued, clear_cache, throwaway_redis

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sgo_1234abcd_Zt6qQm9vX2pLr8sT0uWy"


# --- structured logs -----------------------------------------------------------------------------------
def capture(formatter: logging.Formatter) -> tuple[logging.Logger, StringIO]:
    """A logger wired as settings wire the server's handler: masking, then context, then the formatter."""
    stream = StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretMaskingFilter())
    handler.addFilter(LogContextFilter())
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"signoff.test.{id(stream)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def lines(stream: StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_json_formatter_writes_one_object_per_line_with_the_context_ids() -> None:
    logger, stream = capture(JsonFormatter())
    with log_context(request_id="req-1", call_id="c0ffee", team="alpha", user="rita@example.com"):
        logger.info("decided %s", "allow")
    logger.warning("outside any request")
    inside, outside = lines(stream)
    assert inside["message"] == "decided allow"
    assert (inside["level"], inside["logger"]) == ("INFO", logger.name)
    assert inside["time"].endswith("Z") and "T" in inside["time"]
    assert {k: inside[k] for k in ("request_id", "call_id", "team", "user")} == {
        "request_id": "req-1",
        "call_id": "c0ffee",
        "team": "alpha",
        "user": "rita@example.com",
    }
    assert not {"request_id", "call_id", "team", "user"} & set(outside)


def test_secrets_are_masked_in_json_lines_and_their_tracebacks() -> None:
    logger, stream = capture(JsonFormatter())
    try:
        raise RuntimeError(f"upstream refused Authorization: Bearer {SECRET}")
    except RuntimeError:
        logger.exception("call failed with token=%s", SECRET)
    (entry,) = lines(stream)
    assert SECRET not in stream.getvalue()
    assert "sgo_1234abcd…[masked]" in entry["message"]
    assert "RuntimeError" in entry["exception"] and SECRET not in entry["exception"]


def test_the_text_formatter_appends_the_known_ids_for_people() -> None:
    logger, stream = capture(TextFormatter())
    with log_context(request_id="r2", team="alpha"):
        logger.info("hello")
    assert stream.getvalue().rstrip().endswith("hello [request_id=r2 team=alpha]")


def test_a_client_supplied_value_cannot_forge_a_log_line() -> None:
    logger, stream = capture(TextFormatter())
    with log_context(call_id="x\nFAKE 2025 CRITICAL root pwned"):
        logger.info("decide")
    assert len(stream.getvalue().splitlines()) == 1
    assert log_fields() == {}


def test_log_bind_unbinds_with_none() -> None:
    with log_context(request_id="a", call_id="b"):
        log_bind(call_id=None)
        assert log_fields() == {"request_id": "a"}


def test_the_log_format_comes_from_the_setting() -> None:
    assert isinstance(log_formatter("json"), JsonFormatter)
    assert isinstance(log_formatter("text"), TextFormatter)
    with pytest.raises(ValueError, match="json or text"):
        log_formatter("xml")


def test_signoff_log_format_json_makes_the_server_log_json_on_stderr(tmp_path: Path) -> None:
    """The whole path: environment → settings' LOGGING → a masked JSON line on stderr."""
    env = {
        **os.environ,
        "SIGNOFF_LOG_FORMAT": "json",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SIGNOFF_STATE_DIR": str(tmp_path),  # not the checkout's .signoff/
    }
    code = f"import logging; logging.getLogger('signoff.probe').warning('password=hunter22 token {SECRET}')"
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    entry = json.loads(done.stderr.strip().splitlines()[-1])
    assert entry["logger"] == "signoff.probe" and entry["level"] == "WARNING"
    assert "hunter22" not in entry["message"] and SECRET not in entry["message"]


# --- request ids ---------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_every_response_carries_a_request_id() -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert len(response["X-Request-ID"]) == 32


@pytest.mark.django_db
def test_a_safe_incoming_request_id_is_kept_and_an_unsafe_one_replaced() -> None:
    kept = Client().get("/healthz", HTTP_X_REQUEST_ID="lb-7f3a.91:02")
    assert kept["X-Request-ID"] == "lb-7f3a.91:02"
    for bad in ("has space", "<script>", "x" * 129, ""):
        replaced = Client().get("/healthz", HTTP_X_REQUEST_ID=bad)
        assert replaced["X-Request-ID"] != bad and len(replaced["X-Request-ID"]) == 32


def test_log_lines_inside_a_request_carry_its_id_and_user() -> None:
    logger, stream = capture(JsonFormatter())

    class Someone:
        is_authenticated = True

        def get_username(self) -> str:
            return "rita@example.com"

    def view(request: Any) -> HttpResponse:
        request._cached_user = Someone()  # as AuthenticationMiddleware leaves it once the user was read
        logger.info("in the view")
        return HttpResponse("ok")

    request = RequestFactory().get("/", HTTP_X_REQUEST_ID="abc-123")
    response = RequestIdMiddleware(view)(request)
    logger.info("after the request")
    inside, after = lines(stream)
    assert (inside["request_id"], inside["user"]) == ("abc-123", "rita@example.com")
    assert response["X-Request-ID"] == "abc-123" and "request_id" not in after


async def test_the_request_id_middleware_works_in_async_mode_too() -> None:
    seen: list[dict[str, str]] = []

    async def view(request: Any) -> HttpResponse:
        seen.append(log_fields())
        return HttpResponse("ok")

    response = await RequestIdMiddleware(view)(RequestFactory().get("/"))
    assert seen[0]["request_id"] == response["X-Request-ID"]
    assert log_fields() == {}


# --- metrics -------------------------------------------------------------------------------------------
@pytest.fixture
def store(settings: Any) -> Iterator[metrics.MemoryStore]:
    """A fresh in-memory shared store, and no caching of the database aggregates."""
    fresh = metrics.MemoryStore()
    metrics.use_store(fresh)
    settings.SIGNOFF_METRICS_CACHE_SECONDS = 0
    settings.SIGNOFF_METRICS_TOKEN = ""
    yield fresh
    metrics.use_store(None)


def scrape() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics`` parsed: ``{sample name: {sorted labels: value}}``."""
    response = Client().get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float | None:
    return samples.get(name, {}).get(tuple(sorted(labels.items())))


@pytest.mark.django_db
def test_metrics_count_calls_by_team_and_state_and_the_pending_ones(
    store,
    team_a,
    team_b,
    member_token: Issued,
    outsider_token: Issued,
    reviewer,
    submit,
    django_capture_on_commit_callbacks,
) -> None:
    held = submit(member_token.token, arguments={"path": "/a"}).call
    submit(member_token.token, arguments={"path": "/b"})
    submit(member_token.token, tool="nope", tool_hash=None)  # an unknown tool: denied at once
    submit(outsider_token.token)
    with django_capture_on_commit_callbacks(execute=True):
        call_decide(call_id=str(held.pk), reviewer=reviewer, allow=False, reason="no")
    samples = scrape()
    assert value(samples, "signoff_calls_recent", team="alpha", state="denied") == 2
    assert value(samples, "signoff_calls_recent", team="alpha", state="pending") == 1
    assert value(samples, "signoff_calls_recent", team="bravo", state="pending") == 1
    assert value(samples, "signoff_calls_pending", team="alpha") == 1
    assert value(samples, "signoff_calls_pending", team="bravo") == 1
    assert 0 <= value(samples, "signoff_calls_pending_oldest_age_seconds", team="alpha") < 60  # type: ignore[operator]
    assert value(samples, "signoff_calls_window_seconds") == 24 * 3600
    assert value(samples, "signoff_metrics_source_up", source="database") == 1
    # Process basics of the process that answered.
    assert value(samples, "process_resident_memory_bytes") is not None or sys.platform != "linux"
    assert "python_info" in samples


@pytest.mark.django_db
def test_a_call_older_than_the_window_is_not_counted_but_still_pending(store, member_token, submit) -> None:
    old = submit(member_token.token).call
    long_ago = timezone.now() - timedelta(hours=30)
    ToolCall.objects.filter(pk=old.pk).update(
        created_at=long_ago, deadline=timezone.now() + timedelta(hours=1)
    )
    samples = scrape()
    assert value(samples, "signoff_calls_recent", team="alpha", state="pending") is None
    assert value(samples, "signoff_calls_pending", team="alpha") == 1
    assert value(samples, "signoff_calls_pending_oldest_age_seconds", team="alpha") >= 30 * 3600  # type: ignore[operator]


@pytest.mark.django_db
def test_the_decision_latency_histogram_observes_human_decisions_only(
    store, member_token, reviewer, submit, django_capture_on_commit_callbacks
) -> None:
    first = submit(member_token.token, arguments={"n": 1}).call
    second = submit(member_token.token, arguments={"n": 2}).call
    ToolCall.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(seconds=45))
    submit(member_token.token, tool="nope", tool_hash=None)  # decided by Signoff: not a human decision
    with django_capture_on_commit_callbacks(execute=True):
        call_decide(call_id=str(first.pk), reviewer=reviewer, allow=True)
        call_decide(call_id=str(second.pk), reviewer=reviewer, allow=False)
    samples = scrape()
    name = "signoff_decision_latency_seconds"
    assert value(samples, f"{name}_count", decision="allowed") == 1
    assert value(samples, f"{name}_count", decision="denied") == 1
    assert value(samples, f"{name}_bucket", decision="allowed", le="30.0") == 0
    assert value(samples, f"{name}_bucket", decision="allowed", le="60.0") == 1
    assert value(samples, f"{name}_bucket", decision="denied", le="5.0") == 1
    assert 44 <= value(samples, f"{name}_sum", decision="allowed") < 60  # type: ignore[operator]


@pytest.mark.django_db
def test_counters_of_other_modules_reach_the_scrape(store) -> None:
    metrics.count_rate_limit_hit(team_slug="alpha", scope="token")
    metrics.count_rate_limit_hit(team_slug="alpha", scope="token")
    metrics.count_notification_failure(kind="slack")
    samples = scrape()
    assert value(samples, "signoff_rate_limit_hits_total", team="alpha", scope="token") == 2
    assert value(samples, "signoff_notification_failures_total", kind="slack") == 1


@pytest.mark.django_db
def test_a_database_failure_drops_the_call_metrics_but_not_the_scrape(store, monkeypatch) -> None:
    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("database down")

    monkeypatch.setattr(metrics, "call_aggregates", broken)
    metrics.count_notification_failure(kind="email")
    samples = scrape()
    assert value(samples, "signoff_metrics_source_up", source="database") == 0
    assert "signoff_calls_pending" not in samples
    assert value(samples, "signoff_notification_failures_total", kind="email") == 1


@pytest.mark.django_db
def test_the_database_aggregates_are_shared_for_a_few_seconds(store, settings, member_token, submit) -> None:
    settings.SIGNOFF_METRICS_CACHE_SECONDS = 60
    clear_cache()
    submit(member_token.token, arguments={"n": 1})
    assert value(scrape(), "signoff_calls_pending", team="alpha") == 1
    submit(member_token.token, arguments={"n": 2})
    assert value(scrape(), "signoff_calls_pending", team="alpha") == 1  # the cached answer
    clear_cache()
    assert value(scrape(), "signoff_calls_pending", team="alpha") == 2


# --- /metrics access ------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_without_a_token_metrics_answer_loopback_only(store) -> None:
    assert Client().get("/metrics").status_code == 200  # the test client comes from 127.0.0.1
    assert Client(REMOTE_ADDR="::1").get("/metrics").status_code == 200
    refused = Client(REMOTE_ADDR="10.1.2.3").get("/metrics")
    assert refused.status_code == 401 and refused["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
def test_with_a_token_metrics_need_it_from_everywhere(store, settings) -> None:
    settings.SIGNOFF_METRICS_TOKEN = "s3cret-scrape-token"
    assert Client().get("/metrics").status_code == 401  # loopback is not enough then
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Basic s3cret-scrape-token").status_code == 401
    remote = Client(REMOTE_ADDR="10.1.2.3")
    assert remote.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-scrape-token").status_code == 200


def test_the_operator_endpoints_are_outside_the_approvals_namespace() -> None:
    assert (reverse("healthz"), reverse("readyz"), reverse("metrics")) == ("/healthz", "/readyz", "/metrics")


# --- connected sockets ------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
async def test_bridges_and_reviewers_are_counted_while_connected(
    store, member_token: Issued, reviewer, session_cookie, monkeypatch
) -> None:
    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator
    from django.db import connections

    from config.asgi import application
    from mcpbridge import protocol

    from .conftest import SERVER, TOOL_HASH

    before = metrics.local_sockets()
    fields_seen: list[dict[str, str]] = []
    real_observe = metrics.observe_human_decision

    def observe(**kwargs: Any) -> None:
        fields_seen.append(log_fields())  # the log context reached the service's thread
        real_observe(**kwargs)

    monkeypatch.setattr(metrics, "observe_human_decision", observe)
    cookie = await database_sync_to_async(session_cookie)(reviewer)
    bridge = WebsocketCommunicator(
        application, "/ws/bridge/", headers=[(b"authorization", f"Bearer {member_token.raw}".encode())]
    )
    page = WebsocketCommunicator(
        application, "/ws/review/?team=alpha", headers=[(b"origin", b"http://127.0.0.1"), (b"cookie", cookie)]
    )
    try:
        assert (await bridge.connect(timeout=3))[0]
        assert (await page.connect(timeout=3))[0]
        await page.receive_from(timeout=3)  # the snapshot
        now = metrics.local_sockets()
        assert now["bridge"] == before["bridge"] + 1 and now["reviewer"] == before["reviewer"] + 1
        totals, processes = metrics.cluster_sockets()
        assert totals["bridge"] >= 1 and totals["reviewer"] >= 1 and processes >= 1
        hello = protocol.Hello(
            protocol=protocol.PROTOCOL_VERSION,
            bridge_version="test",
            upstream=protocol.UpstreamInfo(name=SERVER, transport="stdio"),
            tools=[protocol.ToolInfo(name="read_file", hash=TOOL_HASH)],
        )
        await bridge.send_to(text_data=protocol.encode(hello))
        await bridge.receive_from(timeout=3)  # welcome
        await bridge.send_to(
            text_data=protocol.encode(protocol.Call(ref="r1", tool="read_file", arguments={}))
        )
        decision = json.loads(await bridge.receive_from(timeout=3))
        call_id = decision["call_id"]
        await page.receive_from(timeout=3)  # the held call
        await page.send_to(text_data=json.dumps({"type": "decide", "call_id": call_id, "decision": "deny"}))
        for _ in range(5):
            if json.loads(await page.receive_from(timeout=3))["type"] == "decided":
                break
        assert fields_seen and fields_seen[0]["call_id"] == call_id
        assert fields_seen[0]["team"] == "alpha" and fields_seen[0]["user"] == reviewer.get_username()
        assert len(fields_seen[0]["request_id"]) == 32
    finally:
        for sock in (bridge, page):
            with contextlib.suppress(Exception):
                await sock.disconnect(timeout=3)
        await database_sync_to_async(connections.close_all)()
    assert metrics.local_sockets() == before


# --- the Redis store, for real --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A throw-away redis-server of our own (the installed binary), on a free port."""
    with throwaway_redis(tmp_path) as url:
        yield url


def test_the_redis_store_is_shared_by_processes_and_forgets_dead_ones(redis_url: str) -> None:
    one = metrics.RedisStore(redis_url, "test")
    two = metrics.RedisStore(redis_url, "test")  # another process's handle
    one.add("f", {"a": 1.0})
    two.add("f", {"a": 1.0, "sum": 0.25})
    two.add("f", {"sum": 2.0})  # an integral increment of a field that holds a fraction
    assert one.read("f") == {"a": 2.0, "sum": 2.25}
    one.publish_sockets("web-1", {"bridge": 2, "reviewer": 1})
    two.publish_sockets("web-2", {"bridge": 1, "reviewer": 0})
    assert two.sockets() == {"web-1": {"bridge": 2, "reviewer": 1}, "web-2": {"bridge": 1, "reviewer": 0}}
    one.withdraw_sockets("web-1")
    assert list(two.sockets()) == ["web-2"]


def test_a_store_outage_never_fails_the_counted_event(monkeypatch) -> None:
    metrics.use_store(metrics.RedisStore(f"redis://127.0.0.1:{free_port()}/0", "test"))
    try:
        metrics.count_rate_limit_hit(team_slug="alpha", scope="team")  # logs, does not raise
        metrics.observe_decision(decision="allowed", seconds=3)
    finally:
        metrics.use_store(None)


# --- /healthz and /readyz --------------------------------------------------------------------------------
@pytest.mark.django_db
def test_healthz_says_ok_without_touching_anything() -> None:
    response = Client().get("/healthz")
    assert (response.status_code, response.content) == (200, b"ok\n")


@pytest.mark.django_db
def test_readyz_names_every_check_and_passes_when_all_answer() -> None:
    response = Client().get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "cache", "channel_layer", "broker"}
    assert all(check["ok"] for check in body["checks"].values())


@pytest.mark.django_db
def test_readyz_is_503_when_the_channel_layer_and_broker_are_unreachable(settings) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [closed]}}
    }
    settings.REDIS_URL = closed
    settings.CELERY_BROKER_URL = closed
    started = time.monotonic()
    response = Client().get("/readyz")
    body = response.json()
    assert response.status_code == 503 and body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["channel_layer"]["ok"] is False
    assert body["checks"]["broker"]["ok"] is False
    assert "127.0.0.1" not in json.dumps(body)  # the public body names the failure, not the address
    assert time.monotonic() - started < 15


@pytest.mark.django_db
def test_readiness_reports_a_failing_database(monkeypatch) -> None:
    from approvals import health_views

    def down() -> str:
        raise ConnectionError("no database")

    monkeypatch.setitem(health_views.CHECKS, "database", down)
    ready, checks = readiness()
    assert not ready and checks["database"] == {
        "ok": False,
        "error": "ConnectionError",
        "ms": checks["database"]["ms"],
    }


# --- retention -------------------------------------------------------------------------------------------
@pytest.fixture
def aged(member_token: Issued, submit: Callable[..., Any]) -> Callable[..., ToolCall]:
    """A call of the member's token in a given state, finished ``days`` ago."""

    def _aged(state: str, days: float, token: Any = None, **arguments: Any) -> ToolCall:
        call = submit(
            token or member_token.token, arguments=arguments or {"path": "/srv/secret", "n": days}
        ).call
        moment = timezone.now() - timedelta(days=days)
        finished = moment if state in {"completed", "failed", "cancelled"} else None
        decided = moment if state != "pending" else None
        ToolCall.objects.filter(pk=call.pk).update(
            state=state,
            created_at=moment - timedelta(minutes=5),
            decided_at=decided,
            finished_at=finished,
            result_summary="the file says password=hunter22" if finished else "",
            reason="kept: the decision",
        )
        call.refresh_from_db()
        return call

    return _aged


def set_retention(team: Team, days: int) -> None:
    Team.objects.filter(pk=team.pk).update(payload_retention_days=days)
    team.refresh_from_db()


@pytest.mark.django_db
def test_retention_clears_only_old_finished_calls_of_teams_that_limit_it(
    store, team_a, team_b, outsider_token: Issued, aged, django_capture_on_commit_callbacks
) -> None:
    set_retention(team_a, 30)
    set_retention(team_b, 0)
    old_denied = aged("denied", 40)
    old_completed = aged("completed", 31)
    old_expired = aged("expired", 45)
    recent = aged("completed", 10)
    held = aged("pending", 60)  # not finished: kept whatever its age
    allowed = aged("allowed", 60)  # running (or about to): kept
    kept_by_team = aged("denied", 400, token=outsider_token.token)
    with django_capture_on_commit_callbacks(execute=True):
        (alpha,) = payloads_purge_due()
    assert (alpha.team, alpha.purged, alpha.more) == ("alpha", 3, False)
    for call in (old_denied, old_completed, old_expired):
        call.refresh_from_db()
        assert (call.arguments, call.result_summary, call.reason) == ({}, "", "kept: the decision")
        assert call.payload_purged_at is not None
    for call in (recent, held, allowed, kept_by_team):
        call.refresh_from_db()
        assert call.arguments and call.payload_purged_at is None
    event = AuditEvent.objects.get(kind="retention.purged")
    assert (event.team_id, event.data["count"], event.data["retention_days"]) == (team_a.pk, 3, 30)
    assert event.data["cutoff"].startswith(alpha.cutoff.strftime("%Y-%m-%dT%H:%M"))
    assert audit_verify().intact
    assert value(scrape(), "signoff_payloads_purged_total", team="alpha") == 3


@pytest.mark.django_db
def test_retention_works_in_batches_and_audits_once_per_run(team_a, aged) -> None:
    set_retention(team_a, 1)
    for n in range(5):
        aged("denied", 2, n=n)
    first = team_payloads_purge(team=team_a, batch_size=2, max_per_run=3)
    assert first is not None and (first.purged, first.more) == (3, True)
    assert list(AuditEvent.objects.filter(kind="retention.purged").values_list("data__count", flat=True)) == [
        3
    ]
    second = team_payloads_purge(team=team_a, batch_size=2, max_per_run=3)
    assert second is not None and (second.purged, second.more) == (2, False)
    third = team_payloads_purge(team=team_a)
    assert third is not None and third.purged == 0
    assert AuditEvent.objects.filter(kind="retention.purged").count() == 2  # nothing due: nothing audited
    assert ToolCall.objects.filter(payload_purged_at__isnull=False).count() == 5
    assert audit_verify().intact


@pytest.mark.django_db
def test_the_audit_chain_verifies_after_a_purge(team_a, aged) -> None:
    set_retention(team_a, 7)
    aged("completed", 8)
    aged("denied", 9)
    payloads_purge_due()
    out = StringIO()
    call_command("verify_audit", stdout=out)
    assert "Audit chain intact" in out.getvalue()
    assert AuditEvent.objects.filter(kind="retention.purged").count() == 1


@pytest.mark.django_db
def test_purge_payloads_dry_run_changes_nothing(team_a, aged) -> None:
    set_retention(team_a, 30)
    old = aged("denied", 31)
    aged("denied", 3)
    out = StringIO()
    call_command("purge_payloads", "--dry-run", stdout=out)
    assert "alpha: would clear 1 call(s)" in out.getvalue()
    assert "1 call payload(s) would be cleared." in out.getvalue()
    old.refresh_from_db()
    assert old.arguments and old.payload_purged_at is None
    assert not AuditEvent.objects.filter(kind="retention.purged").exists()
    call_command("purge_payloads", stdout=(out := StringIO()))
    assert "alpha: cleared 1 call(s)" in out.getvalue()
    old.refresh_from_db()
    assert old.arguments == {} and old.payload_purged_at is not None


@pytest.mark.django_db
def test_the_celery_task_purges_and_beat_schedules_it(team_a, aged, settings) -> None:
    from approvals.tasks import purge_payloads

    set_retention(team_a, 30)
    aged("denied", 31)
    assert purge_payloads() == 1  # the task's body, in this process
    assert settings.CELERY_BEAT_SCHEDULE["purge-payloads"]["task"] == purge_payloads.name
    assert ToolCall.objects.filter(payload_purged_at__isnull=False).count() == 1


@pytest.mark.django_db
def test_history_and_call_page_say_the_payload_was_cleared(team_a, admin, aged) -> None:
    set_retention(team_a, 30)
    call = aged("completed", 31)
    payloads_purge_due()
    client = Client()
    client.force_login(admin)
    day = timezone.now().strftime("%Y-%m-%d")
    history = client.get(reverse("approvals:history")).content.decode()
    assert f"arguments cleared by retention on {day}" in history
    detail = client.get(reverse("approvals:call_detail", args=[call.pk])).content.decode()
    assert f"Arguments cleared by retention on {day}" in detail
    assert f"Result cleared by retention on {day}" in detail


@pytest.mark.django_db
def test_the_retention_is_a_team_setting_audited_when_changed(team_a, admin) -> None:
    client = Client()
    client.force_login(admin)
    page = client.get(reverse("approvals:team_settings"))
    assert 'name="payload_retention_days"' in page.content.decode()
    form = {"name": "Alpha", "mode": "review", "default_deadline_seconds": 600}
    assert (
        client.post(reverse("approvals:team_settings"), {**form, "payload_retention_days": 0}).status_code
        == 302
    )
    team_a.refresh_from_db()
    assert team_a.payload_retention_days == 0
    event = AuditEvent.objects.get(kind="team.settings_changed")
    assert event.data["changed"] == {"payload_retention_days": 0}
    refused = client.post(reverse("approvals:team_settings"), {**form, "payload_retention_days": -1})
    assert refused.status_code == 200
    client.post(reverse("approvals:team_settings"), form)  # left out: kept
    team_a.refresh_from_db()
    assert team_a.payload_retention_days == 0

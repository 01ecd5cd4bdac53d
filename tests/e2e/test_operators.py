"""For operators, against a real Daphne: /metrics after calls through the real bridge, /healthz, /readyz
(with a dependency really down) and JSON logs.

The same tests run on the embedded default and on PostgreSQL + Redis. The dependency taken down is a
redis-server of the test's own (``/usr/bin/redis-server``), stopped and started again, and a database
that is not there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import (
    SignoffServer,
    bridge,
    free_port,
    make_team,
    reported,
    reviewer_socket,
    running_server,
    text_of,
)

METRICS_TOKEN = "e2e-scrape-token-7c1f"
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``: status, headers (lower-case names) and body, whatever the status."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def scrape(server: SignoffServer) -> Samples:
    status, _, body = fetch(server.url + "/metrics", {"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert status == 200, body
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series is absent (a counter or gauge that never moved)."""
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


@pytest.fixture(scope="module")
def ops_server(celery_worker: None) -> Iterator[SignoffServer]:
    """A Daphne of its own: a metrics token, no caching of the call counts, JSON logs."""
    with running_server(
        "operators",
        SIGNOFF_METRICS_TOKEN=METRICS_TOKEN,
        SIGNOFF_METRICS_CACHE_SECONDS="0",
        SIGNOFF_LOG_FORMAT="json",
    ) as server:
        yield server


# --- /metrics ----------------------------------------------------------------------------------------------
async def test_metrics_reflect_calls_through_the_real_bridge(
    ops_server: SignoffServer, tmp_path: Path
) -> None:
    from approvals.services.rules import rule_create

    team = make_team()
    slug = team.team.slug
    rule_create(team=team.team, by=team.reviewer, effect="allow", server="test", tool="echo")
    before = scrape(ops_server)
    latency = "signoff_decision_latency_seconds"
    async with (
        reviewer_socket(ops_server, team.reviewer, slug) as reviewer,
        bridge(tmp_path, url=ops_server.url, token=team.raw_token) as b,
        anyio.create_task_group() as tasks,
    ):
        connected = scrape(ops_server)
        assert value(connected, "signoff_connected_bridges") >= 1
        assert value(connected, "signoff_connected_reviewers") >= 1
        assert value(connected, "signoff_web_processes") >= 1

        allowed = await b.session.call_tool("echo", {"text": "auto"})
        assert not allowed.is_error and text_of(allowed) == "auto"

        outcome: dict[str, Any] = {}

        async def held_call() -> None:
            outcome["result"] = await b.session.call_tool("write_file", {"path": "/tmp/x", "content": "y"})

        tasks.start_soon(held_call)
        held = await reviewer.pending_call("write_file")
        waiting = scrape(ops_server)
        assert value(waiting, "signoff_calls_pending", team=slug) == 1
        assert value(waiting, "signoff_calls_pending_oldest_age_seconds", team=slug) >= 0
        answer = await reviewer.decide(held["id"], "deny", "not now")
        assert answer["state"] == "denied"
    assert outcome["result"].is_error

    from approvals.models import ToolCall

    await reported(str(ToolCall.objects.get(team=team.team, tool="echo").pk))
    after = scrape(ops_server)
    assert value(after, "signoff_calls_recent", team=slug, state="completed") == 1
    assert value(after, "signoff_calls_recent", team=slug, state="denied") == 1
    assert value(after, "signoff_calls_pending", team=slug) == 0
    # One human decision (the denial); the rule's allow is not one.
    for name, labels in (
        (f"{latency}_count", {"decision": "denied"}),
        (f"{latency}_bucket", {"decision": "denied", "le": "60.0"}),
        (f"{latency}_bucket", {"decision": "denied", "le": "+Inf"}),
    ):
        assert value(after, name, **labels) - value(before, name, **labels) == 1, name
    assert value(after, f"{latency}_count", decision="allowed") == value(
        before, f"{latency}_count", decision="allowed"
    )
    assert (
        value(after, f"{latency}_sum", decision="denied") - value(before, f"{latency}_sum", decision="denied")
        > 0
    )
    assert value(after, "signoff_metrics_source_up", source="database") == 1
    assert value(after, "signoff_metrics_source_up", source="shared_store") == 1
    assert value(after, "process_resident_memory_bytes") > 0

    # The sockets closed with the bridge and the page: the gauges come back down.
    with anyio.fail_after(15):
        while (now := scrape(ops_server)) and value(now, "signoff_connected_bridges") > value(
            before, "signoff_connected_bridges"
        ):
            await anyio.sleep(0.2)


def test_metrics_need_the_token(ops_server: SignoffServer) -> None:
    assert fetch(ops_server.url + "/metrics")[0] == 401
    assert fetch(ops_server.url + "/metrics", {"Authorization": "Bearer wrong"})[0] == 401
    assert fetch(ops_server.url + "/metrics", {"Authorization": f"Bearer {METRICS_TOKEN}"})[0] == 200


# --- /healthz, /readyz -----------------------------------------------------------------------------------
def test_healthz_and_readyz_answer_on_a_healthy_server(ops_server: SignoffServer) -> None:
    status, headers, body = fetch(ops_server.url + "/healthz", {"X-Request-ID": "probe-1"})
    assert (status, body) == (200, b"ok\n")
    assert headers["x-request-id"] == "probe-1"
    status, _, body = fetch(ops_server.url + "/readyz")
    answer = json.loads(body)
    assert status == 200, answer
    assert answer["status"] == "ok"
    assert set(answer["checks"]) == {"database", "cache", "channel_layer", "broker"}
    assert all(check["ok"] for check in answer["checks"].values())


@contextlib.contextmanager
def redis_server(port: int, directory: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server of the test's own on ``port``."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        process.wait(10)


def readyz_until(server: SignoffServer, status: int, timeout: float = 20.0) -> dict[str, Any]:
    """``/readyz`` polled until it answers ``status``; its JSON body."""
    deadline = time.monotonic() + timeout
    while True:
        got, _, body = fetch(server.url + "/readyz")
        if got == status:
            return dict(json.loads(body))
        assert time.monotonic() < deadline, f"/readyz stayed {got}: {body!r}"
        time.sleep(0.3)


def test_readyz_is_503_while_redis_is_down_and_recovers(tmp_path: Path) -> None:
    """A server on a redis-server of the test's own: ready, then the redis-server stops (503, the database
    still fine, the process still alive), then it starts again (ready again, without a restart)."""
    port = free_port()
    with running_server(
        "operators-redis",
        ready_path="/healthz",
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        SIGNOFF_CHANNEL_PREFIX=f"ops-{port}",
    ) as server:
        with redis_server(port, tmp_path):
            up = readyz_until(server, 200)
            assert all(check["ok"] for check in up["checks"].values())
        down = readyz_until(server, 503)
        assert down["status"] == "unavailable"
        checks = down["checks"]
        assert checks["database"]["ok"] is True
        assert not checks["channel_layer"]["ok"] and not checks["cache"]["ok"] and not checks["broker"]["ok"]
        assert fetch(server.url + "/healthz")[0] == 200  # alive, not ready: no restart for an outage
        with redis_server(port, tmp_path):
            back = readyz_until(server, 200)
            assert all(check["ok"] for check in back["checks"].values())


def test_readyz_is_503_without_its_database_and_logs_json(tmp_path: Path) -> None:
    if os.environ.get("DATABASE_URL"):
        missing = {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/signoff_absent"}
    else:
        missing = {"SIGNOFF_SQLITE_PATH": str(tmp_path / "no-such-folder" / "signoff.sqlite3")}
    with running_server(
        "operators-no-database", ready_path="/healthz", SIGNOFF_LOG_FORMAT="json", **missing
    ) as server:
        status, headers, body = fetch(server.url + "/readyz", {"X-Request-ID": "e2e-readyz-1"})
        answer = json.loads(body)
        assert status == 503, answer
        assert headers["x-request-id"] == "e2e-readyz-1"
        assert answer["checks"]["database"]["ok"] is False
        assert answer["checks"]["channel_layer"]["ok"] is True
        assert fetch(server.url + "/healthz")[0] == 200
        deadline = time.monotonic() + 10
        while True:
            entries = [
                json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")
            ]
            mine = [e for e in entries if e.get("request_id") == "e2e-readyz-1"]
            if mine or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert mine, entries[-5:]
    assert mine[0]["logger"] == "approvals.health_views"
    assert mine[0]["level"] == "WARNING" and "database" in mine[0]["message"]
    assert {"time", "level", "logger", "message"} <= set(mine[0])

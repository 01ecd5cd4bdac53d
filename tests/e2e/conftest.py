"""End-to-end harness: a real Daphne, the real mcpbridge process, real upstream MCP servers.

Run with ``pytest -p no:django tests/e2e`` (pytest-django would wrap the database in transactions that
the server process cannot see). The test process and the servers share one database: the embedded
default's SQLite file in a temp dir, or a fresh PostgreSQL database when ``DATABASE_URL`` is set. With
``REDIS_URL`` set the servers use channels-redis, and a real Celery worker with beat enforces deadlines.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
BIN = Path(PYTHON).parent
UPSTREAM = ROOT / "tests" / "upstream_server.py"
ARTIFACTS = ROOT / "test-artifacts"

_STATE = Path(tempfile.mkdtemp(prefix="signoff-e2e-"))
_BASE_DATABASE_URL = os.environ.get("DATABASE_URL", "")
_DB_NAME = f"signoff_e2e_{os.getpid()}"
# Several workers (pytest-xdist, scripts/test.sh) each run their own servers, database (named by pid) and
# channel prefix; with Redis each also takes its own Redis db, so that one worker's Celery does not take
# the other's tasks (the broker's queue is per db).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER and os.environ.get("REDIS_URL"):
    _redis = urlsplit(os.environ["REDIS_URL"])
    _db = int(_redis.path.strip("/") or 0) + int(_WORKER.removeprefix("gw") or 0)
    os.environ["REDIS_URL"] = urlunsplit(_redis._replace(path=f"/{_db % 16}"))


def _is_controller(session: pytest.Session) -> bool:
    """The process that hands tests to the workers and runs none itself."""
    return not _WORKER and bool(getattr(session.config.option, "numprocesses", None))


def _database_url() -> str:
    if not _BASE_DATABASE_URL:
        return ""
    parts = urlsplit(_BASE_DATABASE_URL)
    return urlunsplit(parts._replace(path=f"/{_DB_NAME}"))


def _admin_connect() -> Any:
    import psycopg

    parts = urlsplit(_BASE_DATABASE_URL)
    return psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True)


SERVER_ENV: dict[str, str] = {
    "DJANGO_SETTINGS_MODULE": "config.settings",
    "SIGNOFF_STATE_DIR": str(_STATE),
    "SECRET_KEY": secrets.token_urlsafe(40),
    "SIGNOFF_CHANNEL_PREFIX": f"signoff-e2e-{os.getpid()}",
    "SIGNOFF_LOG_LEVEL": "WARNING",
    # Mails the servers send (invitations, password resets) land here as files, for the tests to read.
    "SIGNOFF_EMAIL_DIR": str(_STATE / "mail"),
    # Notification tests run their webhook receivers on 127.0.0.1, which the SSRF rule refuses by default.
    "SIGNOFF_WEBHOOK_ALLOW_PRIVATE": "1",
    "DATABASE_URL": _database_url(),
}
if not os.environ.get("REDIS_URL"):
    SERVER_ENV["SIGNOFF_INPROCESS_SWEEP_SECONDS"] = "0.5"
os.environ.update(SERVER_ENV)
# The test process reads and writes the database from async tests; the servers never get this flag.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a server process: the test process's, minus test-only flags."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update(extra)
    return env


def pytest_sessionstart(session: pytest.Session) -> None:
    if _is_controller(session):
        return
    if _BASE_DATABASE_URL:
        with _admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{_DB_NAME}"')
            conn.execute(f'CREATE DATABASE "{_DB_NAME}"')
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _BASE_DATABASE_URL and not _is_controller(session):
        from django.db import connections

        connections.close_all()
        with contextlib.suppress(Exception), _admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{_DB_NAME}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# --- servers --------------------------------------------------------------------------------------
@dataclass
class SignoffServer:
    """A real Daphne process serving Signoff on a free port."""

    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Environment of this server on top of the test run's (``running_server(name, NAME=value)``)."""
    ready_path: str = "/accounts/login/"
    """Polled until it answers at start (``/healthz`` for a server whose dependencies are down)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SignoffServer:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(self.port), "config.asgi:application"],
            cwd=ROOT,
            env=child_env(**self.env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_http(self.url + self.ready_path)
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def running_server(name: str, *, ready_path: str = "/accounts/login/", **env: str) -> Iterator[SignoffServer]:
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"daphne-{_WORKER}{'-' if _WORKER else ''}{name}.log"
    log_path.write_bytes(b"")
    server = SignoffServer(port=free_port(), log_path=log_path, env=env, ready_path=ready_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def celery_worker() -> Iterator[None]:
    """With Redis, deadlines are enforced by Celery beat and a worker: run them for real."""
    if not os.environ.get("REDIS_URL"):
        yield
        return
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / f"celery{'-' if _WORKER else ''}{_WORKER}.log").open("ab") as log:
        process = subprocess.Popen(
            [
                str(BIN / "celery"),
                "-A",
                "config",
                "worker",
                "-B",
                "--pool=solo",
                "--loglevel=WARNING",
                "--schedule",
                str(_STATE / "celerybeat-schedule"),
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=ROOT,
            env=child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="session")
def signoff(celery_worker: None) -> Iterator[SignoffServer]:
    """One Daphne shared by the tests that do not kill it."""
    with running_server("shared") as server:
        yield server


@pytest.fixture(scope="session")
def admin_server(signoff: SignoffServer) -> Iterator[SignoffServer]:
    """Where an admin acts while bridges and pages stay on ``signoff``: a second Daphne when Redis joins the
    processes, else ``signoff`` itself (the embedded default's in-memory channel layer is per process)."""
    if not os.environ.get("REDIS_URL"):
        yield signoff
        return
    with running_server("admin-side") as other:
        yield other


# --- people and tokens ----------------------------------------------------------------------------
PASSWORD = "correct horse battery staple 42"


@dataclass
class TeamSetup:
    """A team with an admin-reviewer, a second reviewer, a member with a bridge token."""

    team: Any
    reviewer: Any
    reviewer2: Any
    member: Any
    token: Any
    raw_token: str


def make_team(*, deadline: int = 600, mode: str = "review") -> TeamSetup:
    from approvals.services.teams import member_add, team_create, user_get_or_create
    from approvals.services.tokens import token_issue

    slug = f"t{secrets.token_hex(4)}"
    team = team_create(name=f"Team {slug}", slug=slug)
    team.default_deadline_seconds = deadline
    team.mode = mode
    team.save(update_fields=["default_deadline_seconds", "mode"])
    reviewer = user_get_or_create(email=f"rev-{slug}@example.com", password=PASSWORD)
    reviewer2 = user_get_or_create(email=f"rev2-{slug}@example.com", password=PASSWORD)
    member = user_get_or_create(email=f"dev-{slug}@example.com", password=PASSWORD)
    member_add(team=team, user=reviewer, role="admin")
    member_add(team=team, user=reviewer2, role="reviewer")
    member_add(team=team, user=member, role="member")
    token, raw = token_issue(team=team, user=member, name="laptop")
    return TeamSetup(team, reviewer, reviewer2, member, token, raw)


@pytest.fixture
def team() -> TeamSetup:
    return make_team()


def session_cookie(user: Any) -> str:
    """A logged-in session for ``user``, as Django's login would store it."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()
    return f"{settings.SESSION_COOKIE_NAME}={store.session_key}"


# --- the reviewer's socket --------------------------------------------------------------------------
class ReviewerSocket:
    """A reviewer's page as the server sees it: the review websocket with a session cookie."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.inbox: list[dict[str, Any]] = []

    async def next(self, predicate: Any = None, timeout: float = 10.0) -> dict[str, Any]:
        import anyio

        for index, message in enumerate(self.inbox):
            if predicate is None or predicate(message):
                return self.inbox.pop(index)
        with anyio.fail_after(timeout):
            while True:
                message = json.loads(await self.connection.recv())
                if predicate is None or predicate(message):
                    return message
                self.inbox.append(message)

    async def pending_call(self, tool: str, timeout: float = 20.0) -> dict[str, Any]:
        def is_pending(message: dict[str, Any]) -> bool:
            if message["type"] == "call":
                return message["call"]["tool"] == tool and message["call"]["state"] == "pending"
            return message["type"] == "snapshot" and any(c["tool"] == tool for c in message["calls"])

        message = await self.next(is_pending, timeout)
        if message["type"] == "snapshot":
            return next(c for c in message["calls"] if c["tool"] == tool)
        return message["call"]

    async def held_result(self, tool: str, timeout: float = 20.0) -> dict[str, Any]:
        """The next call of this tool whose result waits for review (from an update or the snapshot)."""

        def held(call: dict[str, Any]) -> bool:
            return call["tool"] == tool and call.get("result_review") == "held"

        def is_held(message: dict[str, Any]) -> bool:
            if message["type"] == "call":
                return held(message["call"])
            return message["type"] == "snapshot" and any(held(c) for c in message["calls"])

        message = await self.next(is_held, timeout)
        if message["type"] == "snapshot":
            return next(c for c in message["calls"] if held(c))
        return message["call"]

    async def decide_result(self, call_id: str, decision: str, reason: str = "") -> dict[str, Any]:
        """Release, mask or block a held result; the page's answer (``decided`` or ``error``)."""
        await self.connection.send(
            json.dumps({"type": "decide_result", "call_id": call_id, "decision": decision, "reason": reason})
        )
        return await self.next(lambda m: m["type"] in {"decided", "error"} and m.get("call_id") == call_id)

    async def decide(self, call_id: str, decision: str, reason: str = "") -> dict[str, Any]:
        await self.connection.send(
            json.dumps({"type": "decide", "call_id": call_id, "decision": decision, "reason": reason})
        )
        return await self.next(lambda m: m["type"] in {"decided", "error"} and m.get("call_id") == call_id)


@contextlib.asynccontextmanager
async def reviewer_socket(server: SignoffServer, user: Any, team_slug: str) -> AsyncIterator[ReviewerSocket]:
    import websockets
    from asgiref.sync import sync_to_async

    cookie = await sync_to_async(session_cookie)(user)
    async with websockets.connect(
        f"ws://127.0.0.1:{server.port}/ws/review/?team={team_slug}",
        additional_headers={"Cookie": cookie},
        origin=server.url,  # type: ignore[arg-type]
    ) as connection:
        yield ReviewerSocket(connection)


# --- the bridge, driven by a real MCP client ---------------------------------------------------------
@dataclass
class Bridge:
    session: Any
    upstream_log: Path
    stderr_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def upstream_calls(self) -> list[dict[str, Any]]:
        if not self.upstream_log.exists():
            return []
        return [json.loads(line) for line in self.upstream_log.read_text().splitlines() if line.strip()]

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""


def bridge_command(
    *, name: str = "test", bridge_args: tuple[str, ...] = (), upstream: list[str] | None = None
) -> list[str]:
    upstream = upstream if upstream is not None else ["--", PYTHON, str(UPSTREAM)]
    return [str(BIN / "mcpbridge"), "--name", name, *bridge_args, *upstream]


def bridge_env(*, url: str, token: str, upstream_log: Path) -> dict[str, str]:
    """The environment of a bridge process: the user's, without the servers' secrets, plus Signoff's."""
    return {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DATABASE_URL", "REDIS_URL", "SECRET_KEY"))
        },
        "SIGNOFF_URL": url,
        "SIGNOFF_TOKEN": token,
        "UPSTREAM_LOG": str(upstream_log),
    }


@contextlib.asynccontextmanager
async def bridge(
    tmp_path: Path,
    *,
    url: str,
    token: str,
    name: str = "test",
    bridge_args: tuple[str, ...] = (),
    upstream: list[str] | None = None,
    message_handler: Any = None,
) -> AsyncIterator[Bridge]:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    upstream_log = tmp_path / f"upstream-{secrets.token_hex(3)}.jsonl"
    stderr_path = tmp_path / f"bridge-{secrets.token_hex(3)}.stderr"
    env = bridge_env(url=url, token=token, upstream_log=upstream_log)
    if "--connect-timeout" not in bridge_args:
        # Generous on a loaded 2-core CI machine; tests about an unreachable server set their own.
        bridge_args = ("--connect-timeout", "15", *bridge_args)
    command = bridge_command(name=name, bridge_args=bridge_args, upstream=upstream)
    params = StdioServerParameters(command=command[0], args=command[1:], env=env)
    with stderr_path.open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, message_handler=message_handler) as session,
        ):
            await session.initialize()
            yield Bridge(session, upstream_log, stderr_path)


class Outcome:
    """The answer to a tool call made in the background."""

    def __init__(self) -> None:
        self.result: Any = None
        self.done = anyio.Event()

    async def wait(self, timeout: float = 30.0) -> Any:
        with anyio.fail_after(timeout):
            await self.done.wait()
        return self.result


def start_call(tasks: Any, request: Bridge | Callable[..., Awaitable[Any]], *args: Any) -> Outcome:
    """Make a request in the background (a reviewer decides meanwhile); the answer lands in the Outcome.

    ``request`` is a session method with its arguments, ``start_call(tasks, b.session.read_resource, uri)``,
    or a bridge, for a tool call: ``start_call(tasks, b, "echo", {"text": "hi"})``.
    """
    outcome = Outcome()
    method = request.session.call_tool if isinstance(request, Bridge) else request

    async def call() -> None:
        outcome.result = await method(*args)
        outcome.done.set()

    tasks.start_soon(call)
    return outcome


def left_queue(call_id: str) -> Any:
    """A reviewer page's message saying the call is no longer pending."""
    return lambda m: m["type"] == "call" and m["call"]["id"] == call_id and m["call"]["state"] != "pending"


def text_of(result: Any) -> str:
    return " ".join(getattr(item, "text", "") for item in result.content)


def call_row(call_id: str) -> Any:
    from approvals.models import ToolCall

    return ToolCall.objects.get(pk=call_id)


async def reported(call_id: str, timeout: float = 10.0) -> Any:
    """The call once the bridge's result report reached Signoff (it is sent after the client's answer)."""
    import anyio

    with anyio.fail_after(timeout):
        while (row := call_row(call_id)).finished_at is None:
            await anyio.sleep(0.05)
    return row


# --- the browser ----------------------------------------------------------------------------------
CHROMIUM = os.environ.get("SIGNOFF_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield instance
        finally:
            await instance.close()


async def browser_login(browser: Any, server: SignoffServer, user: Any) -> Any:
    """A new browser context logged in through the real login form; returns its page."""
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(server.url + "/accounts/login/")
    await page.fill("input[name=login]", user.email)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(lambda url: url.startswith(server.url) and "/accounts/login" not in url)
    return page

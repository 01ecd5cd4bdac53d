"""PostgreSQL killed and restarted under a running Signoff (docs/reliability.md, "The database stops").

The test runs a PostgreSQL cluster of its own (initdb into a temp dir, a free port, trust auth, run as the
``postgres`` OS user when the test runs as root), a Daphne on it (with the in-memory channel layer on the
embedded default, with the suite's Redis when ``REDIS_URL`` is set), the real ``mcpbridge`` and the real
upstream. The cluster is stopped with ``pg_ctl -m immediate`` (every PostgreSQL process killed with no
shutdown: a crash, recovered from the WAL at the next start) and started again on the same data dir and port.

The test process's ORM stays on the suite's database: the team is made, and the rows read, in this cluster
through a subprocess and plain SQL.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
import websockets

from mcpbridge import protocol
from tests.e2e.conftest import (
    ARTIFACTS,
    PYTHON,
    ROOT,
    ReviewerSocket,
    SignoffServer,
    bridge,
    child_env,
    free_port,
    running_server,
    start_call,
    text_of,
)

CLOSE_UNAVAILABLE = 4503


# --- a PostgreSQL cluster of the test's own ---------------------------------------------------------------
def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        pytest.fail(
            "PostgreSQL's server binaries are missing (no /usr/lib/postgresql/*/bin/initdb): this test "
            "runs a cluster of its own. Install them (apt-get install postgresql; .ci/run does)."
        )
    return Path(found[-1]).parent


@dataclass
class Postgres:
    """A throwaway cluster: ``kill`` is a crash (``pg_ctl -m immediate``), ``start`` recovers it."""

    bin: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/signoff"

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        completed = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {completed.stdout.decode()} {completed.stderr.decode()}")

    def init(self) -> Postgres:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            # fsync off: a process crash (all this test does) loses nothing the OS holds.
            "-c fsync=off -c max_connections=40 -c shared_buffers=16MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def kill(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def log(self) -> str:
        path = self.root / "log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def own_postgres() -> Iterator[Postgres]:
    pg_bin = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="signoff-pg-", dir="/tmp"))
    cluster = Postgres(bin=pg_bin, root=root, port=free_port()).init()
    cluster.start()
    try:
        with psycopg.connect(cluster.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
            admin.execute("CREATE DATABASE signoff")
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.kill()
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "postgres-database-faults.log").write_text(cluster.log())
        shutil.rmtree(root, ignore_errors=True)


# Migrates the cluster and makes a team there, as conftest.make_team does on the suite's database.
SETUP = r"""
import json, secrets, sys
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from approvals.services.teams import member_add, team_create, user_get_or_create
from approvals.services.tokens import token_issue

slug = f"t{secrets.token_hex(4)}"
team = team_create(name=f"Team {slug}", slug=slug)
reviewer = user_get_or_create(email=f"rev-{slug}@example.com", password=sys.argv[1])
member = user_get_or_create(email=f"dev-{slug}@example.com", password=sys.argv[1])
member_add(team=team, user=reviewer, role="admin")
member_add(team=team, user=member, role="member")
token, raw = token_issue(team=team, user=member, name="laptop")
store = SessionStore()
store[SESSION_KEY] = str(reviewer.pk)
store[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
store[HASH_SESSION_KEY] = reviewer.get_session_auth_hash()
store.save()
cookie = f"{settings.SESSION_COOKIE_NAME}={store.session_key}"
print(json.dumps({"slug": slug, "token": raw, "cookie": cookie}))
"""


@dataclass
class Team:
    slug: str
    token: str
    cookie: str


def setup_team(env: dict[str, str]) -> Team:
    completed = subprocess.run(
        [PYTHON, "-c", SETUP, secrets.token_urlsafe(16)],
        cwd=ROOT,
        env=child_env(**env),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode()
    return Team(**json.loads(completed.stdout.decode().strip().splitlines()[-1]))


def rows(cluster: Postgres, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        return list(conn.execute(sql, params).fetchall())


@contextlib.asynccontextmanager
async def reviewer_page(server: SignoffServer, team: Team) -> AsyncIterator[ReviewerSocket]:
    async with websockets.connect(
        f"ws://127.0.0.1:{server.port}/ws/review/?team={team.slug}",
        additional_headers={"Cookie": team.cookie},
        origin=server.url,  # type: ignore[arg-type]
    ) as connection:
        yield ReviewerSocket(connection)


async def connect_raw(server: SignoffServer, token: str) -> tuple[protocol.Message, int | None]:
    """A new bridge connection at the protocol level: the server's first frame and its close code."""
    async with websockets.connect(
        f"ws://127.0.0.1:{server.port}{protocol.BRIDGE_PATH}",
        additional_headers={"Authorization": f"Bearer {token}"},
    ) as socket:
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await socket.send(
                protocol.encode(
                    protocol.Hello(
                        protocol=protocol.PROTOCOL_VERSION,
                        bridge_version="test",
                        upstream=protocol.UpstreamInfo(name="raw", transport="stdio"),
                        tools=[],
                    )
                )
            )
        with anyio.fail_after(10):
            first = protocol.parse_server_message(await socket.recv())
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                async for _ in socket:
                    pass
        return first, socket.close_code


# --- the test -----------------------------------------------------------------------------------------------
async def test_postgres_killed_fails_calls_closed_keeps_held_calls_and_recovers_without_a_restart(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    with own_postgres() as cluster:
        env = {
            "DATABASE_URL": cluster.url,
            # Channel groups and cache keys of this Daphne's own, away from the suite's servers on one Redis.
            "SIGNOFF_CHANNEL_PREFIX": f"signoff-e2e-dbfault-{os.getpid()}-{secrets.token_hex(3)}",
        }
        team = setup_team(env)
        with running_server("database-faults", **env) as server:
            assert server.process is not None
            daphne_pid = server.process.pid
            async with (
                # A short grace: if the outage cost the bridge its connection, the held call would be lost.
                bridge(
                    tmp_path, url=server.url, token=team.token, bridge_args=("--reconnect-grace", "2")
                ) as b,
                anyio.create_task_group() as tasks,
            ):
                # A call held for review before the database goes.
                held = start_call(tasks, b, "write_file", {"path": "held", "content": "over an outage"})
                with anyio.fail_after(20):
                    while not rows(cluster, "SELECT id FROM approvals_toolcall WHERE state = 'pending'"):
                        await anyio.sleep(0.1)
                outage = time.monotonic()
                cluster.kill()

                # (a) A new call fails closed, with words a person can act on; it is never run.
                with anyio.fail_after(30):
                    during = await b.session.call_tool("echo", {"text": "during the outage"})
                assert during.is_error and "not run" in text_of(during), text_of(during)
                assert "database" in text_of(during), text_of(during)
                # A new bridge connection is told `unavailable` (close 4503), not an HTTP 500.
                first, code = await connect_raw(server, team.token)
                assert isinstance(first, protocol.Error) and first.code == "unavailable", first
                assert "database" in first.message and code == CLOSE_UNAVAILABLE, (first, code)
                assert b.upstream_calls() == []
                await anyio.sleep(max(0.0, 3.5 - (time.monotonic() - outage)))  # outlast the bridge's grace
                assert not held.done.is_set()

                cluster.start()  # same data dir and port: crash recovery, then the same rows

                # (b) The call held before the crash is still there; a reviewer's Allow runs it, once.
                async with reviewer_page(server, team) as reviewer:
                    pending = await reviewer.pending_call("write_file", timeout=30)
                    assert (await reviewer.decide(pending["id"], "allow"))["state"] == "allowed"
                    result = await held.wait(30)
                    assert not result.is_error, text_of(result)

                    # (c) The service recovered by itself: a new call goes the normal way.
                    after = start_call(tasks, b, "echo", {"text": "after"})
                    again = await reviewer.pending_call("echo", timeout=30)
                    assert (await reviewer.decide(again["id"], "allow"))["state"] == "allowed"
                    assert text_of(await after.wait(30)) == "after"
                # The result reports reach the server after the client's answers.
                with anyio.fail_after(10):
                    while rows(
                        cluster,
                        "SELECT 1 FROM approvals_toolcall WHERE started_at IS NOT NULL"
                        " AND finished_at IS NULL",
                    ):
                        await anyio.sleep(0.1)
            assert server.process.poll() is None and server.process.pid == daphne_pid  # never restarted
            daphne_log = server.log_path.read_text(errors="replace")

        assert [c["arguments"] for c in b.upstream_calls()] == [
            {"path": "held", "content": "over an outage"},
            {"text": "after"},
        ]
        calls = rows(cluster, "SELECT id, state, arguments FROM approvals_toolcall ORDER BY created_at")
        assert [(state, arguments) for _, state, arguments in calls] == [
            ("completed", {"path": "held", "content": "over an outage"}),
            ("completed", {"text": "after"}),
        ], calls  # the call made during the outage never reached the database
        for call_id, _, _ in calls:
            kinds = [
                kind
                for (kind,) in rows(
                    cluster, "SELECT kind FROM approvals_auditevent WHERE call_id = %s ORDER BY seq", call_id
                )
            ]
            assert kinds.index("call.allowed") < kinds.index("call.started") < kinds.index("call.completed")
    # The consumer answered the failed call and the middleware the new connection: neither crashed on it;
    # the embedded default's sweeper logged one line per sweep, not a traceback.
    for source in ("consumers.py", "middleware.py", "sweeper.py"):
        assert f'approvals/{source}", line' not in daphne_log, daphne_log
    assert time.monotonic() - started < 60

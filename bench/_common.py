"""Helpers shared by the benchmarks that drive real Daphne processes (revocation, reviewers, throughput).

The benchmark process sets up the database (migrate, teams, tokens, sessions) through Django, starts Daphne
processes on free ports with the same environment, and talks to them over websockets the way bridges and
reviewers' pages do. ``tests/e2e/conftest.py`` does the same for tests, but importing it rewrites
``DATABASE_URL`` for pytest's own database, so the few lines are kept here for the benchmarks.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TOOL_HASH = "d" * 64


def percentile(values: list[float], q: float) -> float:
    """The value at quantile ``q`` (nearest rank) of ``values``."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_database() -> None:
    """Create the PostgreSQL database ``DATABASE_URL`` names when it does not exist (nothing for SQLite)."""
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        return
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')


def bench_env(name: str, **extra: str) -> dict[str, str]:
    """The servers' environment (also put into this process's), Django set up and the database migrated.

    Without ``DATABASE_URL`` the SQLite file is in a new temporary state directory; channel-layer and cache
    keys get a prefix of their own, so a shared Redis is not disturbed.
    """
    state = Path(tempfile.mkdtemp(prefix=f"signoff-bench-{name}-"))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SIGNOFF_STATE_DIR": str(state),
        "SECRET_KEY": secrets.token_urlsafe(40),
        "SIGNOFF_CHANNEL_PREFIX": f"signoff-bench-{name}-{os.getpid()}",
        "SIGNOFF_LOG_LEVEL": "WARNING",
        **extra,
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    os.environ.update(env)
    # This process sets up teams and tokens from its event loop's thread; the servers never get the flag.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    sys.path.insert(0, str(ROOT))
    ensure_database()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return env


def start_daphne(env: dict[str, str], log: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A Daphne process serving Signoff on a free port; returns it and its ``http://`` URL once it answers."""
    port = free_port()
    out = log.open("ab") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/accounts/login/", timeout=2)
            return process, url
        except Exception:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise
            time.sleep(0.1)


def ws_url(http_url: str, path: str) -> str:
    """``http://host:port`` → ``ws://host:port/path``."""
    return "ws" + http_url.removeprefix("http") + path


def session_cookie(user: Any) -> str:
    """A logged-in session for ``user``, as Django's login would store it (``name=value``)."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()
    return f"{settings.SESSION_COOKIE_NAME}={store.session_key}"


async def bridge_connect(url: str, raw_token: str, server: str = "files", tool: str = "write_file") -> Any:
    """A bridge's socket after ``hello`` → ``welcome``, announcing one tool."""
    import websockets

    from mcpbridge import protocol

    socket_ = await websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {raw_token}"}, max_size=protocol.MAX_FRAME_BYTES
    )
    hello = protocol.Hello(
        protocol=protocol.PROTOCOL_VERSION,
        bridge_version="bench",
        upstream=protocol.UpstreamInfo(name=server, transport="stdio"),
        tools=[protocol.ToolInfo(name=tool, hash=TOOL_HASH)],
    )
    await socket_.send(protocol.encode(hello))
    answer = protocol.parse_server_message(await socket_.recv())
    if not isinstance(answer, protocol.Welcome):
        raise RuntimeError(f"the server answered hello with {answer!r}")
    return socket_


def describe_setup(processes: int) -> str:
    """One line: the configuration the servers run on, and the machine."""
    from django.conf import settings

    database = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    layer = getattr(settings, "CHANNEL_LAYERS", {})["default"]["BACKEND"].rsplit(".", 1)[-1]
    return f"{processes} Daphne process(es); database {database}; channel layer {layer}; {machine()}"


def machine() -> str:
    """CPUs, memory and the load average right now."""
    memory = meminfo_kib("MemTotal") / 1024 / 1024
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, {memory:.1f} GiB, load average {load}"


def meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (``/proc/PID/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples a process's resident memory every ``interval`` seconds in a thread; keeps the peak.

    The kernel's own high-water mark (``VmHWM``) is read too: it also catches peaks between samples.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.first_kib = status_kib(pid, "VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS"))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS"))

    def now_kib(self) -> int:
        return status_kib(self.pid, "VmRSS")

    def hwm_kib(self) -> int:
        return status_kib(self.pid, "VmHWM")


class BridgeConn:
    """A bridge's socket at protocol level: requests answered by ``ref``, pushed decisions recorded.

    Frames are plain JSON (``json.dumps``/``json.loads``, not the pydantic models) so that the client spends
    as little CPU as possible next to the servers it measures on the same machine. ``reader()`` must run
    as a task for the socket's lifetime.
    """

    def __init__(self, socket_: Any, name: str = "b") -> None:
        import asyncio

        self.ws = socket_
        self.name = name
        self._asyncio = asyncio
        self._next = 0
        self.waiting: dict[str, Any] = {}
        self.pushes: dict[str, tuple[str, float]] = {}
        """call id → (state, arrival ``perf_counter``) of the first push that took it out of ``pending``."""
        self.push_waiters: dict[str, Any] = {}
        self.errors: list[dict[str, Any]] = []
        """Error frames without a ``ref`` (and answers nobody waited for)."""

    def ref(self) -> str:
        self._next += 1
        return f"{self.name}-{self._next}"

    async def request(self, frame: dict[str, Any]) -> tuple[dict[str, Any], float, float]:
        """Send a frame with a fresh ``ref``; returns the answer, the send time and the arrival time."""
        import json

        frame["ref"] = ref = self.ref()
        future = self._asyncio.get_running_loop().create_future()
        self.waiting[ref] = future
        sent = time.perf_counter()
        await self.ws.send(json.dumps(frame))
        answer, arrived = await future
        return answer, sent, arrived

    async def pushed(self, call_id: str) -> tuple[str, float]:
        """The first pushed decision for ``call_id`` (waits for it)."""
        if call_id not in self.pushes:
            event = self.push_waiters.setdefault(call_id, self._asyncio.Event())
            await event.wait()
        return self.pushes[call_id]

    async def reader(self) -> None:
        import json

        try:
            async for frame in self.ws:
                arrived = time.perf_counter()
                message = json.loads(frame)
                ref = message.get("ref")
                if ref is not None and ref in self.waiting:
                    self.waiting.pop(ref).set_result((message, arrived))
                elif message.get("type") == "decision" and ref is None:
                    call_id = message["call_id"]
                    if call_id not in self.pushes and message["state"] != "pending":
                        self.pushes[call_id] = (message["state"], arrived)
                        if (event := self.push_waiters.pop(call_id, None)) is not None:
                            event.set()
                else:
                    self.errors.append(message)
        except Exception as exc:
            self.errors.append({"type": "closed", "message": repr(exc)})
        finally:  # the socket closed: every request still waiting fails
            for future in self.waiting.values():
                if not future.done():
                    future.set_exception(RuntimeError(f"bridge socket {self.name} closed"))

"""Fixtures for the fast suite: two teams, and the people the product is about.

Team "alpha" has an admin, a reviewer and a member who owns a bridge token; the outsider reviews for
team "bravo" and owns a token there. Everything is made through the real services.

With no environment the suite runs on the embedded default (SQLite in a throw-away state directory);
with ``DATABASE_URL``/``REDIS_URL`` it runs on PostgreSQL (the channel layer is still the in-memory one:
these tests are about the consumers, not about Redis).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings as django_settings

# Before Django reads its settings: a throw-away state directory (secret key, SQLite file, static root)
# rather than the checkout's .signoff/. Taken back once read, so that no subprocess inherits it.
_STATE_DIR = tempfile.mkdtemp(prefix="signoff-unit-")
os.makedirs(os.path.join(_STATE_DIR, "static"), exist_ok=True)
_OWN_STATE_DIR = "SIGNOFF_STATE_DIR" not in os.environ
os.environ.setdefault("SIGNOFF_STATE_DIR", _STATE_DIR)
_OWN_SETTINGS_MODULE = "DJANGO_SETTINGS_MODULE" not in os.environ
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# With several workers (pytest-xdist), each has its own test database (pytest-django names it per worker)
# and its own keys in a shared Redis: the cache holds rate-limit and alert counts keyed by team and token
# ids, which repeat across the workers' databases, and across runs (a new test database numbers from 1
# again, while Redis keeps the last run's counts until they expire), hence a prefix of this run's own.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
os.environ["SIGNOFF_CHANNEL_PREFIX"] = f"signoff-unit-{_WORKER or 'main'}-{os.urandom(4).hex()}"
django.setup()
if _OWN_STATE_DIR:
    del os.environ["SIGNOFF_STATE_DIR"]
if _OWN_SETTINGS_MODULE:  # so that workers (pytest-xdist), started after this, read the settings here too
    del os.environ["DJANGO_SETTINGS_MODULE"]
# No deadline sweeper thread racing the tests (they call ``calls_expire_due`` themselves). Set here, not
# in the environment: with DJANGO_SETTINGS_MODULE given, pytest-django read the settings before this file.
django_settings.SIGNOFF_INPROCESS_SWEEP_SECONDS = 0.0


IN_MEMORY_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
TOOL_HASH = "a" * 64
OTHER_TOOL_HASH = "b" * 64
SERVER = "files"


@dataclass(frozen=True)
class Issued:
    """A bridge token and the raw value its owner puts in SIGNOFF_TOKEN."""

    token: Any
    raw: str


@pytest.fixture(autouse=True)
def fast_test_settings(settings: Any) -> None:
    """A fresh in-memory channel layer for every test (the layer is rebuilt when the setting changes), and
    a cheap password hasher: these tests are not about password hashing."""
    settings.CHANNEL_LAYERS = IN_MEMORY_LAYERS
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def team_a(db: None) -> Any:
    from approvals.services.teams import team_create

    return team_create(name="Alpha", slug="alpha")


@pytest.fixture
def team_b(db: None) -> Any:
    from approvals.services.teams import team_create

    return team_create(name="Bravo", slug="bravo")


def _person(email: str, team: Any, role: str) -> Any:
    from approvals.services.teams import member_add, user_get_or_create

    user = user_get_or_create(email=email, password="correct horse battery staple")
    member_add(team=team, user=user, role=role)
    return user


@pytest.fixture
def admin(team_a: Any) -> Any:
    """Administers team alpha (admins may also decide)."""
    return _person("ada@example.com", team_a, "admin")


@pytest.fixture
def reviewer(team_a: Any) -> Any:
    """Decides team alpha's calls."""
    return _person("rita@example.com", team_a, "reviewer")


@pytest.fixture
def member(team_a: Any) -> Any:
    """Owns a bridge token in team alpha; may not decide."""
    return _person("max@example.com", team_a, "member")


@pytest.fixture
def outsider(team_b: Any) -> Any:
    """A reviewer, but of team bravo: nothing of alpha's is theirs."""
    return _person("otto@example.com", team_b, "reviewer")


@pytest.fixture
def member_token(member: Any, team_a: Any) -> Issued:
    from approvals.services.tokens import token_issue

    token, raw = token_issue(team=team_a, user=member, name="laptop")
    return Issued(token, raw)


@pytest.fixture
def outsider_token(outsider: Any, team_b: Any) -> Issued:
    from approvals.services.tokens import token_issue

    token, raw = token_issue(team=team_b, user=outsider, name="otto-laptop")
    return Issued(token, raw)


@pytest.fixture
def submit() -> Callable[..., Any]:
    """Submit a call the way the bridge consumer does, with sensible defaults."""
    from approvals.services.calls import call_submit

    def _submit(
        token: Any,
        *,
        tool: str = "read_file",
        arguments: dict[str, Any] | None = None,
        server: str = SERVER,
        tool_hash: str | None = TOOL_HASH,
        timeout: int | None = None,
    ) -> Any:
        return call_submit(
            token=token,
            server=server,
            tool=tool,
            arguments={"path": "/srv/project/README.md"} if arguments is None else arguments,
            tool_hash=tool_hash,
            timeout=timeout,
        )

    return _submit


@pytest.fixture
def audit_kinds() -> Callable[[Any], list[str]]:
    """The kinds of the audit events recorded for a call, in order."""
    from approvals.models import AuditEvent

    def _kinds(call: Any) -> list[str]:
        return list(AuditEvent.objects.filter(call_id=call.pk).order_by("pk").values_list("kind", flat=True))

    return _kinds


@pytest.fixture
def session_cookie() -> Iterator[Callable[[Any], bytes]]:
    """A ``Cookie`` header value holding a logged-in session for the user (as a browser would send)."""
    from django.conf import settings
    from django.test import Client

    def _cookie(user: Any) -> bytes:
        client = Client()
        client.force_login(user)
        return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()

    yield _cookie


def clear_cache() -> None:
    """Empty this test process's cache. Not ``cache.clear()``: on Redis that is FLUSHDB, which also empties
    the other workers' keys (they share the db, each under its own prefix) in the middle of their tests."""
    from django.core.cache import caches
    from django.core.cache.backends.redis import RedisCache

    cache = caches["default"]
    if not isinstance(cache, RedisCache):
        cache.clear()  # in-process (the embedded default): this worker's alone
        return
    client = cache._cache.get_client(write=True)
    keys = list(client.scan_iter(match=f"{cache.key_prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


@contextlib.contextmanager
def throwaway_redis(directory: Path) -> Iterator[str]:
    """A redis-server of the test's own (the installed binary) on a free port; yields its URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    process = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(directory)],
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
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)

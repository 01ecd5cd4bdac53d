"""The first-run setup, settings from the environment, and the bridge's own small footprint."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tomllib
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from approvals.models import BridgeToken, Membership
from approvals.services.tokens import token_authenticate, token_revoke
from config import env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def state_dir(tmp_path, settings) -> Path:
    settings.STATE_DIR = tmp_path
    settings.SIGNOFF_PUBLIC_URL = "http://127.0.0.1:8000"
    return tmp_path


def run_setup(monkeypatch, **environ: str) -> str:
    for name in ("SIGNOFF_ADMIN_EMAIL", "SIGNOFF_ADMIN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    out = StringIO()
    call_command("setup_demo", stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_setup_demo_makes_an_admin_a_token_and_prints_a_working_config(state_dir: Path, monkeypatch) -> None:
    banner = run_setup(monkeypatch)
    password = (state_dir / "admin_password").read_text().strip()
    token = (state_dir / "demo_token").read_text().strip()
    for secret in ("admin_password", "demo_token"):
        assert stat.S_IMODE((state_dir / secret).stat().st_mode) == 0o600
    assert "http://127.0.0.1:8000/accounts/login/" in banner
    assert password in banner and token in banner
    found = token_authenticate(token)
    assert found is not None and found.team.slug == "demo"
    assert Membership.objects.get(team__slug="demo", user=found.user).role == "admin"
    snippet = json.loads(banner[banner.index('{\n  "mcpServers"') : banner.index("\n}\n") + 2])
    server = snippet["mcpServers"]["time"]
    assert server["command"].endswith("mcpbridge")
    assert server["args"][:3] == ["--name", "time", "--"]
    assert server["env"] == {"SIGNOFF_URL": "http://127.0.0.1:8000", "SIGNOFF_TOKEN": token}
    assert "claude mcp add time" in banner


@pytest.mark.django_db
def test_setup_demo_again_keeps_the_password_and_the_token(state_dir: Path, monkeypatch) -> None:
    first = run_setup(monkeypatch)
    second = run_setup(monkeypatch)
    assert first == second
    assert BridgeToken.objects.count() == 1


@pytest.mark.django_db
def test_setup_demo_replaces_a_revoked_demo_token(state_dir: Path, monkeypatch) -> None:
    run_setup(monkeypatch)
    old = (state_dir / "demo_token").read_text().strip()
    token = token_authenticate(old)
    assert token is not None
    token_revoke(token=token, by=None)
    run_setup(monkeypatch)
    new = (state_dir / "demo_token").read_text().strip()
    assert new != old and token_authenticate(new) is not None


@pytest.mark.django_db
def test_setup_demo_takes_the_admin_from_the_environment_and_never_prints_its_password(
    state_dir: Path, monkeypatch
) -> None:
    banner = run_setup(
        monkeypatch, SIGNOFF_ADMIN_EMAIL="ops@example.com", SIGNOFF_ADMIN_PASSWORD="a long secret 123"
    )
    assert "ops@example.com" in banner
    assert "a long secret 123" not in banner
    assert not (state_dir / "admin_password").exists()


def test_local_secret_key_is_made_once_and_private(tmp_path: Path) -> None:
    key = env.local_secret_key(tmp_path / "state")
    assert len(key) >= 50
    assert env.local_secret_key(tmp_path / "state") == key
    assert stat.S_IMODE((tmp_path / "state" / "secret_key").stat().st_mode) == 0o600


def test_secrets_can_come_from_files(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "key").write_text("from-a-file\n")
    monkeypatch.setenv("SOME_SECRET_FILE", str(tmp_path / "key"))
    monkeypatch.setenv("SOME_SECRET", "from-the-variable")
    assert env.env_secret("SOME_SECRET") == "from-a-file"


@pytest.mark.parametrize(
    ("raw", "parsed"), [("true", True), ("ON", True), ("0", False), ("no", False), ("", True)]
)
def test_env_bool(monkeypatch, raw: str, parsed: bool) -> None:
    monkeypatch.setenv("FLAG", raw)
    assert env.env_bool("FLAG", True) is parsed


@pytest.mark.parametrize("reader", [lambda: env.env_bool("BAD"), lambda: env.env_int("BAD", 1)])
def test_a_malformed_setting_is_an_error_not_a_silent_default(monkeypatch, reader) -> None:
    monkeypatch.setenv("BAD", "maybe")
    with pytest.raises(ValueError, match="BAD"):
        reader()


def test_the_settings_follow_the_environment(tmp_path: Path) -> None:
    """No environment → embedded default; DATABASE_URL → PostgreSQL; REDIS_URL → Redis everywhere."""
    probe = (
        "import json, django; from django.conf import settings as s; django.setup(); "
        "print(json.dumps([s.DATABASES['default']['ENGINE'], s.CHANNEL_LAYERS['default']['BACKEND'], "
        "s.CACHES['default']['BACKEND'], s.CELERY_BROKER_URL, s.CELERY_TASK_ALWAYS_EAGER]))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    clean["DJANGO_SETTINGS_MODULE"] = "config.settings"
    clean["SIGNOFF_STATE_DIR"] = str(tmp_path)

    def settings_with(**extra: str) -> list:
        result = subprocess.run(
            [sys.executable, "-c", probe], env={**clean, **extra}, cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    assert settings_with() == [
        "django.db.backends.sqlite3",
        "channels.layers.InMemoryChannelLayer",
        "django.core.cache.backends.locmem.LocMemCache",
        "memory://",
        True,
    ]
    assert settings_with(DATABASE_URL="postgresql://u@db:5432/x", REDIS_URL="redis://r:6379/0") == [
        "django.db.backends.postgresql",
        "channels_redis.core.RedisChannelLayer",
        "django.core.cache.backends.redis.RedisCache",
        "redis://r:6379/0",
        False,
    ]


def test_the_bridge_installs_without_the_server_stack() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    assert "mcp" in base and "websockets" in base
    for server_only in ("django", "channels", "celery", "redis", "psycopg", "daphne"):
        assert server_only not in base
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, mcpbridge.cli, mcpbridge.proxy, mcpbridge.link, mcpbridge.protocol; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'django', 'channels', 'celery', 'redis', 'psycopg', 'approvals', 'config'}))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

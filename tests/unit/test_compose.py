"""docker-compose.yml, the Dockerfile and .env.example, checked without a container engine.

No Docker daemon runs here, so this checks what can be checked natively:

- the compose file's structure (images, health checks, start order, restart policies, env_file, no secret
  written in it) and the Dockerfile's (base image, non-root user, extras, health check, default command);
- that .env.example documents every setting the code reads;
- that every command the two files name works: the Dockerfile's collectstatic, then the compose services'
  own commands, run as written (container paths mapped to a temporary directory, the image's ENV applied)
  against a throw-away SQLite database and the local Redis (database 8): migrate, the web process answering
  its health check, /readyz and hashed static files, a Celery worker answering its health check's ping, and
  beat sending the deadline sweep that the worker then runs. Their health-check commands run too.

``docker compose config`` runs only where a compose plugin is installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import throwaway_redis

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()

APP_SERVICES = ("migrate", "web", "worker", "beat")
LONG_RUNNING = ("postgres", "redis", "web", "worker", "beat")
PUBLIC_HOST = "signoff.example.com"
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|(^|_)KEY$", re.IGNORECASE)
INTERPOLATION = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")
# Generous: two shared cores, several test runs at once.
READY_SECONDS = 60.0


# --- the compose file ---------------------------------------------------------------------------------
def test_the_compose_file_runs_the_production_set() -> None:
    assert set(SERVICES) == {"postgres", "redis", "migrate", "web", "worker", "beat"}
    assert SERVICES["postgres"]["image"].startswith("postgres:16")
    assert SERVICES["redis"]["image"].startswith("redis:7")
    for name, service in SERVICES.items():
        assert service.get("image") or service.get("build"), f"{name} has neither image nor build"
    for name in APP_SERVICES:
        assert SERVICES[name]["build"] == ".", name
        assert SERVICES[name]["env_file"] == ".env", name
    assert "postgres-data:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    assert "redis-data:/data" in SERVICES["redis"]["volumes"]
    assert "--appendonly" in SERVICES["redis"]["command"]


def test_every_long_running_service_has_a_health_check_and_restarts() -> None:
    for name in LONG_RUNNING:
        check = SERVICES[name].get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no health check"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert SERVICES[name]["restart"] in {"unless-stopped", "always"}, name
    assert SERVICES["postgres"]["healthcheck"]["test"][1].startswith("pg_isready")
    assert SERVICES["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert "/healthz" in SERVICES["web"]["healthcheck"]["test"]
    # The one-shot is not restarted, and the image's web health check does not apply to it.
    assert SERVICES["migrate"]["restart"] == "no"
    assert SERVICES["migrate"]["healthcheck"] == {"disable": True}


def test_the_application_starts_after_a_successful_migrate() -> None:
    assert SERVICES["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("web", "worker", "beat"):
        assert SERVICES[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name


def test_the_commands_are_the_production_ones() -> None:
    assert SERVICES["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert SERVICES["web"]["command"] == ["/app/scripts/web.sh"]
    assert SERVICES["worker"]["command"][:4] == ["celery", "-A", "config", "worker"]
    assert SERVICES["beat"]["command"][:4] == ["celery", "-A", "config", "beat"]
    # Exactly one beat; web may be scaled.
    assert SERVICES["beat"]["deploy"]["replicas"] == 1
    assert "replicas" in SERVICES["web"]["deploy"]
    for name in ("postgres", "redis", "worker", "beat", "migrate"):
        assert "ports" not in SERVICES[name], f"{name} must not be published"
    # Published on the host's loopback unless the operator says otherwise.
    (published,) = SERVICES["web"]["ports"]
    assert published.startswith("${SIGNOFF_BIND:-127.0.0.1}:") and published.endswith(":8000")


def _environment_items() -> Iterator[tuple[str, str, str]]:
    for name, service in SERVICES.items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        for key, value in environment.items():
            yield name, key, str(value)


def test_no_secret_is_written_in_the_compose_file() -> None:
    seen = []
    for service, key, value in _environment_items():
        if SECRET_NAME.search(key):
            seen.append(key)
            assert INTERPOLATION.match(value), f"{service}: {key} must come from .env, not be written here"
        # A URL's password is a reference too.
        for password in re.findall(r"://[^:/@]+:([^@]+)@", value):
            assert INTERPOLATION.match(password), f"{service}: {key} holds a password"
    assert {"SECRET_KEY", "POSTGRES_PASSWORD"} <= set(seen)
    # Nothing that looks like a key, token or password anywhere else in the file either.
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"sgo_[A-Za-z0-9]", text)
    assert not re.search(r"(?i)(password|secret|token)\s*[:=]\s*[\"']?[A-Za-z0-9+/_-]{8,}", text)


def test_the_compose_file_uses_only_settings_that_env_example_documents() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    names = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    assert names >= {"SECRET_KEY", "POSTGRES_PASSWORD", "DATABASE_URL", "REDIS_URL", "SIGNOFF_BIND"}
    assert names <= _documented_settings(), names - _documented_settings()


# --- the Dockerfile --------------------------------------------------------------------------------------
def _dockerfile_instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in _dockerfile_instructions():
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return env


def test_the_dockerfile_builds_a_slim_non_root_server_image() -> None:
    instructions = _dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    user = [rest for keyword, rest in instructions if keyword == "USER"]
    assert user and user[-1] not in {"root", "0"}
    # The user is switched to after every build step, before the command.
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    assert ("EXPOSE", "8000") in instructions
    assert "HEALTHCHECK" in keywords
    (healthcheck,) = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"]
    assert "/app/scripts/healthcheck.py" in healthcheck and "/healthz" in healthcheck
    (command,) = [rest for keyword, rest in instructions if keyword == "CMD"]
    assert json.loads(command) == SERVICES["web"]["command"]
    assert _image_env()["SIGNOFF_STATIC_MANIFEST"] == "true"


def test_the_dockerfile_installs_the_locked_server_dependencies_and_no_dev_ones() -> None:
    runs = " ".join(rest for keyword, rest in _dockerfile_instructions() if keyword == "RUN")
    installs = re.findall(r"pip install ([^&]+)", runs)
    # The lock, hash-checked and without resolving anything else; then the package alone.
    assert [install.split() for install in installs] == [
        ["--require-hashes", "--no-deps", "-r", "requirements.lock"],
        ["--no-deps", "."],
    ]
    assert "pip check" in runs
    assert ("COPY", "pyproject.toml requirements.lock README.md manage.py ./") in _dockerfile_instructions()
    # What the lock holds is the server extra's closure (tests/unit/test_lock.py), never a dev tool.
    locked = (ROOT / "requirements.lock").read_text()
    assert not re.search(r"^(pytest|playwright|ruff|mypy|pip-audit|hypothesis)==", locked, re.MULTILINE)


def test_every_file_the_image_runs_is_copied_into_it() -> None:
    copied: list[str] = []
    for keyword, rest in _dockerfile_instructions():
        if keyword == "COPY":
            copied.extend(rest.split()[:-1])
    for path in copied:
        assert (ROOT / path).exists(), path
    # Every /app path a service or health check names comes from a COPY of a file in the repository.
    named = set(re.findall(r"/app/([\w./-]+)", (ROOT / "docker-compose.yml").read_text() + DOCKERFILE))
    named -= {"staticfiles"}  # written by collectstatic at build
    for path in named:
        assert any(path == c or path.startswith(c.rstrip("/") + "/") for c in copied), path
        assert (ROOT / path).exists(), path
    assert os.access(ROOT / "scripts" / "web.sh", os.X_OK)
    # The build context leaves secrets and local state out.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".signoff", ".venv", ".git"} <= set(ignored)


# --- .env.example ----------------------------------------------------------------------------------------
def _documented_settings() -> set[str]:
    """Names with a ``NAME=`` or ``# NAME=`` line of their own in .env.example."""
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE, re.MULTILINE))


def _mentioned_settings() -> set[str]:
    """Names .env.example mentions anywhere (an older name is explained next to its successor's line)."""
    return set(re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", ENV_EXAMPLE))


def _settings_read_by_the_code() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "config").glob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r"\benv_(?:str|int|bool|float|list|secret)\(\s*\"([A-Z0-9_]+)\"", text))
        names |= set(re.findall(r"os\.environ(?:\.get)?[\[(]\s*\"([A-Z0-9_]+)\"", text))
    return names


def test_env_example_documents_every_setting() -> None:
    read = _settings_read_by_the_code()
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS", "SIGNOFF_STATE_DIR"} <= read
    missing = read - _mentioned_settings()
    assert not missing, f".env.example does not document {sorted(missing)}"
    # The trusted proxies replaced the web process's old switch (scripts/web.sh), which says so.
    assert "SIGNOFF_TRUSTED_PROXIES" in _documented_settings()


# --- scripts/web.sh and scripts/healthcheck.py --------------------------------------------------------
@pytest.mark.parametrize("value", [None, "", "false", "0", "off"])
def test_web_sh_never_lets_daphne_trust_the_proxys_headers(tmp_path: Path, value: str | None) -> None:
    """Daphne's --proxy-headers believes X-Forwarded-For from anyone: the application reads it instead, from
    SIGNOFF_TRUSTED_PROXIES only (approvals/proxies.py)."""
    fake = tmp_path / "daphne"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "SIGNOFF_TRUSTED_PROXIES": "127.0.0.1"}
    if value is not None:
        env["SIGNOFF_PROXY_HEADERS"] = value
    args = subprocess.run(
        [ROOT / "scripts" / "web.sh", "-v", "0"], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert args == ["-b", "0.0.0.0", "-p", "8000", "-v", "0", "config.asgi:application"]


@pytest.mark.parametrize("value", ["true", "TRUE", "on", "1", "maybe"])
def test_web_sh_refuses_the_old_switch_and_names_its_replacement(tmp_path: Path, value: str) -> None:
    fake = tmp_path / "daphne"
    fake.write_text("#!/bin/sh\necho started\n")
    fake.chmod(0o755)
    result = subprocess.run(
        [ROOT / "scripts" / "web.sh"],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin", "SIGNOFF_PROXY_HEADERS": value},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "started" not in result.stdout
    assert "SIGNOFF_PROXY_HEADERS is no longer supported" in result.stderr
    assert "SIGNOFF_TRUSTED_PROXIES" in result.stderr


def test_the_health_check_names_a_host_django_answers() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import healthcheck
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert healthcheck.probe_host("") == "127.0.0.1"
    assert healthcheck.probe_host("signoff.example.com, localhost") == "signoff.example.com"
    assert healthcheck.probe_host("*, .example.com,box.lan") == "box.lan"
    assert healthcheck.probe_host("*") == "127.0.0.1"


# --- the commands, run natively ------------------------------------------------------------------------
@dataclass
class Deployment:
    """The compose services' commands running natively, with what they need to be checked."""

    tmp: Path
    env: dict[str, str]
    port: int
    static_root: Path
    logs: dict[str, Path] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def native(self, argv: list[str]) -> list[str]:
        """A container command as it runs here: container paths mapped to the repository and tmp."""
        return [self.map_path(arg) for arg in argv]

    def map_path(self, text: str) -> str:
        return (
            text.replace("/var/lib/signoff", str(self.tmp / "state"))
            .replace("/app/staticfiles", str(self.static_root))
            .replace("/app/", f"{ROOT}/")
            .replace("/app", str(ROOT))
        )

    def run(self, argv: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.native(argv),
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, name: str, argv: list[str], **env: str) -> None:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        self.processes[name] = subprocess.Popen(
            self.native(argv),
            cwd=ROOT,
            env={**self.env, **env},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def wait_for(self, what: str, check: Callable[[], bool], seconds: float = READY_SECONDS) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} exited while waiting for {what}:\n{self.log(name)}"
            if check():
                return
            time.sleep(0.3)
        logs = "\n".join(f"--- {name}\n{self.log(name)[-3000:]}" for name in self.processes)
        pytest.fail(f"timed out waiting for {what}\n{logs}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Host": PUBLIC_HOST, **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Migrate, collectstatic, then web, worker and beat from their compose commands, with the image's ENV,
    the compose environment (SQLite instead of the postgres service, a redis-server of the test's own) and
    .env settings for a host behind a proxy."""
    tmp = tmp_path_factory.mktemp("compose")
    (tmp / "state").mkdir()
    kept = {key: os.environ[key] for key in ("HOME", "LANG", "LC_ALL", "TMPDIR") if key in os.environ}
    image_env = _image_env()
    deployment = Deployment(tmp=tmp, env={}, port=_free_port(), static_root=tmp / "staticfiles")
    deployment.env = {
        **kept,
        **{key: deployment.map_path(value) for key, value in image_env.items()},
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        "SECRET_KEY": "compose-test-key",
        "REDIS_URL": "",
        "ALLOWED_HOSTS": PUBLIC_HOST,
        "SIGNOFF_TRUSTED_PROXIES": "127.0.0.1",
        "SIGNOFF_LOG_FORMAT": "json",
        "SIGNOFF_WEB_BIND": "127.0.0.1",
        "SIGNOFF_WEB_PORT": str(deployment.port),
    }
    with throwaway_redis(tmp) as redis_url:
        deployment.env["REDIS_URL"] = redis_url
        try:
            yield deployment
        finally:
            deployment.stop()


def _collectstatic_command() -> tuple[dict[str, str], list[str]]:
    """The Dockerfile's collectstatic step: its ``VAR=value`` prefixes and its command."""
    (run,) = [
        rest for keyword, rest in _dockerfile_instructions() if keyword == "RUN" and "collectstatic" in rest
    ]
    words = shlex.split(run.split("&&")[0])
    prefix = [word for word in words if re.match(r"^[A-Z_]+=", word)]
    return dict(word.split("=", 1) for word in prefix), words[len(prefix) :]


def test_the_services_commands_run_natively(deployment: Deployment) -> None:
    # Dockerfile: collectstatic at build, with the image's ENV (hashed, compressed files).
    build_env, collectstatic = _collectstatic_command()
    build_env = {key: value.replace("/tmp/", f"{deployment.tmp}/") for key, value in build_env.items()}
    result = deployment.run(collectstatic, **build_env)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((deployment.static_root / "staticfiles.json").read_text())["paths"]
    hashed_css = manifest["signoff/app.css"]
    assert hashed_css != "signoff/app.css"
    assert (deployment.static_root / f"{hashed_css}.gz").exists()

    # migrate: the one-shot, then nothing left to migrate.
    result = deployment.run(SERVICES["migrate"]["command"])
    assert result.returncode == 0, result.stderr
    result = deployment.run(["python", "manage.py", "migrate", "--check"])
    assert result.returncode == 0, result.stdout + result.stderr

    # web, worker and beat, each with its compose command.
    for name in ("web", "worker", "beat"):
        deployment.start(name, SERVICES[name]["command"])

    def web_healthy() -> bool:
        return deployment.run(SERVICES["web"]["healthcheck"]["test"][1:], timeout=30).returncode == 0

    deployment.wait_for("the web health check", web_healthy)
    status, _, body = _get(deployment.port, "/readyz")
    assert status == 200, body
    assert all(check["ok"] for check in json.loads(body)["checks"].values())
    # Only the public host name is answered (hence the health check's Host header).
    assert _get(deployment.port, "/healthz", Host="127.0.0.1")[0] == 400

    # Static files: pages name the hashed files, served compressed and cached for good.
    status, _, page = _get(deployment.port, "/accounts/login/")
    assert status == 200 and hashed_css in page.decode()
    status, headers, _ = _get(deployment.port, f"/static/{hashed_css}", **{"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers.get("Content-Encoding") == "gzip"
    assert "immutable" in headers.get("Cache-Control", "")

    # SIGNOFF_TRUSTED_PROXIES (the test is the proxy, on 127.0.0.1): the client's address is the proxy's
    # X-Forwarded-For, so a request forwarded from elsewhere is no longer "loopback" for /metrics.
    assert _get(deployment.port, "/metrics")[0] == 200
    assert _get(deployment.port, "/metrics", **{"X-Forwarded-For": "203.0.113.9"})[0] == 401

    # worker: ready, then its health check's ping (for this host's node name) answers.
    deployment.wait_for("the worker", lambda: " ready." in deployment.log("worker"))
    ping = SERVICES["worker"]["healthcheck"]["test"][1].replace("$$HOSTNAME", "$HOSTNAME")
    deployment.wait_for(
        "the worker's ping",
        lambda: deployment.run(["sh", "-c", ping], timeout=60, HOSTNAME=socket.gethostname()).returncode == 0,
    )

    # beat: schedules the deadline sweep, which the worker runs against the migrated database.
    deployment.wait_for(
        "beat to send the deadline sweep",
        lambda: "Sending due task expire-due-calls" in deployment.log("beat"),
    )
    deployment.wait_for(
        "the worker to run the sweep",
        lambda: (
            re.search(r"approvals\.tasks\.expire_due_calls\[[^]]+\] succeeded", deployment.log("worker"))
            is not None
        ),
    )
    beat_check = SERVICES["beat"]["healthcheck"]["test"][1:]
    assert deployment.run(beat_check, timeout=30).returncode == 0
    # The web health check fails once the web process is gone.
    deployment.stop()
    assert not web_healthy()

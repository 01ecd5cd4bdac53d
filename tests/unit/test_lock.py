"""requirements.lock: the server's dependencies pinned and hashed (the image installs exactly it), and the
dependency audit's reading of pip-audit (scripts/audit_deps.py)."""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import textwrap
import threading
import tomllib
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
AUDIT = ROOT / "scripts" / "audit_deps.py"
AuditStandIn = Callable[[dict[str, Any]], str]


def _locked() -> dict[str, tuple[Version, list[str]]]:
    """Name → (pinned version, hashes), from the lock's `name==version \\` blocks."""
    entries: dict[str, tuple[Version, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text()):
        head = block.split()[0] if block.strip() and not block.startswith("#") else ""
        if "==" in head:
            name, version = head.split("==")
            entries[canonicalize_name(name)] = (
                Version(version),
                re.findall(r"--hash=sha256:([0-9a-f]{64})", block),
            )
    return entries


def _top_level() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [
        Requirement(text) for text in project["dependencies"] + project["optional-dependencies"]["server"]
    ]


def test_every_locked_package_is_pinned_and_hashed() -> None:
    locked = _locked()
    assert len(locked) > 30  # the parser read the file
    for name, (_, hashes) in locked.items():
        assert hashes, f"{name} has no sha256 hash"
    pinned_lines = [line for line in LOCK.read_text().splitlines() if line[:1].isalnum()]
    assert len(pinned_lines) == len(locked)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[^ ]+ \\", line) for line in pinned_lines), pinned_lines


def test_the_lock_satisfies_pyproject_and_is_closed_under_requirements() -> None:
    """What `pip check` would say in the image: every requirement of the server extra, and of every locked
    package (with the extras asked of it), is in the lock at a version that satisfies it."""
    locked = _locked()
    environment: dict[str, str] = dict(default_environment())
    todo = [(requirement, "signoff") for requirement in _top_level()]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement, wanted_by = todo.pop()
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} (wanted by {wanted_by}) is not in requirements.lock"
        version, _ = locked[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} does not satisfy {requirement} (wanted by {wanted_by})"
        )
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        for text in metadata.requires(name) or []:
            child = Requirement(text)
            if child.marker is None or any(
                child.marker.evaluate({**environment, "extra": extra}) for extra in {"", *requirement.extras}
            ):
                todo.append((child, name))


def test_the_virtualenv_runs_the_locked_versions() -> None:
    """scripts/bootstrap.sh installs with the lock's pins as constraints: tests run what the image ships."""
    for name, (version, _) in _locked().items():
        assert Version(metadata.version(name)) == version, name


# --- scripts/audit_deps.py ---------------------------------------------------------------------------------
@pytest.fixture
def fake_pip_audit(tmp_path: Path) -> AuditStandIn:
    """A stand-in for pip-audit's command line that writes, per service, the JSON report given to it (or
    fails like pip-audit does when a service cannot be reached)."""

    def make(reports: dict[str, Any]) -> str:
        script = tmp_path / "pip_audit_stand_in.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import json, sys
                args = sys.argv[1:]
                reports = {json.dumps(reports)!r}
                report = json.loads(reports)[args[args.index("--vulnerability-service") + 1]]
                if report is None:
                    sys.exit("requests.exceptions.ConnectionError: cannot resolve the service")
                open(args[args.index("--output") + 1], "w").write(json.dumps(report))
                """
            )
        )
        return f"{sys.executable} {script}"

    return make


SMALL_LOCK = """\
django==5.2.1 \\
    --hash=sha256:{0}
    # via signoff
redis==6.0.0 \\
    --hash=sha256:{0}
    # via signoff
""".format("0" * 64)


@pytest.fixture
def pypi() -> Iterator[tuple[str, dict[str, Any]]]:
    """A local stand-in for PyPI's project JSON API: ``/<name>/json`` answers what the test put in it."""
    projects: dict[str, Any] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.strip("/").removesuffix("/json")
            body = json.dumps(projects[name]).encode() if name in projects else b"{}"
            self.send_response(200 if name in projects else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", projects
    server.shutdown()


def _project(version: str, *vulns: dict[str, Any]) -> dict[str, Any]:
    return {"info": {"version": version}, "vulnerabilities": list(vulns)}


def _audit(
    command: str, pypi: tuple[str, dict[str, Any]], tmp_path: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    lock = tmp_path / "requirements.lock"
    lock.write_text(SMALL_LOCK)
    return subprocess.run(
        [sys.executable, str(AUDIT), "--lock", str(lock), "--pip-audit", command, "--pypi", pypi[0], *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


CLEAN = {
    "dependencies": [
        {"name": "django", "version": "5.2.1", "vulns": []},
        {"name": "redis", "version": "6.0.0", "vulns": []},
    ]
}
VULNERABLE = {
    "dependencies": [
        {"name": "Django", "version": "5.2.1", "vulns": [{"id": "PYSEC-2025-1", "fix_versions": ["5.2.2"]}]},
        {"name": "redis", "version": "6.0.0", "vulns": []},
    ]
}
SKIPPED = {
    "dependencies": [
        {"name": name, "skip_reason": f"Dependency not found on PyPI and could not be audited: {name}"}
        for name in ("django", "redis")
    ]
}


def test_a_vulnerable_locked_version_fails_the_audit_and_names_the_fix(
    fake_pip_audit: AuditStandIn, pypi: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    done = _audit(fake_pip_audit({"pypi": VULNERABLE, "osv": CLEAN}), pypi, tmp_path)
    assert done.returncode == 1
    assert "VULNERABLE Django==5.2.1: PYSEC-2025-1 (fixed in 5.2.2)" in done.stderr
    assert "2 of 2 locked packages audited, 1 vulnerable, 0 not audited" in done.stderr


def test_a_clean_audit_passes_also_when_strict(
    fake_pip_audit: AuditStandIn, pypi: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    done = _audit(fake_pip_audit({"pypi": CLEAN, "osv": None}), pypi, tmp_path, "--strict")
    assert done.returncode == 0, done.stderr
    assert "NOT AUDITED" not in done.stderr and "2 of 2 locked packages audited" in done.stderr


def test_what_pip_audit_skipped_is_audited_from_the_newest_release_data_or_named(
    fake_pip_audit: AuditStandIn, pypi: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """pip-audit itself says "No known vulnerabilities found" when it skipped every package. PyPI's project
    JSON then audits redis (pinned at its newest release), but holds nothing for django 5.2.1."""
    pypi[1]["redis"] = _project("6.0.0")
    pypi[1]["django"] = _project("6.1.3", {"id": "PYSEC-2026-9", "fixed_in": ["6.1.4"]})
    command = fake_pip_audit({"pypi": SKIPPED, "osv": None})
    done = _audit(command, pypi, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "(pypi): 0 of 2" in done.stderr and "(osv): 0 of 2" in done.stderr
    assert "cannot resolve the service" in done.stderr
    assert "django 5.2.1 is not the newest release (6.1.3)" in done.stderr
    assert "1 of 2 locked packages audited, 0 vulnerable, 1 not audited" in done.stderr
    assert "NOT AUDITED: django==5.2.1." in done.stderr
    assert _audit(command, pypi, tmp_path, "--strict").returncode == 2


def test_an_advisory_on_the_newest_release_fails_unless_withdrawn(
    fake_pip_audit: AuditStandIn, pypi: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    pypi[1]["redis"] = _project("6.0.0", {"id": "GHSA-old", "fixed_in": [], "withdrawn": "2026-01-01"})
    pypi[1]["django"] = _project("5.2.1", {"id": "PYSEC-2026-9", "fixed_in": ["5.2.2"]})
    done = _audit(fake_pip_audit({"pypi": SKIPPED, "osv": SKIPPED}), pypi, tmp_path)
    assert done.returncode == 1
    assert "VULNERABLE django==5.2.1: PYSEC-2026-9 (fixed in 5.2.2)" in done.stderr
    assert "GHSA-old" not in done.stderr


def test_osv_is_asked_when_pypi_audits_nothing(
    fake_pip_audit: AuditStandIn, pypi: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    done = _audit(fake_pip_audit({"pypi": SKIPPED, "osv": VULNERABLE}), pypi, tmp_path)
    assert done.returncode == 1 and "(osv): 2 of 2" in done.stderr
    assert "newest releases" not in done.stderr  # osv audited everything

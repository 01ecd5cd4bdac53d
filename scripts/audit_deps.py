"""Audit the locked server dependencies (requirements.lock) for known vulnerabilities.

    .venv/bin/python scripts/audit_deps.py            # CI (scripts/test.sh): says what it could not audit
    .venv/bin/python scripts/audit_deps.py --strict   # a release: an unaudited package fails too

pip-audit first, with PyPI's advisory data, then OSV's if PyPI audited nothing. pip-audit alone prints "No
known vulnerabilities found" and exits 0 when it could not look any package up (PyPI's per-version JSON API
unreachable, say): this wrapper counts what was audited. What pip-audit could not audit is looked up in PyPI's
project JSON, whose ``vulnerabilities`` are those of the project's newest release: an exact audit for a pin
that is the newest release, and nothing for an older one, which stays "not audited".

Exit status: 0 every package audited and none vulnerable, or some not audited without --strict (a warning
is printed); 1 a locked version has a known vulnerability; 2 with --strict, a package was not audited.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("pypi", "osv")


@dataclass
class Vulnerable:
    name: str
    version: str
    ids: list[str]
    fix_versions: list[str]


@dataclass
class AuditSummary:
    service: str
    audited: list[str] = field(default_factory=list)
    vulnerable: list[Vulnerable] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    error: str = ""


def summarize(report: dict[str, Any], *, service: str) -> AuditSummary:
    """What a pip-audit JSON report says: audited packages, vulnerable versions, skipped packages and why."""
    summary = AuditSummary(service=service)
    for dependency in report.get("dependencies", []):
        name = dependency.get("name", "?")
        if "skip_reason" in dependency:
            summary.skipped[name] = dependency["skip_reason"]
            continue
        summary.audited.append(name)
        vulns = dependency.get("vulns") or []
        if vulns:
            summary.vulnerable.append(
                Vulnerable(
                    name=name,
                    version=dependency.get("version", "?"),
                    ids=[v.get("id", "?") for v in vulns],
                    fix_versions=sorted({fix for v in vulns for fix in v.get("fix_versions") or []}),
                )
            )
    return summary


def run_pip_audit(lock: Path, *, service: str, pip_audit: list[str], timeout: float) -> AuditSummary:
    """Run pip-audit on the hashed lock (no resolution, no install) and summarize its JSON report."""
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "report.json"
        command = [
            *pip_audit,
            "--requirement", str(lock), "--require-hashes", "--disable-pip",
            "--vulnerability-service", service, "--format", "json", "--output", str(output),
            "--progress-spinner", "off", "--timeout", str(int(timeout)),
        ]  # fmt: skip
        try:
            # The command is this script's own option, not outside input.
            done = subprocess.run(  # noqa: S603
                command, capture_output=True, text=True, timeout=timeout * 10, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return AuditSummary(service=service, error=f"pip-audit did not run: {exc}")
        if not output.exists() or not output.read_text().strip():
            last_line = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return AuditSummary(
                service=service, error=f"pip-audit failed (exit {done.returncode}): {last_line}"
            )
        return summarize(json.loads(output.read_text()), service=service)


def report(summary: AuditSummary, *, total: int) -> str:
    """The lines CI prints."""
    lines = [
        f"dependency audit ({summary.service}): {len(summary.audited)} of {total} locked packages audited"
    ]
    if summary.error:
        lines.append(f"  {summary.error}")
    for vulnerable in summary.vulnerable:
        fixes = ", ".join(vulnerable.fix_versions) or "no fixed version yet"
        ids = ", ".join(vulnerable.ids)
        lines.append(f"  VULNERABLE {vulnerable.name}=={vulnerable.version}: {ids} (fixed in {fixes})")
    if summary.skipped:
        reasons = sorted(set(summary.skipped.values()))
        lines.append(f"  NOT AUDITED: {len(summary.skipped)} packages; e.g. {reasons[0]}")
    return "\n".join(lines)


def canonical(name: str) -> str:
    """PEP 503's normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins(lock: Path) -> dict[str, str]:
    """Name → pinned version, from the lock's ``name==version \\`` lines."""
    pins = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)", line)
        if match:
            pins[canonical(match[1])] = match[2]
    return pins


def _project_json(index: str, name: str, timeout: float) -> dict[str, Any] | str:
    """PyPI's project JSON, or why it could not be read."""
    try:
        with urllib.request.urlopen(f"{index}/{name}/json", timeout=timeout) as answer:  # noqa: S310
            return json.load(answer)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"PyPI's project data unavailable: {exc}"


def audit_newest_releases(pins: dict[str, str], *, index: str, timeout: float) -> AuditSummary:
    """Audit the pins that are their project's newest release, from the advisories PyPI's project JSON lists
    for that release (withdrawn ones left out); older pins are skipped, with the newest version named."""
    summary = AuditSummary(service="PyPI project data, newest releases")
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = dict(
            zip(pins, pool.map(lambda name: _project_json(index, name, timeout), pins), strict=True)
        )
    for name, version in pins.items():
        data = answers[name]
        if isinstance(data, str):
            summary.skipped[name] = data
            continue
        newest = str(data.get("info", {}).get("version", ""))
        if newest != version:
            summary.skipped[name] = f"{name} {version} is not the newest release ({newest}): no data for it"
            continue
        summary.audited.append(name)
        vulns = [v for v in data.get("vulnerabilities") or [] if not v.get("withdrawn")]
        if vulns:
            summary.vulnerable.append(
                Vulnerable(
                    name=name,
                    version=version,
                    ids=[v.get("id", "?") for v in vulns],
                    fix_versions=sorted({fix for v in vulns for fix in v.get("fixed_in") or []}),
                )
            )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("--strict", action="store_true", help="fail when a package could not be audited")
    parser.add_argument("--timeout", type=float, default=15.0, help="per request, seconds")
    parser.add_argument(
        "--pip-audit",
        default=f"{sys.executable} -m pip_audit",
        help="the pip-audit command (default: %(default)s)",
    )
    parser.add_argument(
        "--pypi", default="https://pypi.org/pypi", help="PyPI's JSON API (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    pins = locked_pins(args.lock)
    audited: set[str] = set()
    vulnerable: list[Vulnerable] = []
    for service in SERVICES:
        summary = run_pip_audit(
            args.lock, service=service, pip_audit=args.pip_audit.split(), timeout=args.timeout
        )
        print(report(summary, total=len(pins)), file=sys.stderr)
        if summary.audited or summary.vulnerable:
            audited = {canonical(name) for name in summary.audited}
            vulnerable = summary.vulnerable
            break
    remaining = {name: version for name, version in pins.items() if name not in audited}
    unaudited: dict[str, str] = {}
    if remaining:
        newest = audit_newest_releases(remaining, index=args.pypi.rstrip("/"), timeout=args.timeout)
        print(report(newest, total=len(remaining)), file=sys.stderr)
        audited |= set(newest.audited)
        vulnerable += newest.vulnerable
        unaudited = newest.skipped
    print(
        f"dependency audit: {len(audited)} of {len(pins)} locked packages audited, "
        f"{len(vulnerable)} vulnerable, {len(unaudited)} not audited",
        file=sys.stderr,
    )
    if unaudited:
        print(
            f"NOT AUDITED: {', '.join(f'{name}=={pins[name]}' for name in sorted(unaudited))}. Run "
            "`scripts/audit_deps.py --strict` where pypi.org's per-version JSON API or api.osv.dev is "
            "reachable (docs/security.md).",
            file=sys.stderr,
        )
    if vulnerable:
        return 1
    return 2 if args.strict and unaudited else 0


if __name__ == "__main__":
    sys.exit(main())

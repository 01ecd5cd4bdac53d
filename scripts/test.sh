#!/usr/bin/env bash
# The whole test suite, as the README's `make test` runs it:
#   lint (ruff, mypy) and the dependency audit → fast unit tests → end-to-end tests on real processes
#   (Daphne, mcpbridge, upstream MCP servers, headless Chromium; with REDIS_URL also a Celery worker and beat).
# With no environment it tests the embedded default (SQLite, in-memory layer); with DATABASE_URL and
# REDIS_URL set, the same suite runs on PostgreSQL + Redis. Extra arguments go to pytest.
# SIGNOFF_TEST_LINT=0 skips the linters and the audit (CI's second configuration has run them already);
# SIGNOFF_AUDIT_STRICT=1 makes a package the audit could not look up fail the run (where PyPI's API answers).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
ensure_venv server,dev
cd "$SIGNOFF_ROOT"

ensure_chromium() {
    local browser="${SIGNOFF_CHROMIUM:-/usr/bin/chromium}"
    [ -x "$browser" ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "Installing Debian's chromium for the browser tests…" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "The browser tests need Chromium at $browser: install Debian's 'chromium' package" \
             "(sudo apt-get install chromium) or set SIGNOFF_CHROMIUM to its path." >&2
        return 1
    fi
}
ensure_chromium

if [ "${SIGNOFF_TEST_LINT:-1}" != 0 ]; then
    echo "== lint" >&2
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy approvals mcpbridge
    echo "== dependency audit (requirements.lock)" >&2
    # Fails on a known vulnerability; says so when no advisory service could be reached (docs/security.md).
    .venv/bin/python scripts/audit_deps.py ${SIGNOFF_AUDIT_STRICT:+--strict}
fi

# Two workers by default (SIGNOFF_TEST_WORKERS; 1 runs in one process): the end-to-end tests mostly wait on
# real processes, and each worker has its own database, Redis db, servers and browser (tests/*/conftest.py).
# A file's tests stay on one worker (--dist loadfile): its module-scoped servers are started once.
workers=(-p no:xdist)
if [ "${SIGNOFF_TEST_WORKERS:-2}" -gt 1 ]; then
    workers=(-n "${SIGNOFF_TEST_WORKERS:-2}" --dist loadfile)
fi

where="embedded default (SQLite, in-memory channel layer)"
[ -n "${DATABASE_URL:-}" ] && where="PostgreSQL${REDIS_URL:+ + Redis}"
echo "== unit tests on the $where" >&2
.venv/bin/pytest tests/unit -q "${workers[@]}" "$@"
echo "== end-to-end tests on the $where" >&2
.venv/bin/pytest -p no:django tests/e2e -q "${workers[@]}" --durations=15 "$@"

#!/usr/bin/env bash
# Write requirements.lock: every package the server extra needs (pyproject.toml), pinned and hashed, for
# Python 3.11 on Linux (the image's). The Dockerfile installs exactly it; scripts/bootstrap.sh holds the
# development virtualenv to its versions; scripts/audit_deps.py audits it.
#
#   bash scripts/lock.sh                  # after changing a dependency in pyproject.toml
#   bash scripts/lock.sh --upgrade        # every package to its newest allowed version
#   bash scripts/lock.sh -P django        # one package (pip-compile's --upgrade-package)
#
# Then run `make test`: the next ensure_venv installs the new pins.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$SIGNOFF_ROOT"

tools="${SIGNOFF_LOCK_VENV:-${TMPDIR:-/tmp}/signoff-pip-tools}"
if [ ! -x "$tools/bin/pip-compile" ]; then
    python="$(find_python)" || { echo "Python 3.11 or newer is needed" >&2; exit 1; }
    "$python" -m venv "$tools"
    "$tools/bin/python" -m pip install -qq pip-tools
fi
"$tools/bin/pip-compile" --quiet --extra server --generate-hashes --strip-extras --allow-unsafe \
    --no-emit-index-url --no-emit-find-links --output-file requirements.lock "$@" pyproject.toml
echo "requirements.lock: $(grep -c '^[A-Za-z0-9]' requirements.lock) packages pinned" >&2

# shellcheck shell=bash
# Shared set-up for scripts/run.sh and scripts/test.sh: source it, then call ensure_venv.
#
#   ensure_venv [EXTRAS]   create .venv with Python 3.11+ if missing (or broken, or too old), and
#                          pip install -e '.[EXTRAS]' (default: server,dev) only when pyproject.toml,
#                          requirements.lock or the extras changed since the last install (stamp file
#                          .venv/.signoff-installed). The server's dependencies are held to the versions
#                          requirements.lock pins, so tests and `make run` use what the image ships.
#
# Afterwards SIGNOFF_ROOT is the repository and SIGNOFF_VENV its virtualenv.
# Environment: PYTHON=/path/to/python3.x picks the interpreter for a new venv.

SIGNOFF_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIGNOFF_VENV="${SIGNOFF_VENV:-$SIGNOFF_ROOT/.venv}"

_signoff_python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if _signoff_python_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_venv() {
    local extras="${1:-server,dev}" python stamp want
    if ! _signoff_python_ok "$SIGNOFF_VENV/bin/python"; then
        if ! python="$(find_python)"; then
            echo "Signoff needs Python 3.11 or newer: install it, or set PYTHON=/path/to/python3.11." >&2
            return 1
        fi
        echo "Creating $SIGNOFF_VENV with $python ($("$python" --version 2>&1))" >&2
        "$python" -m venv --clear "$SIGNOFF_VENV" || return 1
    fi
    stamp="$SIGNOFF_VENV/.signoff-installed"
    want="$("$SIGNOFF_VENV/bin/python" -c 'import hashlib, sys
print(" ".join(hashlib.sha256(open(name, "rb").read()).hexdigest() for name in sys.argv[1:]))' \
        "$SIGNOFF_ROOT/pyproject.toml" "$SIGNOFF_ROOT/requirements.lock") $extras" || return 1
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "Installing Signoff and its dependencies into $SIGNOFF_VENV ([$extras])…" >&2
        rm -f "$stamp"
        # The lock's pins as constraints, without its hashes: hashes would put pip in hash-checking mode,
        # which an editable install and the unpinned dev tools cannot satisfy.
        local pins="$SIGNOFF_VENV/.signoff-pins.txt"
        sed -n 's/^\([A-Za-z0-9._-]\{1,\}==[^ ]*\).*/\1/p' "$SIGNOFF_ROOT/requirements.lock" >"$pins" || return 1
        (cd "$SIGNOFF_ROOT" && "$SIGNOFF_VENV/bin/python" -m pip install -qq -c "$pins" -e ".[$extras]") \
            || return 1
        printf '%s\n' "$want" >"$stamp"
    fi
}

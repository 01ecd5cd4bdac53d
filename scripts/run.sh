#!/usr/bin/env bash
# Run Signoff on this machine, from a fresh clone or an existing one:
#   virtualenv + dependencies (when pyproject.toml changed), migrate, collectstatic, demo team/admin/token
#   (printed with a ready MCP client config), then Daphne on ${SIGNOFF_BIND:-127.0.0.1}:${SIGNOFF_PORT:-8000}.
# With no environment it uses the embedded default (SQLite and state in .signoff/); DATABASE_URL and
# REDIS_URL switch to PostgreSQL and Redis (see .env.example).
set -euo pipefail

# shellcheck source=scripts/bootstrap.sh
. "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$SIGNOFF_ROOT"
ensure_venv server,dev

export SIGNOFF_BIND="${SIGNOFF_BIND:-127.0.0.1}"
export SIGNOFF_PORT="${SIGNOFF_PORT:-8000}"
if [ -z "${SIGNOFF_PUBLIC_URL:-}" ]; then
    case "$SIGNOFF_BIND" in
        0.0.0.0 | "") host=127.0.0.1 ;;
        :: | "[::]") host="[::1]" ;;
        *:*) host="[$SIGNOFF_BIND]" ;;
        *) host="$SIGNOFF_BIND" ;;
    esac
    export SIGNOFF_PUBLIC_URL="http://$host:$SIGNOFF_PORT"
fi

python="$SIGNOFF_VENV/bin/python"
"$python" manage.py migrate --noinput
"$python" manage.py collectstatic --noinput --verbosity 0
"$python" manage.py setup_demo
echo "Serving Signoff at $SIGNOFF_PUBLIC_URL (Ctrl-C to stop)" >&2
exec "$SIGNOFF_VENV/bin/daphne" -b "$SIGNOFF_BIND" -p "$SIGNOFF_PORT" config.asgi:application

#!/bin/sh
# The web process of the server image (the Dockerfile's CMD, docker-compose.yml's web): Daphne on
# ${SIGNOFF_WEB_BIND:-0.0.0.0}:${SIGNOFF_WEB_PORT:-8000} inside the container. Extra arguments go to daphne
# (e.g. -v 0: no access log on stdout).
#
# SIGNOFF_PROXY_HEADERS=true (behind a reverse proxy): Daphne takes the client's address from the proxy's
# X-Forwarded-For (--proxy-headers), so that Django sees the browser's address rather than the proxy's: login
# rate limits per address, /metrics's loopback rule, the address in the audit log. Only then, because Daphne
# believes the header's first address from whoever sends it: the proxy must overwrite the header and be the
# only way in (docs/deploy.md).
set -eu
case "$(printf '%s' "${SIGNOFF_PROXY_HEADERS:-}" | tr '[:upper:]' '[:lower:]')" in
    1 | true | yes | on) set -- --proxy-headers "$@" ;;
    "" | 0 | false | no | off) ;;
    *)
        echo "SIGNOFF_PROXY_HEADERS must be true or false, got '$SIGNOFF_PROXY_HEADERS'" >&2
        exit 2
        ;;
esac
exec daphne -b "${SIGNOFF_WEB_BIND:-0.0.0.0}" -p "${SIGNOFF_WEB_PORT:-8000}" "$@" config.asgi:application

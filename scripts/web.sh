#!/bin/sh
# The web process of the server image (the Dockerfile's CMD, docker-compose.yml's web): Daphne on
# ${SIGNOFF_WEB_BIND:-0.0.0.0}:${SIGNOFF_WEB_PORT:-8000} inside the container. Extra arguments go to daphne
# (e.g. -v 0: no access log on stdout).
#
# Behind a reverse proxy, set SIGNOFF_TRUSTED_PROXIES to the proxy's address or network: the application
# (approvals/proxies.py) then takes the client's address from X-Forwarded-For, but only on connections from
# those proxies (docs/deploy.md). Daphne's own --proxy-headers is never used: it believes the header from
# anyone. SIGNOFF_PROXY_HEADERS, which turned it on, is refused when true, so that a deployment relying on
# it notices instead of silently losing the clients' addresses.
set -eu
case "$(printf '%s' "${SIGNOFF_PROXY_HEADERS:-}" | tr '[:upper:]' '[:lower:]')" in
    "" | 0 | false | no | off) ;;
    *)
        echo "SIGNOFF_PROXY_HEADERS is no longer supported: it made Daphne believe X-Forwarded-For from anyone." >&2
        echo "Set SIGNOFF_TRUSTED_PROXIES to your reverse proxy's address or network instead (e.g." >&2
        echo "SIGNOFF_TRUSTED_PROXIES=172.16.0.0/12 for a proxy in Docker's default networks), and remove" >&2
        echo "SIGNOFF_PROXY_HEADERS (docs/deploy.md, section 3)." >&2
        exit 2
        ;;
esac
exec daphne -b "${SIGNOFF_WEB_BIND:-0.0.0.0}" -p "${SIGNOFF_WEB_PORT:-8000}" "$@" config.asgi:application

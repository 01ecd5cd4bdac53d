#!/usr/bin/env python3
"""The web container's health check (the Dockerfile's HEALTHCHECK, docker-compose.yml's web service).

``python scripts/healthcheck.py [PATH]`` asks this container's Daphne for PATH (``/healthz`` by default) and
exits 0 on a 200, 1 otherwise. Standard library only, no Django: it runs every few seconds.

Django answers only host names in ``ALLOWED_HOSTS`` (a probe of 127.0.0.1 gets a 400 once ALLOWED_HOSTS names
the public host), so the request names the first concrete entry of ``ALLOWED_HOSTS``. It also says
``X-Forwarded-Proto: https``: behind a TLS proxy Django would otherwise redirect the probe to https.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_HOST = "127.0.0.1"


def probe_host(allowed_hosts: str) -> str:
    """The first entry of ``ALLOWED_HOSTS`` that is one host name: not ``*``, not a ``.domain`` pattern."""
    for entry in allowed_hosts.split(","):
        host = entry.strip()
        if host and host != "*" and not host.startswith("."):
            return host
    return DEFAULT_HOST


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    port = os.environ.get("SIGNOFF_WEB_PORT", "").strip() or "8000"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        headers={"Host": probe_host(os.environ.get("ALLOWED_HOSTS", "")), "X-Forwarded-Proto": "https"},
    )
    try:
        # A fixed http URL on loopback (S310 is about file: and custom schemes).
        with urllib.request.urlopen(request, timeout=4) as response:  # noqa: S310
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"unhealthy: {path}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {path} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""FastMCP's stdio proxy in front of a stdio upstream: the third baseline of bench/latency.py (DESIGN §8).

Needs the ``fastmcp`` package, which Signoff does not depend on: run it with an interpreter that has it,
e.g. ``python -m venv /tmp/fmvenv && /tmp/fmvenv/bin/pip install fastmcp``, then
``bench/latency.py --fastmcp-python /tmp/fmvenv/bin/python``.

    fastmcp_proxy.py UPSTREAM_COMMAND [ARGS…]
"""

from __future__ import annotations

import sys

from fastmcp.client.transports import StdioTransport
from fastmcp.server import create_proxy


def main() -> None:
    command, *args = sys.argv[1:]
    proxy = create_proxy(StdioTransport(command=command, args=args), name="fastmcp-proxy")
    proxy.run(transport="stdio", show_banner=False)


if __name__ == "__main__":
    main()

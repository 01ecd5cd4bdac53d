"""``mcpbridge``: put Signoff between an MCP client and a real MCP server.

Only MCP goes to stdout; everything the bridge has to say goes to stderr (the MCP client's log).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import anyio

from mcpbridge import __version__
from mcpbridge.link import websocket_url
from mcpbridge.proxy import Bridge, BridgeConfig

DESCRIPTION = """\
Put Signoff in front of an MCP server. Your MCP client (Claude Desktop, Claude Code, Cursor…) starts
mcpbridge instead of the server; mcpbridge starts the server (or reaches it over HTTP) and offers its
tools, resources and prompts unchanged. Every tool call is held until a reviewer allows it in Signoff;
a denied, expired or unreachable call returns an error to the model and never reaches the server.
"""

EPILOG = """\
environment:
  SIGNOFF_URL     your Signoff server, e.g. https://signoff.example.com (or use --url)
  SIGNOFF_TOKEN   your personal bridge token (sgo_…), issued in Signoff; never put it in arguments.
                  SIGNOFF_TOKEN_FILE may name a file holding it instead. It is not passed upstream.

examples:
  mcpbridge --name files -- npx -y @modelcontextprotocol/server-filesystem /srv/project
  mcpbridge --name time -- uvx mcp-server-time
  mcpbridge --name crm --upstream-url https://crm.internal.example.com/mcp

Claude Desktop (claude_desktop_config.json):
  {"mcpServers": {"files": {"command": "mcpbridge",
    "args": ["--name", "files", "--", "npx", "-y", "@modelcontextprotocol/server-filesystem", "/srv/project"],
    "env": {"SIGNOFF_URL": "https://signoff.example.com", "SIGNOFF_TOKEN": "sgo_…"}}}}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcpbridge",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="mcpbridge [options] -- COMMAND [ARGS…]\n       mcpbridge [options] --upstream-url URL",
    )
    parser.add_argument(
        "--name", help="the server's name in Signoff, used by rules (default: the command's name)"
    )
    parser.add_argument("--url", help="Signoff's address (default: $SIGNOFF_URL)")
    parser.add_argument(
        "--upstream-url", metavar="URL", help="reach the upstream over streamable HTTP at URL"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="longest a held call may wait for a decision, in seconds (default: the team's deadline)",
    )
    parser.add_argument(
        "--client-timeout",
        type=float,
        default=50.0,
        metavar="S",
        help="answer a still-held call after S seconds, before the MCP client gives up (default: 50); "
        "repeating the same call continues the wait",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="how long a call waits for a connection to Signoff before it is denied (default: 5)",
    )
    parser.add_argument(
        "--reconnect-grace",
        type=float,
        default=10.0,
        metavar="S",
        help="how long a held call survives a lost connection to Signoff (default: 10)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=f"mcpbridge {__version__}")
    parser.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _token() -> str:
    path = os.environ.get("SIGNOFF_TOKEN_FILE", "").strip()
    if path:
        return Path(path).read_text().strip()
    return os.environ.get("SIGNOFF_TOKEN", "").strip()


def parse_config(argv: list[str]) -> BridgeConfig:
    """Read the command line and the environment, or exit with a message that says what to fix."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if bool(command) == bool(args.upstream_url):
        parser.error("give the upstream either as '-- COMMAND ARGS…' or as --upstream-url URL (one of them)")
    url = args.url or os.environ.get("SIGNOFF_URL", "").strip()
    if not url:
        parser.error("no Signoff address: set SIGNOFF_URL (or pass --url)")
    try:
        websocket_url(url)
    except ValueError as exc:
        parser.error(str(exc))
    token = _token()
    if not token:
        parser.error("no token: set SIGNOFF_TOKEN to your bridge token (issued in Signoff)")
    for value, flag in (
        (args.client_timeout, "--client-timeout"),
        (args.connect_timeout, "--connect-timeout"),
    ):
        if value <= 0:
            parser.error(f"{flag} must be positive")
    if args.timeout is not None and args.timeout <= 0:
        parser.error("--timeout must be positive")
    name = args.name or (
        Path(command[0]).name if command else urlsplit(args.upstream_url).hostname or "upstream"
    )
    return BridgeConfig(
        name=name,
        signoff_url=url,
        token=token,
        upstream_command=command,
        upstream_url=args.upstream_url,
        timeout=args.timeout,
        client_timeout=args.client_timeout,
        connect_timeout=args.connect_timeout,
        reconnect_grace=args.reconnect_grace,
    )


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    args = sys.argv[1:] if argv is None else argv
    config = parse_config(args)
    level = build_parser().parse_known_args(args)[0].log_level
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level),
        format="mcpbridge %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("websockets", "httpx", "httpcore", "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    code = anyio.run(Bridge(config).serve)
    sys.exit(code)

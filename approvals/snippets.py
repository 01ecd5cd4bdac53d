"""Ready-to-paste MCP client configs that run a server behind mcpbridge."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

EXAMPLE_UPSTREAM = ["npx", "-y", "@modelcontextprotocol/server-filesystem", "/path/to/project"]


@dataclass(frozen=True)
class ClientConfigs:
    """The same bridge, as each client wants it written."""

    desktop: dict[str, Any]
    """``claude_desktop_config.json`` (Cursor's ``~/.cursor/mcp.json`` has the same shape)."""
    code: list[str]
    """The ``claude mcp add`` command line."""

    @property
    def desktop_json(self) -> str:
        return json.dumps(self.desktop, indent=2)

    @property
    def code_line(self) -> str:
        return shlex.join(self.code)


def client_configs(
    *, public_url: str, token: str, name: str, upstream: list[str], bridge: str = "mcpbridge"
) -> ClientConfigs:
    """Configs that start ``bridge --name NAME -- UPSTREAM…`` with Signoff's address and the token."""
    bridge_args = ["--name", name, "--", *upstream]
    env = {"SIGNOFF_URL": public_url, "SIGNOFF_TOKEN": token}
    desktop = {"mcpServers": {name: {"command": bridge, "args": bridge_args, "env": env}}}
    # Claude Code: the server name must come before the variadic --env options.
    code = ["claude", "mcp", "add", name]
    for key, value in env.items():
        code += ["--env", f"{key}={value}"]
    code += ["--", bridge, *bridge_args]
    return ClientConfigs(desktop=desktop, code=code)

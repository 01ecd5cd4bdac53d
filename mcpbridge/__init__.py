"""mcpbridge: an MCP stdio server that fronts a real MCP server and holds every tools/call for Signoff."""

__version__ = "0.1.0"

"""Always-Allow scopes: the constraints a rule made from a held call starts with. Pure functions."""

from __future__ import annotations

import posixpath
from typing import Any, Literal

Scope = Literal["exact", "constraints", "tool"]
SCOPES: tuple[Scope, ...] = ("exact", "constraints", "tool")


def exact_call(arguments: dict[str, Any]) -> list[dict[str, Any]]:
    """Only this very call: all the arguments, and no others, equal these."""
    return [{"path": "", "op": "equals", "value": arguments}]


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "~")) or (len(text) > 2 and text[1] == ":" and text[2] in "\\/")


def suggested_constraints(arguments: dict[str, Any]) -> list[dict[str, Any]]:
    """A starting point for "this tool with these constraints": absolute paths become ``within`` their
    directory, everything else ``equals`` its value. The reviewer edits it before the rule is made."""
    constraints: list[dict[str, Any]] = []
    for name, value in arguments.items():
        if isinstance(value, str) and _looks_like_path(value) and "/" in value.replace("\\", "/"):
            directory = posixpath.dirname(value.replace("\\", "/").rstrip("/")) or "/"
            constraints.append({"path": name, "op": "within", "value": directory})
        else:
            constraints.append({"path": name, "op": "equals", "value": value})
    return constraints

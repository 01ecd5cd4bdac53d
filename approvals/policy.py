"""The policy engine: a pure function from a team's rules and one call to a verdict.

Order (documented in docs/policy.md): invalid input is refused before this runs; then the first enabled
deny rule that matches wins; then the first enabled allow rule; then the team mode decides
(``review`` → a human, ``whitelist`` → denied). Patterns are shell-style globs matched case-sensitively.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

Outcome = Literal["allow", "deny", "review"]


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """The part of a rule the engine needs."""

    id: int
    effect: Literal["allow", "deny"]
    server: str
    tool: str

    def matches(self, *, server: str, tool: str) -> bool:
        return fnmatchcase(server, self.server) and fnmatchcase(tool, self.tool)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the policy says of a call, and why."""

    outcome: Outcome
    reason: str
    rule_id: int | None = None


def evaluate(*, rules: Iterable[RuleSpec], server: str, tool: str, mode: str) -> Verdict:
    """Decide a call from the team's enabled rules and mode. Deny beats allow."""
    allow: RuleSpec | None = None
    for rule in rules:
        if not rule.matches(server=server, tool=tool):
            continue
        if rule.effect == "deny":
            return Verdict("deny", f"denied by rule #{rule.id} ({rule.server}/{rule.tool})", rule.id)
        if allow is None:
            allow = rule
    if allow is not None:
        return Verdict("allow", f"allowed by rule #{allow.id} ({allow.server}/{allow.tool})", allow.id)
    if mode == "whitelist":
        return Verdict("deny", "denied: the team only allows calls that a rule allows, and none matched")
    return Verdict("review", "waiting for a reviewer")

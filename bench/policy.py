"""Policy evaluation with 10,000 rules in one team (DESIGN §8: p99 ≤ 1 ms per evaluation).

The rule set is a plausible large team: 60 servers of 30 tools each; most rules are exact server/tool rules
(what Always-Allow creates), many with argument constraints (within, one_of, regex, glob, prefix, range,
equals, max_length); some tool globs (``read_*``), server globs (``*``, ``prod-*``) and constrained deny
rules; a few expired. Calls hit exact rules, glob rules, deny rules and nothing at all.

    .venv/bin/python bench/policy.py [--rules 10000] [--calls 20000] [--seed 7]

Prints p50/p99/max of ``RuleSet.evaluate`` (the rules compiled once, as a server keeps them), of the
one-shot ``evaluate()`` (compiling on every call), and the time to parse and to compile the rules.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from approvals.policy import RuleSpec, compile_rules, evaluate, parse_constraints

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SERVERS = [f"srv{i:02d}" for i in range(60)]
VERBS = ["read", "write", "list", "delete", "search", "get", "create", "update", "run", "query"]
TOOLS = [f"{verb}_{noun}" for verb in VERBS for noun in ("file", "item", "record")]


def random_constraints(rng: random.Random) -> list[dict[str, Any]]:
    kind = rng.choice(["within", "one_of", "regex", "glob", "prefix", "range", "equals", "max_length"])
    project = f"/srv/project{rng.randrange(50)}"
    options: dict[str, dict[str, Any]] = {
        "within": {"path": "path", "op": "within", "value": project},
        "one_of": {"path": "mode", "op": "one_of", "value": ["r", "rb", "rt"]},
        "regex": {
            "path": "query",
            "op": "regex",
            "value": r"(?i)select [a-z_, ]+ from (users|orders)( where .*)?",
        },
        "glob": {"path": "path", "op": "glob", "value": f"{project}/*.md"},
        "prefix": {"path": "url", "op": "prefix", "value": f"https://api{rng.randrange(9)}.example.com/"},
        "range": {"path": "/options/limit", "op": "range", "value": {"min": 1, "max": 500}},
        "equals": {"path": "/options/recursive", "op": "equals", "value": False},
        "max_length": {"path": "query", "op": "max_length", "value": 2000},
    }
    return [options[kind]]


def build_rules(count: int, rng: random.Random) -> list[RuleSpec]:
    rules: list[RuleSpec] = []
    for rule_id in range(1, count + 1):
        roll = rng.random()
        server, tool = rng.choice(SERVERS), rng.choice(TOOLS)
        effect = "allow"
        if roll < 0.08:
            effect, tool = "deny", rng.choice(["write_*", "delete_*", tool])
        elif roll < 0.20:
            tool = rng.choice(VERBS) + "_*"
        elif roll < 0.22:
            server = rng.choice(["*", "prod-*", "srv0?"])
        constraints = random_constraints(rng) if rng.random() < 0.6 or effect == "deny" else []
        expires = NOW - timedelta(days=1) if rng.random() < 0.03 else None
        rules.append(
            RuleSpec(
                id=rule_id,
                effect=effect,  # type: ignore[arg-type]
                server=server,
                tool=tool,
                constraints=parse_constraints(constraints),
                expires_at=expires,
            )
        )
    return rules


def random_call(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    arguments: dict[str, Any] = {
        "path": rng.choice(
            [
                f"/srv/project{rng.randrange(50)}/docs/readme.md",
                "/srv/project1/../../etc/passwd",
                "/etc/shadow",
                "notes/today.txt",
                "%2fsrv%2fproject3%2fa%2e%2e%2fb",
            ]
        ),
        "mode": rng.choice(["r", "w"]),
        "query": rng.choice(["SELECT id, name FROM users WHERE id = 3", "DROP TABLE users", "x" * 3000]),
        "url": f"https://api{rng.randrange(12)}.example.com/v1/items",
        "options": {"limit": rng.choice([10, 1000]), "recursive": rng.random() < 0.5},
    }
    server = rng.choice([*SERVERS, "prod-db", "unknown"])
    tool = rng.choice([*TOOLS, "unknown_tool"])
    return server, tool, arguments


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rules", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    options = parser.parse_args()
    rng = random.Random(options.seed)
    started = time.perf_counter()
    rules = build_rules(options.rules, rng)
    parse_ms = (time.perf_counter() - started) * 1000
    calls = [random_call(rng) for _ in range(options.calls)]

    started = time.perf_counter()
    ruleset = compile_rules(rules)
    compile_ms = (time.perf_counter() - started) * 1000

    outcomes: dict[str, int] = {}
    for server, tool, arguments in calls[:500]:  # warm-up: regex automata build their caches
        ruleset.evaluate(server=server, tool=tool, arguments=arguments, mode="review", now=NOW)
    compiled: list[float] = []
    for server, tool, arguments in calls:
        t0 = time.perf_counter_ns()
        verdict = ruleset.evaluate(server=server, tool=tool, arguments=arguments, mode="review", now=NOW)
        compiled.append((time.perf_counter_ns() - t0) / 1e6)
        outcomes[verdict.outcome] = outcomes.get(verdict.outcome, 0) + 1

    one_shot: list[float] = []
    for server, tool, arguments in calls[:50]:
        t0 = time.perf_counter_ns()
        evaluate(rules=rules, server=server, tool=tool, arguments=arguments, mode="review", now=NOW)
        one_shot.append((time.perf_counter_ns() - t0) / 1e6)

    print(f"{options.rules} rules, {options.calls} calls, seed {options.seed}; outcomes {outcomes}")
    print(f"parsing every rule's constraints: {parse_ms:.1f} ms; compile_rules: {compile_ms:.1f} ms\n")
    print("| path | calls | p50 (ms) | p99 (ms) | max (ms) | mean (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, values in (
        ("RuleSet.evaluate (compiled once)", compiled),
        ("evaluate() (compiles each call)", one_shot),
    ):
        print(
            f"| {name} | {len(values)} | {percentile(values, 0.5):.4f} | {percentile(values, 0.99):.4f} "
            f"| {max(values):.4f} | {statistics.fmean(values):.4f} |"
        )
    p99 = percentile(compiled, 0.99)
    print(f"\nbar p99 ≤ 1 ms (compiled): {'met' if p99 <= 1.0 else 'MISSED'} ({p99:.4f} ms)")


if __name__ == "__main__":
    main()

"""The policy engine: deny beats allow, globs match, the team mode decides what no rule covers."""

from __future__ import annotations

import itertools

import pytest

from approvals.policy import RuleSpec, evaluate

ALLOW_READ = RuleSpec(id=1, effect="allow", server="files", tool="read_file")
DENY_READ = RuleSpec(id=2, effect="deny", server="files", tool="read_file")
ALLOW_ANY = RuleSpec(id=3, effect="allow", server="*", tool="*")


@pytest.mark.parametrize("rules", list(itertools.permutations([ALLOW_READ, DENY_READ, ALLOW_ANY])))
@pytest.mark.parametrize("mode", ["review", "whitelist"])
def test_deny_beats_allow_regardless_of_order(rules: tuple[RuleSpec, ...], mode: str) -> None:
    verdict = evaluate(rules=rules, server="files", tool="read_file", mode=mode)
    assert verdict.outcome == "deny"
    assert verdict.rule_id == DENY_READ.id
    assert "#2" in verdict.reason


def test_a_deny_rule_for_another_tool_does_not_block_an_allowed_one() -> None:
    verdict = evaluate(rules=[DENY_READ, ALLOW_ANY], server="files", tool="list_directory", mode="review")
    assert (verdict.outcome, verdict.rule_id) == ("allow", ALLOW_ANY.id)


def test_the_first_matching_allow_rule_is_named() -> None:
    verdict = evaluate(rules=[ALLOW_READ, ALLOW_ANY], server="files", tool="read_file", mode="review")
    assert (verdict.outcome, verdict.rule_id) == ("allow", ALLOW_READ.id)


@pytest.mark.parametrize(
    ("server_pattern", "tool_pattern", "server", "tool", "matches"),
    [
        ("files", "read_*", "files", "read_file", True),
        ("files", "read_*", "files", "read_multiple_files", True),
        ("files", "read_*", "files", "write_file", False),
        ("files", "read_*", "git", "read_file", False),
        ("*", "read_file", "anything", "read_file", True),
        ("file?", "*", "files", "x", True),
        ("file?", "*", "filesystem", "x", False),
        ("files", "[rw]*_file", "files", "write_file", True),
        ("files", "[rw]*_file", "files", "delete_file", False),
        ("files", "Read_*", "files", "read_file", False),  # case-sensitive
    ],
)
def test_glob_patterns_match_server_and_tool(
    server_pattern: str, tool_pattern: str, server: str, tool: str, matches: bool
) -> None:
    rule = RuleSpec(id=7, effect="allow", server=server_pattern, tool=tool_pattern)
    verdict = evaluate(rules=[rule], server=server, tool=tool, mode="review")
    assert verdict.outcome == ("allow" if matches else "review")


def test_whitelist_mode_denies_when_nothing_matches() -> None:
    verdict = evaluate(rules=[ALLOW_READ], server="files", tool="write_file", mode="whitelist")
    assert verdict.outcome == "deny"
    assert verdict.rule_id is None
    assert "only allows" in verdict.reason


def test_whitelist_mode_allows_what_a_rule_allows() -> None:
    verdict = evaluate(rules=[ALLOW_READ], server="files", tool="read_file", mode="whitelist")
    assert verdict.outcome == "allow"


def test_review_mode_asks_a_human_when_nothing_matches() -> None:
    verdict = evaluate(rules=[ALLOW_READ], server="files", tool="write_file", mode="review")
    assert (verdict.outcome, verdict.rule_id) == ("review", None)


def test_no_rules_at_all_means_review() -> None:
    assert evaluate(rules=[], server="files", tool="read_file", mode="review").outcome == "review"


def test_rules_may_be_a_one_shot_iterable() -> None:
    verdict = evaluate(rules=iter([ALLOW_READ, DENY_READ]), server="files", tool="read_file", mode="review")
    assert verdict.outcome == "deny"

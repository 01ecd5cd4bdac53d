"""The policy engine: deny beats allow, globs and argument constraints match, expired rules are skipped,
the team mode decides what no rule covers, and a compiled rule set agrees with reading the rules in order."""

from __future__ import annotations

import fnmatch
import itertools
import posixpath
import random
import re
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import pytest

from approvals import pathnorm
from approvals.policy import (
    MAX_MATCH_CHARS,
    Constraint,
    PolicyError,
    RegexError,
    RuleSpec,
    SafeRegex,
    Verdict,
    compile_rules,
    evaluate,
    parse_constraints,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

ALLOW_READ = RuleSpec(id=1, effect="allow", server="files", tool="read_file")
DENY_READ = RuleSpec(id=2, effect="deny", server="files", tool="read_file")
ALLOW_ANY = RuleSpec(id=3, effect="allow", server="*", tool="*")


def decide(
    rules: Iterable[RuleSpec],
    *,
    server: str = "files",
    tool: str = "read_file",
    arguments: Mapping[str, Any] | None = None,
    mode: str = "review",
    now: datetime = NOW,
) -> Verdict:
    return evaluate(rules=rules, server=server, tool=tool, arguments=arguments or {}, mode=mode, now=now)


def rule(
    rule_id: int,
    effect: str,
    *constraints: dict[str, Any],
    server: str = "files",
    tool: str = "read_file",
    expires_at: datetime | None = None,
) -> RuleSpec:
    return RuleSpec(
        id=rule_id,
        effect=effect,  # type: ignore[arg-type]
        server=server,
        tool=tool,
        constraints=parse_constraints(list(constraints)),
        expires_at=expires_at,
    )


def within(directory: str) -> dict[str, Any]:
    return {"path": "path", "op": "within", "value": directory}


# --- Order: deny beats allow, then allow, then the mode ----------------------------------------------------


@pytest.mark.parametrize("rules", list(itertools.permutations([ALLOW_READ, DENY_READ, ALLOW_ANY])))
@pytest.mark.parametrize("mode", ["review", "whitelist"])
def test_deny_beats_allow_regardless_of_order(rules: tuple[RuleSpec, ...], mode: str) -> None:
    verdict = decide(rules, mode=mode)
    assert verdict.outcome == "deny"
    assert verdict.rule_id == DENY_READ.id
    assert "#2" in verdict.reason


CONSTRAINED = [
    rule(10, "allow", within("/srv/project")),
    rule(11, "deny", {"path": "path", "op": "glob", "value": "*.key"}),
    rule(12, "allow", {"path": "path", "op": "prefix", "value": "/srv/"}, tool="read_*"),
    rule(13, "allow", server="*", tool="*"),
]


@pytest.mark.parametrize("rules", list(itertools.permutations(CONSTRAINED)))
@pytest.mark.parametrize("mode", ["review", "whitelist"])
def test_a_matching_constrained_deny_beats_every_allow_in_every_order(
    rules: tuple[RuleSpec, ...], mode: str
) -> None:
    verdict = decide(rules, arguments={"path": "/srv/project/server.key"}, mode=mode)
    assert (verdict.outcome, verdict.rule_id) == ("deny", 11)
    assert "#11" in verdict.reason and "glob" in verdict.reason


@pytest.mark.parametrize("rules", list(itertools.permutations(CONSTRAINED)))
def test_a_deny_whose_constraint_fails_lets_the_first_allow_win(rules: tuple[RuleSpec, ...]) -> None:
    verdict = decide(rules, arguments={"path": "/srv/project/readme.md"})
    first_allow = next(r for r in rules if r.effect == "allow")
    assert (verdict.outcome, verdict.rule_id) == ("allow", first_allow.id)


def test_the_first_matching_deny_is_named_when_several_match() -> None:
    rules = [ALLOW_ANY, rule(5, "deny"), rule(4, "deny", server="*", tool="*")]
    assert decide(rules).rule_id == 5


def test_a_deny_rule_for_another_tool_does_not_block_an_allowed_one() -> None:
    verdict = decide([DENY_READ, ALLOW_ANY], tool="list_directory")
    assert (verdict.outcome, verdict.rule_id) == ("allow", ALLOW_ANY.id)


def test_the_first_matching_allow_rule_is_named() -> None:
    verdict = decide([ALLOW_READ, ALLOW_ANY])
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
        ("files", "read_file", "files", "read_file2", False),  # exact means exact
    ],
)
def test_glob_patterns_match_server_and_tool(
    server_pattern: str, tool_pattern: str, server: str, tool: str, matches: bool
) -> None:
    spec = RuleSpec(id=7, effect="allow", server=server_pattern, tool=tool_pattern)
    assert decide([spec], server=server, tool=tool).outcome == ("allow" if matches else "review")


def test_whitelist_mode_denies_when_nothing_matches_and_says_no_rule_allowed_it() -> None:
    verdict = decide([ALLOW_READ], tool="write_file", mode="whitelist")
    assert (verdict.outcome, verdict.rule_id) == ("deny", None)
    assert "only allows" in verdict.reason and "no rule allowed" in verdict.reason


def test_whitelist_mode_allows_what_a_rule_allows() -> None:
    assert decide([ALLOW_READ], mode="whitelist").outcome == "allow"


def test_review_mode_asks_a_human_when_nothing_matches() -> None:
    verdict = decide([ALLOW_READ], tool="write_file")
    assert (verdict.outcome, verdict.rule_id) == ("review", None)


def test_no_rules_at_all_means_review() -> None:
    assert decide([]).outcome == "review"


def test_rules_may_be_a_one_shot_iterable() -> None:
    assert decide(iter([ALLOW_READ, DENY_READ])).outcome == "deny"


def test_an_unknown_mode_is_refused_rather_than_guessed() -> None:
    with pytest.raises(ValueError, match="mode"):
        decide([ALLOW_READ], mode="permissive")


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        decide([ALLOW_READ], now=datetime(2026, 1, 1))


# --- Reasons -----------------------------------------------------------------------------------------------


def test_an_allow_reason_names_the_rule_and_the_constraint_that_matched() -> None:
    verdict = decide([rule(10, "allow", within("/srv/project"))], arguments={"path": "/srv/project/a"})
    assert verdict.reason == 'allowed by rule #10 (files/read_file): path within "/srv/project"'


def test_a_review_reason_says_which_constraint_kept_the_allow_rule_from_applying() -> None:
    verdict = decide([rule(10, "allow", within("/srv/project"))], arguments={"path": "/srv/project/../etc"})
    assert verdict.outcome == "review"
    assert "#10 (files/read_file) did not apply" in verdict.reason
    assert "outside /srv/project" in verdict.reason


def test_a_whitelist_denial_says_which_constraint_failed() -> None:
    verdict = decide([rule(10, "allow", within("/srv/project"))], arguments={}, mode="whitelist")
    assert "path within" in verdict.reason and "`path` is missing" in verdict.reason


def test_reasons_fit_the_calls_reason_column() -> None:
    long_glob = {"path": "path", "op": "glob", "value": "x" * 2000}
    verdict = decide([rule(1, "allow", long_glob)], arguments={"path": "y"}, mode="whitelist")
    assert len(verdict.reason) <= 1000


# --- Expiry ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expires_at", "in_force"),
    [
        (None, True),
        (NOW + timedelta(seconds=1), True),
        (NOW, False),  # expires at the instant
        (NOW - timedelta(days=30), False),
    ],
)
def test_an_allow_rule_stops_matching_when_it_expires(expires_at: datetime | None, in_force: bool) -> None:
    verdict = decide([rule(1, "allow", expires_at=expires_at)])
    assert verdict.outcome == ("allow" if in_force else "review")


def test_an_expired_deny_no_longer_blocks_an_allow() -> None:
    rules = [rule(1, "deny", expires_at=NOW - timedelta(minutes=1)), rule(2, "allow")]
    assert (decide(rules).outcome, decide(rules).rule_id) == ("allow", 2)


def test_an_expired_allow_is_not_offered_as_the_near_miss() -> None:
    rules = [rule(1, "allow", within("/a"), expires_at=NOW - timedelta(seconds=1))]
    assert "#1" not in decide(rules, arguments={"path": "/b"}).reason


def test_expiry_is_read_across_time_zones() -> None:
    paris = datetime(2026, 3, 1, 13, 30, tzinfo=UTC).astimezone()  # 13:30 UTC is after NOW
    assert decide([rule(1, "allow", expires_at=paris)]).outcome == "allow"


def test_a_naive_expiry_is_refused() -> None:
    with pytest.raises(PolicyError, match="timezone-aware"):
        RuleSpec(id=1, effect="allow", server="a", tool="b", expires_at=datetime(2026, 1, 1))


def test_an_unknown_effect_is_refused() -> None:
    with pytest.raises(PolicyError, match="effect"):
        RuleSpec(id=1, effect="maybe", server="a", tool="b")  # type: ignore[arg-type]


# --- Constraint operators ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "value", "actual", "holds"),
    [
        ("equals", "r", "r", True),
        ("equals", "r", "R", False),
        ("equals", 1, 1.0, True),
        ("equals", 1, True, False),  # JSON: true is not 1
        ("equals", False, 0, False),
        ("equals", None, None, True),
        ("equals", ["a", 1], ["a", 1], True),
        ("equals", ["a", 1], ["a", 1, 2], False),
        ("equals", {"k": [1]}, {"k": [1]}, True),
        ("equals", {"k": [1]}, {"k": [1], "j": 2}, False),
        ("one_of", ["r", "rb"], "rb", True),
        ("one_of", ["r", "rb"], "w", False),
        ("one_of", [1, "1"], 1, True),
        ("one_of", [True], 1, False),
        ("glob", "*.md", "notes/today.md", True),  # * crosses '/', as in fnmatch
        ("glob", "*.md", "today.txt", False),
        ("glob", "report-[0-9][0-9].csv", "report-07.csv", True),
        ("glob", "report-[0-9][0-9].csv", "report-7.csv", False),
        ("glob", "*.md", 5, None),
        ("regex", r"SELECT \w+ FROM users", "SELECT id FROM users", True),
        ("regex", r"SELECT \w+ FROM users", "SELECT id FROM users; DROP TABLE users", False),  # full match
        ("regex", r"(?i)select .*", "SeLeCt 1", True),
        ("regex", r"[a-z]+", ["abc"], None),
        ("prefix", "https://api.example.com/", "https://api.example.com/v1", True),
        ("prefix", "https://api.example.com/", "https://api.example.com.evil.io/", False),
        ("prefix", "x", None, None),
        ("max_length", 3, "abc", True),
        ("max_length", 3, "abcd", False),
        ("max_length", 2, [1, 2], True),
        ("max_length", 2, [1, 2, 3], False),
        ("max_length", 2, 12345, None),
        ("range", {"min": 1, "max": 10}, 1, True),
        ("range", {"min": 1, "max": 10}, 10, True),
        ("range", {"min": 1, "max": 10}, 10.5, False),
        ("range", {"min": 1, "max": 10}, 0, False),
        ("range", {"min": 1}, 10**9, True),
        ("range", {"max": 0}, -3.5, True),
        ("range", {"max": 0}, True, None),  # a boolean is not a number
        ("range", {"min": 1}, "5", None),
        ("within", "/srv/project", "/srv/project/a.txt", True),
        ("within", "/srv/project", "/srv/project-evil/a.txt", False),
        ("within", "/srv/project", 7, None),
    ],
)
def test_each_operator_holds_fails_or_cannot_tell(
    op: str, value: Any, actual: Any, holds: bool | None
) -> None:
    (constraint,) = parse_constraints([{"path": "arg", "op": op, "value": value}])
    assert constraint.test({"arg": actual}) is holds


@pytest.mark.parametrize(
    "raw",
    [
        {"path": "x", "op": "equals", "value": 1},
        {"path": "x", "op": "one_of", "value": [1]},
        {"path": "x", "op": "glob", "value": "*"},
        {"path": "x", "op": "regex", "value": ".*"},
        {"path": "x", "op": "prefix", "value": "a"},
        {"path": "x", "op": "within", "value": "/"},
        {"path": "x", "op": "max_length", "value": 0},
        {"path": "x", "op": "range", "value": {"min": 0}},
        {"path": "/x", "op": "equals", "value": None},
    ],
)
@pytest.mark.parametrize("effect", ["allow", "deny"])
def test_a_missing_argument_never_satisfies_a_constraint(raw: dict[str, Any], effect: str) -> None:
    (constraint,) = parse_constraints([raw])
    assert constraint.test({"other": 1}) is False
    spec = rule(1, effect, raw)
    assert decide([spec], arguments={"other": 1}).outcome == "review"


def test_an_allow_rule_needs_every_constraint_to_hold() -> None:
    spec = rule(1, "allow", within("/srv/p"), {"path": "mode", "op": "one_of", "value": ["r"]})
    assert decide([spec], arguments={"path": "/srv/p/a", "mode": "r"}).outcome == "allow"
    assert decide([spec], arguments={"path": "/srv/p/a", "mode": "w"}).outcome == "review"
    assert decide([spec], arguments={"path": "/etc/a", "mode": "r"}).outcome == "review"


def test_a_constraint_that_cannot_be_checked_never_lets_an_allow_rule_match() -> None:
    spec = rule(1, "allow", within("/srv/p"))
    verdict = decide([spec], arguments={"path": "relative/file.txt"}, mode="whitelist")
    assert verdict.outcome == "deny" and "could not be checked" in verdict.reason


def test_a_constraint_that_cannot_be_checked_makes_a_deny_rule_apply() -> None:
    spec = rule(1, "deny", within("/etc"))
    verdict = decide([spec, ALLOW_ANY], arguments={"path": "%2e%2e/%00/passwd"})
    assert (verdict.outcome, verdict.rule_id) == ("deny", 1)
    assert "could not be checked" in verdict.reason and "NUL" in verdict.reason


def test_a_deny_rule_can_be_narrowed_to_values_it_can_place() -> None:
    spec = rule(1, "deny", within("/etc"), {"path": "path", "op": "prefix", "value": "/"})
    assert decide([spec, ALLOW_ANY], arguments={"path": "notes.txt"}).outcome == "allow"
    assert decide([spec, ALLOW_ANY], arguments={"path": "/etc/shadow"}).outcome == "deny"


def test_a_deny_rule_on_a_value_too_long_to_match_safely_applies() -> None:
    spec = rule(1, "deny", {"path": "q", "op": "regex", "value": "DROP.*"})
    verdict = decide([spec, ALLOW_ANY], arguments={"q": "x" * (MAX_MATCH_CHARS + 1)})
    assert verdict.outcome == "deny" and "too long" in verdict.reason


def test_an_allow_rule_on_a_value_too_long_to_match_safely_does_not_apply() -> None:
    spec = rule(1, "allow", {"path": "q", "op": "glob", "value": "*"})
    assert decide([spec], arguments={"q": "x" * (MAX_MATCH_CHARS + 1)}).outcome == "review"
    assert decide([spec], arguments={"q": "x" * MAX_MATCH_CHARS}).outcome == "allow"


# --- JSON pointers -----------------------------------------------------------------------------------------

NESTED = {
    "options": {"mode": "r", "depth": 2, "flags": ["a", "b"]},
    "paths": ["/srv/a", "/srv/b"],
    "a/b": {"c~d": "escaped"},
    "": "empty key",
    "/lead": "slash key",
}


@pytest.mark.parametrize(
    ("path", "value", "holds"),
    [
        ("/options/mode", "r", True),
        ("/options/depth", 2, True),
        ("/options/flags/1", "b", True),
        ("/options/flags/2", "c", False),  # out of range: missing
        ("/options/flags/-", "c", False),  # '-' names no element
        ("/options/flags/01", "b", False),  # no leading zeros
        ("/paths/0", "/srv/a", True),
        ("/a~1b/c~0d", "escaped", True),
        ("/", "empty key", True),
        ("/~1lead", "slash key", True),
        ("/options/mode/x", "r", False),  # through a string
        ("/nope/mode", "r", False),
        ("options", {"mode": "r", "depth": 2, "flags": ["a", "b"]}, True),
        ("a/b", {"c~d": "escaped"}, True),  # a top-level name is taken literally
    ],
)
def test_json_pointers_reach_nested_values(path: str, value: Any, holds: bool) -> None:
    (constraint,) = parse_constraints([{"path": path, "op": "equals", "value": value}])
    assert constraint.test(NESTED) is holds


# --- Parsing -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "located"),
    [
        ("within", "constraints:"),
        ([{"path": "x", "op": "equals", "value": 1}, "x"], "constraints[1]:"),
        ([{"op": "equals", "value": 1}], "constraints[0].path: is required"),
        ([{"path": "x", "value": 1}], "constraints[0].op: is required"),
        ([{"path": "x", "op": "equals"}], "constraints[0].value: is required"),
        ([{"path": "x", "op": "equals", "value": 1, "note": "?"}], "constraints[0]: unknown field 'note'"),
        ([{"path": 3, "op": "equals", "value": 1}], "constraints[0].path:"),
        ([{"path": "/a~2b", "op": "equals", "value": 1}], "constraints[0].path: invalid JSON pointer"),
        ([{"path": "x", "op": "contains", "value": 1}], "constraints[0].op: unknown operator 'contains'"),
        ([{"path": "x", "op": 5, "value": 1}], "constraints[0].op:"),
        ([{"path": "x", "op": "equals", "value": float("nan")}], "constraints[0].value:"),
        ([{"path": "x", "op": "equals", "value": {1: 2}}], "constraints[0].value:"),
        ([{"path": "x", "op": "one_of", "value": []}], "constraints[0].value: one_of"),
        ([{"path": "x", "op": "one_of", "value": "r"}], "constraints[0].value: one_of"),
        ([{"path": "x", "op": "glob", "value": 3}], "constraints[0].value: glob"),
        ([{"path": "x", "op": "prefix", "value": ""}], "constraints[0].value: prefix"),
        ([{"path": "x", "op": "regex", "value": "("}], "constraints[0].value: regex"),
        ([{"path": "x", "op": "regex", "value": r"(a)\1"}], "backreferences"),
        ([{"path": "x", "op": "within", "value": "relative/dir"}], "must be absolute"),
        ([{"path": "x", "op": "within", "value": ""}], "constraints[0].value:"),
        ([{"path": "x", "op": "within", "value": "/srv\\x"}], "'\\'"),
        ([{"path": "x", "op": "within", "value": "C:x"}], "drive"),
        ([{"path": "x", "op": "max_length", "value": -1}], "max_length"),
        ([{"path": "x", "op": "max_length", "value": True}], "max_length"),
        ([{"path": "x", "op": "range", "value": {}}], "range"),
        ([{"path": "x", "op": "range", "value": {"min": 5, "max": 1}}], "greater than"),
        ([{"path": "x", "op": "range", "value": {"min": "1"}}], "range min"),
        ([{"path": "x", "op": "range", "value": {"low": 1}}], "range"),
    ],
)
def test_invalid_constraints_are_refused_naming_the_entry_and_field(raw: Any, located: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_constraints(raw)
    assert located in str(caught.value)


def test_a_policy_error_carries_the_index_and_field_for_a_form() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_constraints(
            [{"path": "x", "op": "equals", "value": 1}, {"path": "y", "op": "nope", "value": 1}]
        )
    assert (caught.value.index, caught.value.field) == (1, "op")


def test_no_constraints_is_an_empty_tuple() -> None:
    assert parse_constraints([]) == () and parse_constraints(None) == ()


def test_constraints_round_trip_through_their_json_form() -> None:
    raw = [
        {"path": "/options/flags", "op": "equals", "value": ["a", {"b": [1, None, True]}]},
        {"path": "mode", "op": "one_of", "value": ["r", "rb"]},
        {"path": "n", "op": "range", "value": {"min": 1, "max": 5}},
        {"path": "path", "op": "within", "value": "/srv/project"},
        {"path": "q", "op": "regex", "value": "(?i)select .*"},
    ]
    parsed = parse_constraints(raw)
    assert [c.to_dict() for c in parsed] == raw
    assert parse_constraints([c.to_dict() for c in parsed]) == parsed


def test_constraints_and_rules_are_immutable_and_hashable() -> None:
    (constraint,) = parse_constraints([{"path": "x", "op": "one_of", "value": ["a", {"k": 1}]}])
    assert isinstance(constraint.value, tuple)
    with pytest.raises(TypeError):
        constraint.value[1]["k"] = 2
    spec = RuleSpec(id=1, effect="allow", server="s", tool="t", constraints=(constraint,))
    assert hash(spec) == hash(RuleSpec(id=1, effect="allow", server="s", tool="t", constraints=(constraint,)))


def test_a_constraint_built_directly_is_validated_too() -> None:
    with pytest.raises(PolicyError):
        Constraint(path="x", op="within", value="relative")


# --- Regular expressions: bounded time ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        r"(a)\1",  # backreference: not a regular language, exponential in re
        r"^(a+)\1*$",
        r"(?P<x>a)(?P=x)",
        r"(?=a)a",  # lookahead
        r"(?<!a)b",  # lookbehind
        r"(?(1)a|b)",  # conditional
        r"(?>a+)",  # atomic group
        r"a*+",  # possessive
        r"\bword\b",
        r"(?m)^a$",
        r"^*a",
        "x" * 1001,  # too long
        "a{1000}" * 3,  # compiles to too many states
    ],
)
def test_patterns_outside_the_safe_subset_are_refused_at_parse(pattern: str) -> None:
    with pytest.raises(RegexError):
        parse_constraints([{"path": "q", "op": "regex", "value": pattern}])


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        (r"(a+)+$", "a" * (MAX_MATCH_CHARS - 1) + "!", False),  # exponential in re, linear here
        (r"(a|a)*b", "a" * MAX_MATCH_CHARS, False),
        (r"(a|aa)*c", "a" * (MAX_MATCH_CHARS - 1) + "c", True),
        (r".*a.*a.*a.*a.*b", "a" * MAX_MATCH_CHARS, False),  # O(n^5) in re
        (r"(\w+\s?)*$", "word " * 1500 + "!", False),
        (r"(x+x+)+y", "x" * 5000, False),
        (r"([a-z0-9]+\.)+com", "a." * 4000 + "com", True),
    ],
)
def test_patterns_that_backtrack_catastrophically_in_re_give_the_right_answer_on_long_inputs(
    pattern: str, text: str, matches: bool
) -> None:
    (constraint,) = parse_constraints([{"path": "q", "op": "regex", "value": pattern}])
    assert constraint.test({"q": text}) is matches


def _random_pattern(rng: random.Random, depth: int = 0) -> str:
    atoms = ["a", "b", ".", "[ab]", "[^a]", r"\d", "[a-c1]", r"\w", "1"]
    if depth < 2:
        atoms += ["(" + _random_pattern(rng, depth + 1) + ")", "(?:" + _random_pattern(rng, depth + 1) + ")"]
    pieces = []
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.08:
            pieces.append(rng.choice("^$"))  # anchors may stand anywhere, as in re
            continue
        pieces.append(rng.choice(atoms) + rng.choice(["", "", "*", "+", "?", "{1,2}", "{2}", "*?", "{,2}"]))
    sequence = "".join(pieces)
    if rng.random() < 0.25:
        sequence += "|" + _random_pattern(rng, depth + 1) if depth < 2 else ""
    return sequence


def test_the_safe_engine_agrees_with_re_on_random_patterns_and_texts() -> None:
    rng = random.Random(20260301)
    compared = 0
    for _ in range(600):
        pattern = _random_pattern(rng)
        if rng.random() < 0.2:
            pattern = "^" + pattern + "$"
        if rng.random() < 0.2:
            pattern = "(?i)" + pattern
        safe = SafeRegex(pattern)
        reference = re.compile(pattern.replace("$", r"\Z"))  # '$' is the end of the text, never before a \n
        for _ in range(12):
            text = "".join(rng.choice("abAB1c\n") for _ in range(rng.randint(0, 7)))
            assert safe.fullmatch(text) == (reference.fullmatch(text) is not None), (pattern, text)
            assert safe.search(text) == (reference.search(text) is not None), (pattern, text)
            compared += 1
    assert compared == 7200


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        (r"\x41\u0042", "AB", True),
        (r"[\]\-]+", "]-]", True),
        (r"[]a]+", "]a", True),
        (r"a{}", "a{}", True),  # '{' that is not a quantifier is a literal, as in re
        (r"a{,}", "aaa", True),
        (r"(?s)a.b", "a\nb", True),
        (r"a.b", "a\nb", False),
        (r"(?i:ab)c", "ABc", True),
        (r"(?i:ab)c", "ABC", False),
        (r"\.", ".", True),
        (r"[\b]", "\b", True),
        (r"\d+", "٣٤", True),  # Unicode digits, as in re
        (r"(?P<year>\d{4})-\d\d", "2026-03", True),
        (r"^a|b$", "a", True),
        (r"a^b", "ab", False),  # '^' is the start of the text only
        (r"(^|x)a", "a", True),
    ],
)
def test_the_safe_subset_reads_patterns_as_re_does(pattern: str, text: str, matches: bool) -> None:
    assert SafeRegex(pattern).fullmatch(text) is matches
    assert (re.fullmatch(pattern, text) is not None) is matches


# --- within: the traversal catalogue -----------------------------------------------------------------------

CATALOGUE: list[tuple[str, str, bool | None]] = [
    # inside
    ("/srv/project", "/srv/project", True),
    ("/srv/project", "/srv/project/", True),
    ("/srv/project", "/srv/project/a.txt", True),
    ("/srv/project", "/srv/project/./a.txt", True),
    ("/srv/project", "/srv/project//nested///deep/file", True),
    ("/srv/project", "/srv/project/a/../b.txt", True),
    ("/srv/project", "/srv/./project/x", True),
    ("/srv/project", "//srv/project/x", True),
    ("/srv/project", "/../srv/project/x", True),  # '/..' is '/'
    ("/srv/project", "%2Fsrv%2Fproject%2Fx", True),
    ("/srv/project", "/srv/project/a%20b.txt", True),
    ("/srv/project", "/srv/project/..hidden", True),  # a name, not '..'
    ("/srv/project", "/srv/project/...", True),  # a name on POSIX
    ("/srv/project", "/srv/project/~/x", True),  # a directory named '~'
    ("/srv/project", "/srv/project/x\\..\\y", True),  # inside under both readings of '\'
    ("/srv/project/", "/srv/project/x", True),
    ("/srv/../srv/project", "/srv/project/x", True),
    ("/", "/etc/passwd", True),
    # outside
    ("/srv/project", "/srv/project-evil", False),
    ("/srv/project", "/srv/project-evil/x", False),
    ("/srv/project", "/srv/projec", False),
    ("/srv/project", "/srv", False),
    ("/srv/project", "/etc/passwd", False),
    ("/srv/project", "/srv/project/../etc/passwd", False),
    ("/srv/project", "/srv/project/a/../../etc", False),
    ("/srv/project", "/srv/project/../project-evil/x", False),
    ("/srv/project", "/srv/project/%2e%2e/etc", False),
    ("/srv/project", "/srv/project/%2E%2E%2F%2E%2E%2Fetc", False),
    ("/srv/project", "/srv/project/%252e%252e/%252e%252e/etc", False),  # double-encoded
    ("/srv/project", "/srv/project/%25252e%25252e/x", False),  # triple-encoded
    ("/srv/project", "/srv/project/..%2f..%2fetc", False),
    ("/srv/project", "/srv/project\\..\\..\\etc", False),  # '\' or not, it leaves
    ("/srv/project", "/srv/Project/x", False),  # POSIX names are case-sensitive
    ("/srv/project", "/srv/project/../../../../../../etc", False),
    # cannot be placed
    ("/srv/project", "../srv/project/x", None),
    ("/srv/project", "srv/project/x", None),
    ("/srv/project", "x.txt", None),
    ("/srv/project", "", None),
    ("/srv/project", "~/project", None),
    ("/srv/project", "~root/.ssh/id_rsa", None),
    ("/srv/project", "/srv/project/%00/x", None),
    ("/srv/project", "/srv/project/x\x00.txt", None),
    ("/srv/project", "/srv/project/%c0%ae%c0%ae/etc", None),  # overlong UTF-8
    ("/srv/project", "/srv/project/a\\..\\..\\etc", None),  # inside on POSIX, outside on Windows
    ("/srv/project", "C:\\srv\\project\\x", None),
    ("/srv/project", "/srv/project/\uff0e\uff0e/etc", None),  # fullwidth dots: NFKC reads '..'
    ("/srv/project", "file:///srv/project/x", None),
    ("/srv/project", "%" + "25" * 20 + "2e", None),  # more than 16 levels of encoding
    # Windows directories
    ("C:\\work", "c:/work/x", True),
    ("C:\\work", "C:\\WORK\\Sub\\x", True),  # case-insensitive under a drive
    ("c:/work", "C:\\work.\\x", True),  # Windows trims trailing dots
    ("C:\\work", "C:\\work\\..\\windows\\system32", False),
    ("C:\\work", "C:\\work2", False),
    ("C:\\work", "D:\\work\\x", False),
    ("C:\\work", "C:work\\x", None),  # relative to the drive's current directory
    ("C:\\work", "\\work\\x", None),  # root of the current drive
    ("C:\\work", "\\\\server\\share\\work", None),  # UNC
    ("C:\\work", "\\\\?\\C:\\work\\x", None),  # device path
    ("C:\\work", "C:\\work\\...\\x", None),
    ("C:\\work", "C:\\work\\ ..\\x", None),
    # home directories
    ("~/proj", "~/proj/x", True),
    ("~/proj", "~/proj/../other", False),
    ("~/proj", "~/../other/proj", None),  # climbs out of the home
    ("~/proj", "~alice/proj", None),
    ("~/proj", "/home/alice/proj", None),
    ("~alice/proj", "~alice/proj/x", True),
]


@pytest.mark.parametrize(("directory", "path", "inside"), CATALOGUE)
def test_within_normalises_paths_and_refuses_anything_that_escapes(
    directory: str, path: str, inside: bool | None
) -> None:
    (constraint,) = parse_constraints([{"path": "path", "op": "within", "value": directory}])
    assert constraint.test({"path": path}) is inside


@pytest.mark.parametrize(("directory", "path", "inside"), CATALOGUE)
def test_only_a_path_placed_inside_is_allowed_and_any_other_is_denied(
    directory: str, path: str, inside: bool | None
) -> None:
    allow = rule(1, "allow", within(directory))
    deny = rule(2, "deny", within(directory))
    assert decide([allow], arguments={"path": path}).outcome == ("allow" if inside else "review")
    assert decide([deny, ALLOW_ANY], arguments={"path": path}).outcome == (
        "allow" if inside is False else "deny"
    )


def _escape_prone_reading(path: str) -> str | None:
    """The most escape-prone reading of a path: fully decoded, NFKC, '\\' as separator, '..' resolved."""
    for _ in range(20):
        decoded = unquote(path, errors="replace")
        if decoded == path:
            break
        path = decoded
    path = unicodedata.normalize("NFKC", path).replace("\\", "/")
    if not path.startswith("/"):
        return None
    return posixpath.normpath("/" + path.lstrip("/"))


def test_a_path_that_escapes_its_directory_never_matches_within_on_random_paths() -> None:
    rng = random.Random(6901)
    pieces = [
        "..",
        ".",
        "",
        "a",
        "project",
        "srv",
        "%2e%2e",
        "%2f",
        "%252e%252e",
        "\\..",
        "\uff0e\uff0e",
        "~",
        "x",
    ]
    directory = pathnorm.parse_directory("/srv/project")
    inside_count = 0
    for _ in range(5000):
        parts = [rng.choice(pieces) for _ in range(rng.randint(1, 7))]
        path = rng.choice(["/", "/srv/project/", ""]) + rng.choice(["/", "\\", "%2f"]).join(parts)
        inside, _ = pathnorm.within(path, directory)
        if inside:
            inside_count += 1
            reading = _escape_prone_reading(path)
            assert reading is not None, path
            assert reading == "/srv/project" or reading.startswith("/srv/project/"), (path, reading)
    assert inside_count > 100  # the property was exercised


# --- compile_rules: the same verdicts as reading the rules in order ----------------------------------------


def _naive(
    rules: list[RuleSpec], *, server: str, tool: str, arguments: Mapping[str, Any], mode: str, now: datetime
) -> tuple[str, int | None]:
    """The documented order, read literally: skip expired, first matching deny, first matching allow, mode."""

    def applies(spec: RuleSpec) -> bool:
        if not (fnmatch.fnmatchcase(server, spec.server) and fnmatch.fnmatchcase(tool, spec.tool)):
            return False
        results = [c.test(arguments) for c in spec.constraints]
        if spec.effect == "deny":
            return all(r is not False for r in results)
        return all(r is True for r in results)

    live = [r for r in rules if r.expires_at is None or r.expires_at > now]
    for effect in ("deny", "allow"):
        for spec in live:
            if spec.effect == effect and applies(spec):
                return effect, spec.id
    return ("deny" if mode == "whitelist" else "review"), None


SERVER_NAMES = ["files", "git", "db", "prod-db", "web"]
TOOL_NAMES = ["read_file", "write_file", "list_dir", "query", "exec", "read_multiple_files"]
SERVER_PATTERNS = [*SERVER_NAMES, "*", "prod-*", "f?les", "[fg]*"]
TOOL_PATTERNS = [*TOOL_NAMES, "*", "read_*", "*_file", "[rw]*"]
RANDOM_CONSTRAINTS: list[dict[str, Any]] = [
    within("/srv/p"),
    within("/etc"),
    {"path": "mode", "op": "one_of", "value": ["r", "rb"]},
    {"path": "mode", "op": "equals", "value": "w"},
    {"path": "path", "op": "glob", "value": "*.md"},
    {"path": "path", "op": "prefix", "value": "/srv/"},
    {"path": "/opts/n", "op": "range", "value": {"min": 1, "max": 10}},
    {"path": "q", "op": "regex", "value": "SELECT .*"},
    {"path": "q", "op": "max_length", "value": 12},
]
RANDOM_ARGUMENTS: list[dict[str, Any]] = [
    {},
    {"path": "/srv/p/readme.md", "mode": "r"},
    {"path": "/srv/p/../../etc/passwd", "mode": "w", "opts": {"n": 3}},
    {"path": "/etc/hosts", "q": "SELECT 1"},
    {"path": "notes.md", "opts": {"n": 30}, "q": "DROP TABLE users"},
    {"path": "/srv/p/x\\..\\..\\y.md", "mode": "rb", "opts": {"n": "3"}},
    {"path": 5, "q": ["SELECT"]},
]


def test_compiled_rule_sets_give_the_same_verdict_as_a_naive_loop_on_random_rule_sets() -> None:
    rng = random.Random(1234)
    for _ in range(150):
        rules = []
        for rule_id in range(1, rng.randint(0, 40) + 1):
            constraints = rng.sample(RANDOM_CONSTRAINTS, k=rng.choice([0, 0, 1, 1, 2]))
            expires = rng.choice(
                [None, None, None, NOW - timedelta(seconds=1), NOW, NOW + timedelta(hours=1)]
            )
            rules.append(
                rule(
                    rng.randint(1, 10_000) if rng.random() < 0.5 else rule_id,
                    rng.choice(["allow", "allow", "deny"]),
                    *constraints,
                    server=rng.choice(SERVER_PATTERNS),
                    tool=rng.choice(TOOL_PATTERNS),
                    expires_at=expires,
                )
            )
        ruleset = compile_rules(rules)
        assert len(ruleset) == len(rules)
        for _ in range(20):
            call: dict[str, Any] = {
                "server": rng.choice([*SERVER_NAMES, "other"]),
                "tool": rng.choice([*TOOL_NAMES, "other"]),
                "arguments": rng.choice(RANDOM_ARGUMENTS),
                "mode": rng.choice(["review", "whitelist"]),
                "now": NOW,
            }
            verdict = ruleset.evaluate(**call)
            assert (verdict.outcome, verdict.rule_id) == _naive(rules, **call), call
            assert decide(rules, **call) == verdict


def test_candidates_come_back_in_rule_order_across_exact_and_glob_buckets() -> None:
    rules = [
        rule(1, "allow", server="*", tool="*"),
        rule(2, "allow", server="files", tool="read_file"),
        rule(3, "allow", server="files", tool="read_*"),
        rule(4, "allow", server="f*", tool="read_file"),
        rule(5, "allow", server="git", tool="read_file"),
    ]
    candidates = compile_rules(rules).candidates(server="files", tool="read_file")
    assert [spec.id for _, spec in candidates] == [1, 2, 3, 4]


def test_the_empty_pointer_constrains_all_the_arguments_at_once() -> None:
    (exact,) = parse_constraints([{"path": "", "op": "equals", "value": {"path": "/srv/a", "n": 1}}])
    assert exact.test({"n": 1, "path": "/srv/a"}) is True
    assert exact.test({"n": 1, "path": "/srv/a", "mode": "append"}) is False
    assert exact.describe() == '(all arguments) equals {"path": "/srv/a", "n": 1}'

"""The policy engine: a pure, typed function from a team's rules and one call to a verdict.

The order (docs/policy.md, "Evaluation order"): the guards (``approvals.guards``) run before this and may
refuse the call outright; then

1. rules whose ``expires_at`` is at or before ``now`` are skipped;
2. the first deny rule (in the given order) that matches the call wins: the call is denied;
3. else the first allow rule that matches wins: the call is allowed;
4. else the team mode decides: ``review`` → a human decides, ``whitelist`` → denied.

A rule matches when its server and tool globs match (shell-style, case-sensitive) and its argument
constraints hold. A constraint is true, false, or *unknown* when the value cannot be checked (a string too
long to match safely, a path that cannot be placed, a value of the wrong type). Unknown is read against the
caller: it never lets an allow rule match, and it never stops a deny rule from matching. An argument that is
missing makes a constraint false.

Disabled rules are the caller's to leave out; the engine sees only rules that are in force.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from approvals import pathnorm

Outcome = Literal["allow", "deny", "review"]
Effect = Literal["allow", "deny"]
Op = Literal["equals", "one_of", "glob", "regex", "prefix", "within", "max_length", "range"]
Mode = Literal["review", "whitelist"]

OPS: Final[tuple[str, ...]] = get_args(Op)
MODES: Final[tuple[str, ...]] = get_args(Mode)

#: Longest string a ``glob`` or ``regex`` constraint reads; a longer value makes the constraint unknown.
MAX_MATCH_CHARS: Final = 8192
#: Longest ``regex`` pattern accepted, and the size of the automaton it may compile to.
MAX_PATTERN_CHARS: Final = 1000
MAX_REGEX_STATES: Final = 2000
#: Longest reason written on a call (``ToolCall.reason`` holds 1000 characters).
MAX_REASON_CHARS: Final = 900


class PolicyError(ValueError):
    """A rule or constraint that cannot be used. ``index`` and ``field`` locate it in the list given."""

    def __init__(self, message: str, *, index: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.index = index
        self.field = field


# --- Constraints ---------------------------------------------------------------------------------------

Check = tuple[bool | None, str]  # (holds? None = cannot be told, a few words for the reviewer when not True)
_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class Constraint:
    """One condition on one argument value.

    ``path`` is a top-level argument name (``"path"``) or, starting with ``/``, a JSON pointer (RFC 6901,
    ``~1`` for ``/`` and ``~0`` for ``~``) into nested objects and arrays (``"/options/mode"``,
    ``"/paths/0"``). ``value``'s shape depends on ``op`` (docs/policy.md); lists in it are kept as tuples
    and objects as read-only mappings, so a constraint is immutable. Invalid input raises ``PolicyError``.
    """

    path: str
    op: Op
    value: Any = field(hash=False)
    _pointer: tuple[str, ...] = field(init=False, repr=False, compare=False, hash=False)
    _test: Callable[[Any], Check] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pointer", _parse_path(self.path))
        if self.op not in OPS:
            raise PolicyError(f"unknown operator {self.op!r} (expected one of: {', '.join(OPS)})", field="op")
        frozen, test = _COMPILERS[self.op](self.value)
        object.__setattr__(self, "value", frozen)
        object.__setattr__(self, "_test", test)

    def test(self, arguments: Mapping[str, Any]) -> bool | None:
        """Does the constraint hold for these arguments? ``None`` when it cannot be told."""
        return self.check(arguments)[0]

    def check(self, arguments: Mapping[str, Any]) -> Check:
        """Like ``test``, with a few words saying why when the answer is not ``True``."""
        value = _resolve(arguments, self._pointer)
        if value is _MISSING:
            return False, "is missing"
        return self._test(value)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as ``parse_constraints`` reads it."""
        return {"path": self.path, "op": self.op, "value": _thaw(self.value)}

    def describe(self) -> str:
        """``path op value`` for reasons and lists, the value cut short."""
        where = self.path or "(all arguments)"
        return f"{where} {self.op} {shorten(json.dumps(_thaw(self.value), ensure_ascii=False))}"


def parse_constraints(raw: Any) -> tuple[Constraint, ...]:
    """Read a rule's ``constraints`` JSON (a list of ``{"path", "op", "value"}`` objects).

    Raises ``PolicyError`` naming the entry and field, e.g. ``constraints[2].value: …``.
    """
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise PolicyError("constraints: must be a list of {path, op, value} objects", field="constraints")
    out: list[Constraint] = []
    for index, entry in enumerate(raw):
        where = f"constraints[{index}]"
        if not isinstance(entry, Mapping):
            raise PolicyError(f"{where}: must be an object with path, op and value", index=index)
        unknown = sorted(set(entry) - {"path", "op", "value"})
        if unknown:
            raise PolicyError(f"{where}: unknown field {unknown[0]!r}", index=index, field=unknown[0])
        for name in ("path", "op", "value"):
            if name not in entry:
                raise PolicyError(f"{where}.{name}: is required", index=index, field=name)
        if not isinstance(entry["op"], str):
            raise PolicyError(f"{where}.op: must be a string", index=index, field="op")
        try:
            out.append(Constraint(path=entry["path"], op=entry["op"], value=entry["value"]))  # type: ignore[arg-type]
        except PolicyError as error:
            name = error.field or "value"
            raise type(error)(f"{where}.{name}: {error.message}", index=index, field=name) from None
    return tuple(out)


def _parse_path(path: Any) -> tuple[str, ...]:
    if path == "":
        return ()  # RFC 6901: the empty pointer is the whole document, here all the arguments
    if not isinstance(path, str):
        raise PolicyError("must be an argument name or a JSON pointer starting with '/'", field="path")
    if not path.startswith("/"):
        return (path,)
    tokens = path[1:].split("/")
    for token in tokens:
        if re.search(r"~(?![01])", token):
            raise PolicyError(f"invalid JSON pointer {path!r}: '~' must be followed by 0 or 1", field="path")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in tokens)


def _resolve(arguments: Any, pointer: tuple[str, ...]) -> Any:
    node = arguments
    for token in pointer:
        if isinstance(node, Mapping):
            if token not in node:
                return _MISSING
            node = node[token]
        elif isinstance(node, list | tuple):
            if not re.fullmatch(r"0|[1-9][0-9]*", token) or int(token) >= len(node):
                return _MISSING
            node = node[int(token)]
        else:
            return _MISSING
    return node


def _freeze(value: Any, where: str = "value") -> Any:
    """A JSON value made immutable; raises PolicyError for anything that is not JSON."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PolicyError(f"{where} must be a finite number")
        return value
    if isinstance(value, list | tuple):
        return tuple(_freeze(v, where) for v in value)
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise PolicyError(f"{where}: object keys must be strings")
        return MappingProxyType({k: _freeze(v, where) for k, v in value.items()})
    raise PolicyError(f"{where} must be JSON (got {type(value).__name__})")


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON means it: ``true`` is not ``1``, ``1`` is ``1.0``, lists and tuples compare alike."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return False


def json_kind(value: Any) -> str:
    """``a string``, ``a number``…: a JSON value's kind, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return "an object"


def shorten(text: str, limit: int = 60) -> str:
    """The text, cut to ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _compile_equals(value: Any) -> tuple[Any, Callable[[Any], Check]]:
    frozen = _freeze(value)

    def test(actual: Any) -> Check:
        return (True, "") if json_equal(actual, frozen) else (False, "has another value")

    return frozen, test


def _compile_one_of(value: Any) -> tuple[Any, Callable[[Any], Check]]:
    if not isinstance(value, list | tuple) or not value:
        raise PolicyError("one_of takes a non-empty list of values")
    frozen = _freeze(value)

    def test(actual: Any) -> Check:
        if any(json_equal(actual, option) for option in frozen):
            return True, ""
        return False, "is none of the listed values"

    return frozen, test


def _string_test(match: Callable[[str], bool], what: str, *, capped: bool) -> Callable[[Any], Check]:
    def test(actual: Any) -> Check:
        if not isinstance(actual, str):
            return None, f"is {json_kind(actual)}, not a string"
        if capped and len(actual) > MAX_MATCH_CHARS:
            return None, f"is longer than {MAX_MATCH_CHARS} characters, too long to match safely"
        return (True, "") if match(actual) else (False, f"does not match {what}")

    return test


def _compile_glob(value: Any) -> tuple[Any, Callable[[Any], Check]]:
    if not isinstance(value, str):
        raise PolicyError("glob takes a string pattern")
    # fnmatch's translation (Python ≥ 3.9) uses atomic groups: no backtracking between stars.
    matcher = re.compile(fnmatch.translate(value)).match
    return value, _string_test(lambda s: matcher(s) is not None, f"glob {shorten(value)!r}", capped=True)


def _compile_regex(value: Any) -> tuple[Any, Callable[[Any], Check]]:
    if not isinstance(value, str):
        raise PolicyError("regex takes a string pattern")
    pattern = _shared_regex(value)
    return value, _string_test(pattern.fullmatch, f"regex {shorten(value)!r}", capped=True)


@functools.lru_cache(maxsize=4096)
def _shared_regex(pattern: str) -> SafeRegex:
    """One automaton per distinct pattern, shared by the rules that use it (it is thread-safe)."""
    return SafeRegex(pattern)


def _compile_prefix(value: Any) -> tuple[Any, Callable[[Any], Check]]:
    if not isinstance(value, str) or not value:
        raise PolicyError("prefix takes a non-empty string")
    return value, _string_test(lambda s: s.startswith(value), f"prefix {shorten(value)!r}", capped=False)


def _compile_within(value: Any) -> tuple[Any, Callable[[Any], Check]]:
    if not isinstance(value, str):
        raise PolicyError("within takes a directory as a string")
    try:
        directory = pathnorm.parse_directory(value)
    except pathnorm.PathProblem as problem:
        raise PolicyError(f"directory {value!r} {problem}") from None

    def test(actual: Any) -> Check:
        if not isinstance(actual, str):
            return None, f"is {json_kind(actual)}, not a path"
        return pathnorm.within(actual, directory)

    return value, test


def _compile_max_length(value: Any) -> tuple[Any, Callable[[Any], Check]]:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PolicyError("max_length takes a whole number ≥ 0")

    def test(actual: Any) -> Check:
        if not isinstance(actual, str | list | tuple):
            return None, f"is {json_kind(actual)}, which has no length"
        return (True, "") if len(actual) <= value else (False, f"is longer than {value}")

    return value, test


def _compile_range(value: Any) -> tuple[Any, Callable[[Any], Check]]:
    if not isinstance(value, Mapping) or not value or set(value) - {"min", "max"}:
        raise PolicyError('range takes {"min": number, "max": number}, either optional')
    bounds: dict[str, float] = {}
    for key in ("min", "max"):
        if key in value and value[key] is not None:
            bound = value[key]
            if isinstance(bound, bool) or not isinstance(bound, int | float) or not math.isfinite(bound):
                raise PolicyError(f"range {key} must be a finite number")
            bounds[key] = bound
    if not bounds:
        raise PolicyError("range needs a min, a max or both")
    low, high = bounds.get("min", -math.inf), bounds.get("max", math.inf)
    if low > high:
        raise PolicyError("range min is greater than its max")

    def test(actual: Any) -> Check:
        if isinstance(actual, bool) or not isinstance(actual, int | float) or not math.isfinite(actual):
            return None, f"is {json_kind(actual)}, not a finite number"
        if low <= actual <= high:
            return True, ""
        return False, "is below the minimum" if actual < low else "is above the maximum"

    return _freeze(dict(value)), test


_COMPILERS: Final[dict[str, Callable[[Any], tuple[Any, Callable[[Any], Check]]]]] = {
    "equals": _compile_equals,
    "one_of": _compile_one_of,
    "glob": _compile_glob,
    "regex": _compile_regex,
    "prefix": _compile_prefix,
    "within": _compile_within,
    "max_length": _compile_max_length,
    "range": _compile_range,
}


# --- Rules and verdicts --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """The part of a rule the engine needs. ``server`` and ``tool`` are case-sensitive shell globs."""

    id: int
    effect: Effect
    server: str
    tool: str
    constraints: tuple[Constraint, ...] = ()
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.effect not in ("allow", "deny"):
            raise PolicyError(f"effect must be 'allow' or 'deny', not {self.effect!r}", field="effect")
        if self.expires_at is not None and self.expires_at.utcoffset() is None:
            raise PolicyError("expires_at must be timezone-aware", field="expires_at")
        if not isinstance(self.constraints, tuple):
            object.__setattr__(self, "constraints", tuple(self.constraints))

    @property
    def label(self) -> str:
        return f"#{self.id} ({self.server}/{self.tool})"

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def matches(self, *, server: str, tool: str) -> bool:
        """Do the server and tool globs match? (Constraints aside.)"""
        return fnmatch.fnmatchcase(server, self.server) and fnmatch.fnmatchcase(tool, self.tool)

    def applies(self, arguments: Mapping[str, Any]) -> bool:
        """Do the constraints let this rule apply to these arguments? (Server and tool aside.)

        All constraints must hold. Unknown counts against an allow rule and for a deny rule.
        """
        strict = self.effect == "allow"
        for constraint in self.constraints:
            holds = constraint.check(arguments)[0]
            if holds is False or (holds is None and strict):
                return False
        return True

    def explain(self, arguments: Mapping[str, Any]) -> str:
        """Why ``applies`` says what it says, in words for a reviewer ("" for a rule without constraints)."""
        unknown: list[str] = []
        for constraint in self.constraints:
            holds, why = constraint.check(arguments)
            if holds is False or (holds is None and self.effect == "allow"):
                verb = "could not be checked" if holds is None else "failed"
                return f"{constraint.describe()} {verb}: `{constraint.path}` {why}"
            if holds is None:
                unknown.append(f"{constraint.describe()} could not be checked: `{constraint.path}` {why}")
        if unknown:
            return "; ".join(unknown) + "; a deny rule applies when it cannot be checked"
        return " and ".join(c.describe() for c in self.constraints)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the policy says of a call, and why."""

    outcome: Outcome
    reason: str
    rule_id: int | None = None


def _why(rule: RuleSpec, arguments: Mapping[str, Any]) -> str:
    why = rule.explain(arguments)
    return f": {why}" if why else ""


def _cut(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"


class _Tools:
    """Rules of one server pattern, by tool: exact names in a dict, globs grouped by pattern."""

    __slots__ = ("exact", "globs")

    def __init__(self) -> None:
        self.exact: dict[str, list[tuple[int, RuleSpec]]] = {}
        self.globs: dict[str, list[tuple[int, RuleSpec]]] = {}


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _glob_matcher(pattern: str) -> Callable[[str], bool]:
    compiled = re.compile(fnmatch.translate(pattern))
    return lambda name: compiled.match(name) is not None


class RuleSet:
    """A team's rules compiled for evaluation: the same verdicts as reading them in order, faster.

    Rules are indexed by exact server and tool names, with glob patterns tried per distinct pattern; the
    position of each rule is kept so that "first matching" still means first in the order given.
    """

    def __init__(self, rules: Iterable[RuleSpec]) -> None:
        self._rules: tuple[RuleSpec, ...] = tuple(rules)
        self._servers: dict[str, _Tools] = {}
        self._server_globs: dict[str, _Tools] = {}
        for position, rule in enumerate(self._rules):
            table = self._server_globs if _is_glob(rule.server) else self._servers
            tools = table.setdefault(rule.server, _Tools())
            bucket = tools.globs if _is_glob(rule.tool) else tools.exact
            bucket.setdefault(rule.tool, []).append((position, rule))
        self._server_glob_list = [(_glob_matcher(p), tools) for p, tools in self._server_globs.items()]
        self._tool_globs: dict[int, list[tuple[Callable[[str], bool], list[tuple[int, RuleSpec]]]]] = {
            id(tools): [(_glob_matcher(p), entries) for p, entries in tools.globs.items()]
            for tools in (*self._servers.values(), *self._server_globs.values())
        }

    def __len__(self) -> int:
        return len(self._rules)

    @property
    def rules(self) -> tuple[RuleSpec, ...]:
        return self._rules

    def candidates(self, *, server: str, tool: str) -> list[tuple[int, RuleSpec]]:
        """The rules whose server and tool globs match, in their original order."""
        groups = self._groups(server, tool)
        if len(groups) == 1:
            return list(groups[0])
        return sorted((entry for group in groups for entry in group), key=lambda entry: entry[0])

    def _groups(self, server: str, tool: str) -> list[list[tuple[int, RuleSpec]]]:
        groups: list[list[tuple[int, RuleSpec]]] = []
        tables = []
        exact = self._servers.get(server)
        if exact is not None:
            tables.append(exact)
        tables.extend(tools for match, tools in self._server_glob_list if match(server))
        for tools in tables:
            entries = tools.exact.get(tool)
            if entries:
                groups.append(entries)
            groups.extend(entries for match, entries in self._tool_globs[id(tools)] if match(tool))
        return groups

    def evaluate(
        self, *, server: str, tool: str, arguments: Mapping[str, Any], mode: str, now: datetime
    ) -> Verdict:
        """Decide a call. See the module docstring for the order."""
        if mode not in MODES:
            raise ValueError(f"unknown team mode {mode!r} (expected one of: {', '.join(MODES)})")
        if now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        # Each group is in rule order, so its first match is its best; the lowest position across groups wins.
        groups = self._groups(server, tool)
        deny = self._first(groups, "deny", arguments, now)
        if deny is not None:
            return Verdict("deny", _cut(f"denied by rule {deny.label}{_why(deny, arguments)}"), deny.id)
        allow = self._first(groups, "allow", arguments, now)
        if allow is not None:
            return Verdict("allow", _cut(f"allowed by rule {allow.label}{_why(allow, arguments)}"), allow.id)
        near = self._near_miss(groups, now)
        hint = f" (rule {near.label} did not apply: {near.explain(arguments)})" if near is not None else ""
        if mode == "whitelist":
            lead = "denied: the team only allows calls that a rule allows, and no rule allowed this one"
            return Verdict("deny", _cut(lead + hint))
        return Verdict("review", _cut("waiting for a reviewer" + hint))

    @staticmethod
    def _first(
        groups: Sequence[Sequence[tuple[int, RuleSpec]]],
        effect: str,
        arguments: Mapping[str, Any],
        now: datetime,
    ) -> RuleSpec | None:
        best: tuple[int, RuleSpec] | None = None
        for group in groups:
            for position, rule in group:
                if best is not None and position >= best[0]:
                    break
                if rule.effect != effect or rule.is_expired(now):
                    continue
                if rule.applies(arguments):
                    best = (position, rule)
                    break
        return best[1] if best else None

    @staticmethod
    def _near_miss(groups: Sequence[Sequence[tuple[int, RuleSpec]]], now: datetime) -> RuleSpec | None:
        """The first allow rule in force for this server and tool: its constraints are what failed."""
        best: tuple[int, RuleSpec] | None = None
        for group in groups:
            for position, rule in group:
                if best is not None and position >= best[0]:
                    break
                if rule.effect == "allow" and not rule.is_expired(now):
                    best = (position, rule)
                    break
        return best[1] if best else None


def compile_rules(rules: Iterable[RuleSpec]) -> RuleSet:
    """Index a team's rules once, to evaluate many calls; keep it while the rules are unchanged."""
    return RuleSet(rules)


def evaluate(
    *,
    rules: Iterable[RuleSpec],
    server: str,
    tool: str,
    arguments: Mapping[str, Any],
    mode: str,
    now: datetime,
) -> Verdict:
    """Decide one call from the team's rules in force and its mode. Deny beats allow."""
    return compile_rules(rules).evaluate(server=server, tool=tool, arguments=arguments, mode=mode, now=now)


# --- Safe regular expressions ----------------------------------------------------------------------------
#
# Python's ``re`` backtracks: ``(a+)+$`` or even ``.*a.*a.*a.*b`` takes exponential or high-polynomial time
# on a crafted input, and the input here comes from a model that may be steered by an attacker. So patterns
# are parsed here into a safe subset and run as an automaton (Thompson NFA, its states built into a DFA
# lazily and cached): time is linear in the input, at most MAX_MATCH_CHARS * MAX_REGEX_STATES steps even
# for a pattern that defeats the cache, and typically one dict lookup per character.
#
# The subset: literals and escapes (\t \n \r \f \v \xhh \uhhhh \Uhhhhhhhh, escaped punctuation), ``.``,
# classes ``[...]`` / ``[^...]`` with ranges, \d \w \s \D \W \S (Unicode, as in ``re``), groups ``(…)``,
# ``(?:…)``, ``(?P<name>…)``, alternation, ``* + ? {m} {m,} {,n} {m,n}`` (lazy ``?`` suffix accepted: it does
# not change whether a string matches), ``^`` (start of text) and ``$`` (end of text, like ``\Z``: not before
# a final newline), and the flags ``(?i)`` / ``(?s)`` at the start or scoped ``(?i:…)``. Refused with a
# message: backreferences, lookaround, conditionals, atomic groups and possessive quantifiers, ``\b`` and
# other anchors, ``(?x)``, ``(?m)``. Constraints use full-match semantics: the whole value must match.

_CHAR, _SPLIT, _MATCH, _BOL, _EOL = 0, 1, 2, 3, 4
_Node = tuple[Any, ...]


class RegexError(PolicyError):
    """A pattern outside the safe subset or not a valid regular expression."""


def _never(ch: str) -> bool:
    return False


def _any_char(dotall: bool) -> Callable[[str], bool]:
    return (lambda ch: True) if dotall else (lambda ch: ch != "\n")


def _fold(pred: Callable[[str], bool]) -> Callable[[str], bool]:
    return lambda ch: pred(ch) or pred(ch.lower()) or pred(ch.upper())


_CATEGORIES: Final[dict[str, Callable[[str], bool]]] = {
    "d": str.isdecimal,
    "D": lambda ch: not ch.isdecimal(),
    "w": lambda ch: ch.isalnum() or ch == "_",
    "W": lambda ch: not (ch.isalnum() or ch == "_"),
    "s": str.isspace,
    "S": lambda ch: not ch.isspace(),
}
_SIMPLE_ESCAPES: Final = {"t": "\t", "n": "\n", "r": "\r", "f": "\f", "v": "\v", "a": "\a"}
_QUANTIFIER = re.compile(r"\{(\d*)(?:(,)(\d*))?\}")


class _RegexParser:
    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0

    def fail(self, message: str, *, at: int | None = None) -> RegexError:
        """The error, placed at ``at`` (default: where the parser stands), counted from 0 as in ``re``."""
        where = self.i if at is None else at
        return RegexError(f"regex {shorten(self.p, 80)!r}: {message} (at position {where})")

    def parse(self) -> _Node:
        icase = dotall = False
        flags = re.match(r"\(\?([a-zA-Z]+)\)", self.p)
        if flags:
            icase, dotall = self._flags(flags.group(1))
            self.i = flags.end()
        node = self._alternation(icase, dotall)
        if self.i < len(self.p):
            raise self.fail("unbalanced parenthesis")
        return node

    def _flags(self, letters: str) -> tuple[bool, bool]:
        unsupported = set(letters) - set("is")
        if unsupported:
            raise self.fail(f"flag {sorted(unsupported)[0]!r} is not supported (only i and s)")
        return "i" in letters, "s" in letters

    def _alternation(self, icase: bool, dotall: bool) -> _Node:
        branches = [self._sequence(icase, dotall)]
        while self.i < len(self.p) and self.p[self.i] == "|":
            self.i += 1
            branches.append(self._sequence(icase, dotall))
        return branches[0] if len(branches) == 1 else ("alt", tuple(branches))

    def _sequence(self, icase: bool, dotall: bool) -> _Node:
        items: list[_Node] = []
        while self.i < len(self.p) and self.p[self.i] not in "|)":
            atom = self._atom(icase, dotall)
            items.append(atom if atom[0] in ("bol", "eol") else self._quantified(atom))
        return ("cat", tuple(items))

    def _quantified(self, atom: _Node) -> _Node:
        bounds = self._quantifier()
        if bounds is None:
            return atom
        if self.i < len(self.p) and self.p[self.i] == "+":
            raise self.fail("possessive quantifiers are not supported")
        if self.i < len(self.p) and self.p[self.i] == "?":
            self.i += 1  # lazy: the same strings match
        if self._quantifier() is not None:
            raise self.fail("multiple repeat")
        return ("rep", atom, *bounds)

    def _quantifier(self) -> tuple[int, int | None] | None:
        if self.i >= len(self.p):
            return None
        c = self.p[self.i]
        if c in "*+?":
            self.i += 1
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        if c == "{":
            m = self._quantifier_at(self.i)
            if m is None:
                return None  # a literal '{', as in re
            low = int(m.group(1) or 0)
            high = None if m.group(2) and not m.group(3) else int(m.group(3) or m.group(1))
            if high is not None and low > high:
                raise self.fail("min repeat greater than max repeat")
            if max(low, high or 0) > MAX_REGEX_STATES:
                raise self.fail("repeat count too large")
            self.i = m.end()
            return low, high
        return None

    def _quantifier_at(self, i: int) -> re.Match[str] | None:
        m = _QUANTIFIER.match(self.p, i)
        return m if m is not None and (m.group(1) or m.group(2)) else None

    def _atom(self, icase: bool, dotall: bool) -> _Node:
        c = self.p[self.i]
        if c in "*+?" or (c == "{" and self._quantifier_at(self.i) is not None):
            raise self.fail("nothing to repeat")
        self.i += 1
        if c in "^$":
            if self._quantifier_at(self.i) is not None or self.p[self.i : self.i + 1] in ("*", "+", "?"):
                raise self.fail("nothing to repeat")
            return ("bol",) if c == "^" else ("eol",)
        if c == "(":
            return self._group(icase, dotall)
        if c == "[":
            return ("lit", self._class(icase))
        if c == ".":
            return ("lit", _any_char(dotall))
        if c == "\\":
            pred = self._escape(in_class=False)
            return ("lit", _fold(pred) if icase else pred)
        return ("lit", self._literal(c, icase))

    @staticmethod
    def _literal(c: str, icase: bool) -> Callable[[str], bool]:
        if icase:
            low, up = c.lower(), c.upper()
            return lambda ch: ch == c or ch.lower() == low or ch.upper() == up
        return c.__eq__

    def _group(self, icase: bool, dotall: bool) -> _Node:
        if self.p.startswith("?", self.i):
            m = re.match(r"\?(?::|P<([A-Za-z_]\w*)>|([a-zA-Z]*)(?:-([a-zA-Z]+))?:)", self.p[self.i :])
            if m is None:
                what = self.p[self.i : self.i + 3]
                raise self.fail(
                    f"'({what}' is not supported: no lookaround, backreferences, conditionals, "
                    "atomic groups, comments or flags after the start"
                )
            if m.group(2) is not None or m.group(3) is not None:
                added = self._flags(m.group(2) or "")
                removed = self._flags(m.group(3) or "")
                icase = (icase or added[0]) and not removed[0]
                dotall = (dotall or added[1]) and not removed[1]
            self.i += m.end()
        inner = self._alternation(icase, dotall)
        if self.i >= len(self.p) or self.p[self.i] != ")":
            raise self.fail("missing ), unterminated subpattern")
        self.i += 1
        return inner

    def _escape(self, *, in_class: bool) -> Callable[[str], bool]:
        if self.i >= len(self.p):
            raise self.fail("bad escape (end of pattern)", at=self.i - 1)
        c = self.p[self.i]
        self.i += 1
        if c in _CATEGORIES:
            return _CATEGORIES[c]
        return self._escaped_char(c, in_class=in_class).__eq__

    def _escaped_char(self, c: str, *, in_class: bool) -> str:
        start = self.i - 2  # the backslash: its errors point there, as re's do
        if c in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[c]
        if c == "b" and in_class:
            return "\b"
        if c in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[c]
            digits = self.p[self.i : self.i + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"bad escape \\{c}", at=start)
            self.i += width
            code = int(digits, 16)
            if code > 0x10FFFF:
                raise self.fail(f"bad escape \\{c}{digits}", at=start)
            return chr(code)
        if c.isdigit():
            raise self.fail("backreferences and octal escapes are not supported", at=start)
        if c in "bBAZzG":
            raise self.fail(f"\\{c} is not supported: use ^ at the start and $ at the end", at=start)
        if c.isascii() and c.isalpha():
            raise self.fail(f"bad escape \\{c}", at=start)
        return c

    def _class(self, icase: bool) -> Callable[[str], bool]:
        negate = self.p.startswith("^", self.i)
        if negate:
            self.i += 1
        chars: set[str] = set()
        ranges: list[tuple[str, str]] = []
        preds: list[Callable[[str], bool]] = []
        first = True
        while True:
            if self.i >= len(self.p):
                raise self.fail("unterminated character set")
            c = self.p[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            low = self._class_item()
            if (
                isinstance(low, str)
                and self.p.startswith("-", self.i)
                and self.i + 1 < len(self.p)
                and self.p[self.i + 1] != "]"
            ):
                self.i += 1
                high = self._class_item()
                if not isinstance(high, str) or high < low:
                    raise self.fail("bad character range")
                ranges.append((low, high))
            elif isinstance(low, str):
                chars.add(low)
            else:
                preds.append(low)

        def member(ch: str) -> bool:
            return ch in chars or any(lo <= ch <= hi for lo, hi in ranges) or any(p(ch) for p in preds)

        test = _fold(member) if icase else member
        return (lambda ch: not test(ch)) if negate else test

    def _class_item(self) -> str | Callable[[str], bool]:
        c = self.p[self.i]
        self.i += 1
        if c != "\\":
            return c
        if self.i >= len(self.p):
            raise self.fail("bad escape (end of pattern)", at=self.i - 1)
        e = self.p[self.i]
        if e in _CATEGORIES:
            self.i += 1
            return _CATEGORIES[e]
        self.i += 1
        return self._escaped_char(e, in_class=True)


class SafeRegex:
    """A regular expression in the safe subset, matched in linear time (see the section comment above).

    ``fullmatch`` reads the whole text against the pattern; ``search`` finds it anywhere (``^`` and ``$``
    anchor it, as JSON Schema's ``pattern`` means). Raises ``RegexError`` (a ``PolicyError``) at
    construction for a pattern outside the subset. Safe to share between threads.
    """

    __slots__ = ("_cache", "_entry", "_final", "_kinds", "_match", "_outs", "_preds", "_starts", "pattern")

    def __init__(self, pattern: str) -> None:
        if len(pattern) > MAX_PATTERN_CHARS:
            raise RegexError(f"regex is longer than {MAX_PATTERN_CHARS} characters")
        self.pattern = pattern
        tree = _RegexParser(pattern).parse()
        self._kinds: list[int] = []
        self._preds: list[Callable[[str], bool]] = []
        self._outs: list[tuple[int, ...]] = []
        self._match = self._add(_MATCH, _never, ())
        self._entry = self._build(tree, self._match)
        # The states before the first character, and before any later one (where '^' cannot pass).
        self._starts = (self._closure((self._entry,), at_start=True), self._closure((self._entry,)))
        self._cache: dict[tuple[bool, frozenset[int]], dict[str, frozenset[int]]] = {}
        self._final: dict[tuple[frozenset[int], bool], bool] = {}

    def _add(self, kind: int, pred: Callable[[str], bool], outs: tuple[int, ...]) -> int:
        if len(self._kinds) >= MAX_REGEX_STATES:
            raise RegexError(
                f"regex {shorten(self.pattern, 80)!r} is too large (over {MAX_REGEX_STATES} states)"
            )
        self._kinds.append(kind)
        self._preds.append(pred)
        self._outs.append(outs)
        return len(self._kinds) - 1

    def _build(self, node: _Node, nxt: int) -> int:
        """Compile ``node`` so that it continues to state ``nxt``; return its entry state."""
        kind = node[0]
        if kind == "lit":
            return self._add(_CHAR, node[1], (nxt,))
        if kind in ("bol", "eol"):
            return self._add(_BOL if kind == "bol" else _EOL, _never, (nxt,))
        if kind == "cat":
            for item in reversed(node[1]):
                nxt = self._build(item, nxt)
            return nxt
        if kind == "alt":
            return self._add(_SPLIT, _never, tuple(self._build(branch, nxt) for branch in node[1]))
        _, body, low, high = node
        tail = nxt
        if high is None:
            loop = self._add(_SPLIT, _never, ())
            self._outs[loop] = (self._build(body, loop), nxt)
            tail = loop
        else:
            for _ in range(high - low):
                tail = self._add(_SPLIT, _never, (self._build(body, tail), tail))
        for _ in range(low):
            tail = self._build(body, tail)
        return tail

    def _closure(
        self, states: Iterable[int], *, at_start: bool = False, at_end: bool = False
    ) -> frozenset[int]:
        """The character-reading states (and MATCH, and unpassed anchors) reachable without reading."""
        seen: set[int] = set()
        out: list[int] = []
        stack = list(states)
        kinds, outs = self._kinds, self._outs
        while stack:
            state = stack.pop()
            if state in seen:
                continue
            seen.add(state)
            kind = kinds[state]
            if kind == _SPLIT or (kind == _BOL and at_start) or (kind == _EOL and at_end):
                stack.extend(outs[state])
            elif kind != _BOL:
                out.append(state)
        return frozenset(out)

    def _step(self, states: frozenset[int], ch: str, restart: bool) -> frozenset[int]:
        kinds, preds, outs = self._kinds, self._preds, self._outs
        result = self._closure([outs[s][0] for s in states if kinds[s] == _CHAR and preds[s](ch)])
        return result | self._starts[1] if restart else result

    def _accepts_at_end(self, states: frozenset[int], at_start: bool) -> bool:
        key = (states, at_start)
        accepted = self._final.get(key)
        if accepted is None:
            if len(self._final) > 4096:
                self._final.clear()
            accepted = self._final[key] = self._match in self._closure(states, at_start=at_start, at_end=True)
        return accepted

    def _run(self, text: str, *, search: bool) -> bool:
        cache, match = self._cache, self._match
        state = self._starts[0]
        if search and match in state:
            return True
        for ch in text:
            key = (search, state)
            row = cache.get(key)
            if row is None:
                if len(cache) > 4096:
                    cache.clear()
                row = cache[key] = {}
            nxt = row.get(ch)
            if nxt is None:
                nxt = row[ch] = self._step(state, ch, search)
            state = nxt
            if not state:
                return False
            if search and match in state:
                return True
        return self._accepts_at_end(state, at_start=not text)

    def fullmatch(self, text: str) -> bool:
        """Does the whole of ``text`` match?"""
        return self._run(text, search=False)

    def search(self, text: str) -> bool:
        """Does the pattern match somewhere in ``text``?"""
        return self._run(text, search=True)

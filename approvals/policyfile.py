"""Policy as code: a team's rules and mode as a YAML or JSON file (schema ``version: 1``).

``export_text`` writes the file; ``parse_policy`` reads one and checks all of it, reporting every problem
with its line; ``import_policy`` makes the team's rules exactly the file's, all or nothing, in one
transaction with one audit event. The schema is documented in docs/policy-as-code.md::

    version: 1
    team: alpha            # informational: a file can be imported into any team
    mode: review           # optional: review | whitelist
    results:               # optional: what bridges do with a result's findings (docs/inspection.md)
      instructions: mask   # pass | mask | block: instructions aimed at the model, hidden text
      secrets: mask        # pass | mask | block
      personal_data: pass  # pass | mask | block
    rules:
      - effect: allow      # allow | deny
        server: files      # glob
        tool: read_file    # glob
        constraints:       # optional, as in docs/policy.md
          - {path: path, op: within, value: /srv/project}
        note: project files  # optional
        results:             # optional, allow rules only: overrides of the team's result policy
          secrets: block     # pass | mask | block; a key left out keeps the team's action
        enabled: true        # optional, default true
        expires_at: "2030-01-01T00:00:00Z"  # optional, ISO 8601 with a timezone
    limits:                # optional: absent leaves the team's rate limits as they are
      - scope: token       # token | team | tool
        server: files      # glob, default *
        tool: "*"          # glob, default *
        window: minute     # minute | hour | day
        max_calls: 10
        note: bursts        # optional
        enabled: true       # optional, default true
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import yaml
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.template.defaultfilters import pluralize

from approvals.models import RateLimit, Rule, Team, new_rules_version
from approvals.services.audit import audit_record
from approvals.services.limits import MAX_LIMITS_PER_TEAM, LimitInvalid, LimitValues, limit_validate
from approvals.services.rules import RuleInvalid, RuleValues, rule_validate

Format = Literal["yaml", "json"]
FORMATS: Final[tuple[Format, ...]] = ("yaml", "json")
SCHEMA_VERSION: Final = 1
MAX_FILE_BYTES: Final = 2 * 1024 * 1024
"""Largest policy file read (about 10,000 rules with a few constraints each)."""
MAX_RULES: Final = 10_000
MAX_PROBLEMS: Final = 50
"""Problems reported at most; the rest are counted."""
TOP_KEYS: Final = ("version", "team", "mode", "results", "rules", "limits")
RESULT_KEYS: Final = {
    "instructions": "result_instructions",
    "secrets": "result_secrets",
    "personal_data": "result_personal_data",
}
"""The ``results`` section's keys, and the fields they set: the team's, or (in a rule) the rule's."""
RESULT_FIELDS: Final = {field: key for key, field in RESULT_KEYS.items()}
RULE_KEYS: Final = ("effect", "server", "tool", "constraints", "note", "results", "enabled", "expires_at")
RULE_FIELDS: Final = (
    "effect",
    "server",
    "tool",
    "constraints",
    "note",
    "enabled",
    "expires_at",
    *RESULT_KEYS.values(),
)
"""A rule's stored values (``RuleValues``): a rule's ``results`` section sets the last three."""
LIMIT_KEYS: Final = ("scope", "server", "tool", "window", "max_calls", "note", "enabled")
MODES: Final = tuple(Team.Mode.values)

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy file, where it is (``line`` from 1, when known) and what."""

    line: int | None
    where: str
    message: str

    def __str__(self) -> str:
        located = f"line {self.line}: " if self.line is not None else ""
        return f"{located}{self.where}: {self.message}" if self.where else f"{located}{self.message}"


class PolicyFileError(ValueError):
    """The file cannot be imported; ``problems`` lists what is wrong, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """A checked policy file: the team mode it sets (None: left as it is), its rules, in order, and its rate
    limits (None: the file has no ``limits`` section, and the team's limits are left as they are)."""

    mode: str | None
    rules: list[RuleValues]
    limits: list[LimitValues] | None = None
    results: dict[str, str] | None = None
    """The ``results`` section (key → pass, mask or block); None leaves the team's result policy as it is."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import changed. Rules equal to one in the file are kept (with their history)."""

    added: int
    removed: int
    kept: int
    mode_before: str
    mode_after: str
    limits_added: int = 0
    limits_removed: int = 0
    limits_kept: int = 0
    results_changed: tuple[str, ...] = ()
    """The ``results`` keys the import changed."""

    @property
    def changed(self) -> bool:
        return bool(
            self.added
            or self.removed
            or self.mode_before != self.mode_after
            or self.limits_added
            or self.limits_removed
            or self.results_changed
        )

    def __str__(self) -> str:
        added = f"{self.added} rule{pluralize(self.added)} added"
        text = f"{added}, {self.removed} removed, {self.kept} unchanged"
        if self.limits_added or self.limits_removed or self.limits_kept:
            limits = f"{self.limits_added} rate limit{pluralize(self.limits_added)} added"
            text += f"; {limits}, {self.limits_removed} removed, {self.limits_kept} unchanged"
        if self.mode_before != self.mode_after:
            text += f"; mode {self.mode_before} → {self.mode_after}"
        if self.results_changed:
            text += f"; result policy changed ({', '.join(self.results_changed)})"
        return text


# --- export --------------------------------------------------------------------------------------------


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def rule_document(rule: Rule) -> dict[str, Any]:
    """One rule as the file holds it (``note`` and ``expires_at`` only when set)."""
    entry: dict[str, Any] = {
        "effect": str(rule.effect),
        "server": rule.server,
        "tool": rule.tool,
        "constraints": list(rule.constraints or []),
    }
    if rule.note:
        entry["note"] = rule.note
    results = {key: str(getattr(rule, field)) for key, field in RESULT_KEYS.items() if getattr(rule, field)}
    if results:
        entry["results"] = results
    entry["enabled"] = rule.enabled
    if rule.expires_at is not None:
        entry["expires_at"] = _time(rule.expires_at)
    return entry


def limit_document(limit: RateLimit) -> dict[str, Any]:
    """One rate limit as the file holds it (``note`` only when set)."""
    entry: dict[str, Any] = {
        "scope": str(limit.scope),
        "server": limit.server,
        "tool": limit.tool,
        "window": str(limit.window),
        "max_calls": limit.max_calls,
    }
    if limit.note:
        entry["note"] = limit.note
    entry["enabled"] = limit.enabled
    return entry


def export_document(team: Team) -> dict[str, Any]:
    """The team's mode and rules, in evaluation order (the order they were created), and its rate limits
    (always written, ``[]`` for none: imported, the file says the team has exactly these)."""
    return {
        "version": SCHEMA_VERSION,
        "team": team.slug,
        "mode": str(team.mode),
        "results": {key: str(getattr(team, field)) for key, field in RESULT_KEYS.items()},
        "rules": [rule_document(rule) for rule in Rule.objects.filter(team=team).order_by("id")],
        "limits": [limit_document(limit) for limit in RateLimit.objects.filter(team=team).order_by("id")],
    }


def export_text(team: Team, *, fmt: Format = "yaml") -> str:
    """The policy file's text. Exporting the same rules twice gives the same text."""
    document = export_document(team)
    if fmt == "json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if fmt != "yaml":
        raise ValueError(f"unknown format {fmt!r}")
    header = (
        f"# Signoff policy file (schema version {SCHEMA_VERSION}), see docs/policy-as-code.md.\n"
        f"# Import with: manage.py import_rules TEAM FILE (or Rules → Import).\n"
    )
    # allow_unicode=False: YAML would read some characters written raw (U+0085 NEL, C1 controls) back as
    # other text; escaped, every string survives the round trip.
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=False, width=100)


# --- reading -------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """Safe YAML that leaves dates as text: ``expires_at`` is read here, with its timezone checked."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _Unreadable(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _index(node: yaml.Node, path: Path, lines: dict[Path, int], seen: set[int]) -> None:
    """Note each value's line; refuse duplicate keys and aliases (which could make a small file huge)."""
    if id(node) in seen:
        raise _Unreadable(node.start_mark.line + 1, "anchors and aliases (&name, *name) are not supported")
    seen.add(id(node))
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        keys: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key == "<<":
                raise _Unreadable(key_node.start_mark.line + 1, "merge keys (<<) are not supported")
            if key is not None and key in keys:
                raise _Unreadable(key_node.start_mark.line + 1, f"the key {key!r} appears twice")
            keys.add(key)
            if key is not None:
                lines[(*path, key)] = key_node.start_mark.line + 1
                _index(value_node, (*path, key), lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for position, item in enumerate(node.value):
            _index(item, (*path, position), lines, seen)


def _load_yaml(text: str) -> tuple[Any, dict[Path, int]]:
    try:
        loader = _Loader(text)  # the reader already refuses characters YAML does not allow
    except yaml.YAMLError as error:
        raise _Unreadable(None, f"not valid YAML: {error}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise _Unreadable(1, "the file is empty")
        lines: dict[Path, int] = {}
        _index(node, (), lines, set())
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        message = " ".join(part for part in (error.context, error.problem) if part) or "invalid YAML"
        raise _Unreadable(mark.line + 1 if mark else None, f"not valid YAML: {message}") from None
    except yaml.YAMLError as error:
        raise _Unreadable(None, f"not valid YAML: {error}") from None
    finally:
        loader.dispose()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _Unreadable(None, f"the key {key!r} appears twice")
        seen[key] = value
    return seen


def _refuse_constant(name: str) -> Any:
    raise _Unreadable(None, f"{name} is not a JSON number")


def _load_json(text: str) -> tuple[Any, dict[Path, int]]:
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise _Unreadable(error.lineno, f"not valid JSON: {error.msg} (column {error.colno})") from None
    except _Unreadable as error:
        try:  # the YAML reading of the same text knows the line of a duplicate key
            _load_yaml(text)
        except _Unreadable as located:
            if located.line is not None and "twice" in located.message:
                raise located from None
        raise error from None
    try:  # JSON is (nearly) YAML: its node marks give the lines of the problems found below
        _, lines = _load_yaml(text)
    except _Unreadable:
        lines = {}
    return data, lines


def guess_format(text: str, filename: str = "") -> Format:
    """``json`` for a ``.json`` file or text starting with ``{``; otherwise ``yaml``."""
    name = filename.lower()
    if name.endswith(".json"):
        return "json"
    if name.endswith((".yaml", ".yml")):
        return "yaml"
    return "json" if text.lstrip().startswith("{") else "yaml"


def _where(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Problems:
    def __init__(self, lines: dict[Path, int]) -> None:
        self.lines = lines
        self.items: list[Problem] = []

    def add(self, path: Path, message: str) -> None:
        line = None
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                break
        self.items.append(Problem(line, _where(path), message))


def _expiry(value: Any) -> datetime | str | None:
    """The time, or a message saying what is wrong with it."""
    if value is None:
        return None
    if not isinstance(value, str):
        return 'must be a date and time as text, e.g. "2030-01-31T09:00:00Z"'
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return f'{value!r} is not an ISO 8601 date and time, e.g. "2030-01-31T09:00:00Z"'
    if moment.utcoffset() is None:
        return f"{value!r} has no timezone: add Z for UTC or an offset such as +02:00"
    return moment


def _check(data: Any, problems: _Problems) -> PolicyFile | None:
    if not isinstance(data, dict):
        problems.add((), "the file must hold a mapping with version, mode and rules")
        return None
    for key in data:
        if key not in TOP_KEYS:
            problems.add((key,), f"unknown key (expected: {', '.join(TOP_KEYS)})")
    version = data.get("version")
    if "version" not in data:
        problems.add((), f"version is missing: write version: {SCHEMA_VERSION}")
    elif isinstance(version, bool) or version != SCHEMA_VERSION:
        problems.add(("version",), f"unsupported version {version!r}: this Signoff reads version 1")
    mode = data.get("mode")
    if mode is not None and mode not in MODES:
        problems.add(("mode",), f"must be one of: {', '.join(MODES)}")
    results = _check_results(data, problems)
    if "team" in data and not isinstance(data["team"], str):
        problems.add(("team",), "must be a team slug (text)")
    rules = data.get("rules")
    if "rules" not in data:
        problems.add((), "rules is missing (write rules: [] for a team without rules)")
        return None
    if not isinstance(rules, list):
        problems.add(("rules",), "must be a list of rules")
        return None
    if len(rules) > MAX_RULES:
        problems.add(("rules",), f"{len(rules)} rules: at most {MAX_RULES} may be imported")
        return None
    checked: list[RuleValues] = []
    for position, entry in enumerate(rules):
        value = _check_rule(entry, ("rules", position), problems)
        if value is not None:
            checked.append(value)
    limits = _check_limits(data, problems)
    if problems.items:
        return None
    return PolicyFile(mode=mode, rules=checked, limits=limits, results=results)


def _check_results(data: dict[str, Any], problems: _Problems) -> dict[str, str] | None:
    if "results" not in data:
        return None
    return _results(data["results"], ("results",), problems)


def _results(results: Any, path: Path, problems: _Problems) -> dict[str, str]:
    """A ``results`` section, the team's or a rule's: its keys with a valid action (the others reported)."""
    if not isinstance(results, dict):
        problems.add(path, f"must be a mapping with {', '.join(RESULT_KEYS)}")
        return {}
    actions = Team.ResultAction.values
    for key, value in results.items():
        if key not in RESULT_KEYS:
            problems.add((*path, key), f"unknown key (expected: {', '.join(RESULT_KEYS)})")
        elif value not in actions:
            problems.add((*path, key), f"must be one of: {', '.join(actions)}")
    return {key: value for key, value in results.items() if key in RESULT_KEYS and value in actions}


def _check_limits(data: dict[str, Any], problems: _Problems) -> list[LimitValues] | None:
    """The file's ``limits`` section, checked by the limits' own validation; None when it has none."""
    if "limits" not in data:
        return None
    limits = data["limits"]
    if not isinstance(limits, list):
        problems.add(("limits",), "must be a list of rate limits (write limits: [] for none)")
        return None
    if len(limits) > MAX_LIMITS_PER_TEAM:
        problems.add(("limits",), f"{len(limits)} rate limits: a team has at most {MAX_LIMITS_PER_TEAM}")
        return None
    checked: list[LimitValues] = []
    for position, entry in enumerate(limits):
        path: Path = ("limits", position)
        if not isinstance(entry, dict):
            problems.add(path, "a rate limit must be a mapping with scope, window and max_calls")
            continue
        ok = True
        for key in entry:
            if key not in LIMIT_KEYS:
                problems.add((*path, key), f"unknown key (expected: {', '.join(LIMIT_KEYS)})")
                ok = False
        for key in ("scope", "window", "max_calls"):
            if key not in entry:
                problems.add(path, f"{key} is missing")
                ok = False
        note = entry.get("note", "")
        try:
            values = limit_validate(
                scope=entry.get("scope"),
                server=entry.get("server", "*"),
                tool=entry.get("tool", "*"),
                window=entry.get("window"),
                max_calls=entry.get("max_calls"),
                note="" if note is None else note,
                enabled=entry.get("enabled", True),
            )
        except LimitInvalid as invalid:
            for field, message in invalid.errors.items():
                if field not in entry and field in ("scope", "window", "max_calls"):
                    continue  # already reported as missing
                problems.add((*path, field), message)
            continue
        if ok:
            checked.append(values)
    return checked


def _check_rule(entry: Any, path: Path, problems: _Problems) -> RuleValues | None:
    if not isinstance(entry, dict):
        problems.add(path, "a rule must be a mapping with effect, server and tool")
        return None
    ok = True
    for key in entry:
        if key not in RULE_KEYS:
            problems.add((*path, key), f"unknown key (expected: {', '.join(RULE_KEYS)})")
            ok = False
    for key in ("effect", "server", "tool"):
        if key not in entry:
            problems.add(path, f"{key} is missing")
            ok = False
    expires = _expiry(entry.get("expires_at"))
    if isinstance(expires, str):
        problems.add((*path, "expires_at"), expires)
        ok = False
    results: dict[str, str] = {}
    if "results" in entry:
        reported = len(problems.items)
        results = _results(entry["results"], (*path, "results"), problems)
        ok = ok and len(problems.items) == reported
    note = entry.get("note", "")
    try:
        values = rule_validate(
            effect=entry.get("effect"),
            server=entry.get("server"),
            tool=entry.get("tool"),
            constraints=entry.get("constraints") or [],
            note="" if note is None else note,
            enabled=entry.get("enabled", True),
            expires_at=None if isinstance(expires, str) else expires,
            **{RESULT_KEYS[key]: action for key, action in results.items()},
        )
    except RuleInvalid as invalid:
        for field, message in invalid.errors.items():
            if field in ("effect", "server", "tool") and field not in entry:
                continue  # already reported as missing
            if field in RESULT_FIELDS:  # a deny rule with results: said of each key it sets
                problems.add((*path, "results", RESULT_FIELDS[field]), message)
                continue
            if field == "constraints" and invalid.constraint is not None:
                index, name = invalid.constraint
                where: Path = (*path, "constraints")
                if index is not None:
                    where = (*where, index) if name is None else (*where, index, name)
                # The engine's message names the entry already ("constraints[1].value: …"): keep its text.
                text = message.split(": ", 1)[1] if message.startswith("constraints") else message
                problems.add(where, text)
            else:
                problems.add((*path, field), message)
        return None
    return values if ok else None


def parse_policy(text: str, *, fmt: Format | None = None, filename: str = "") -> PolicyFile:
    """Read and check a whole policy file; raise ``PolicyFileError`` listing every problem with its line."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise PolicyFileError([Problem(None, "", f"the file is larger than {MAX_FILE_BYTES // 1024} KiB")])
    fmt = fmt or guess_format(text, filename)
    try:
        data, lines = _load_json(text) if fmt == "json" else _load_yaml(text)
    except _Unreadable as error:
        raise PolicyFileError([Problem(error.line, "", error.message)]) from None
    except RecursionError:
        raise PolicyFileError([Problem(None, "", "the file is nested too deeply")]) from None
    problems = _Problems(lines)
    checked = _check(data, problems)
    if checked is None:
        items = sorted(problems.items, key=lambda p: p.line if p.line is not None else 1 << 30)
        if len(items) > MAX_PROBLEMS:
            items = [*items[:MAX_PROBLEMS], Problem(None, "", f"… and {len(items) - MAX_PROBLEMS} more")]
        raise PolicyFileError(items)
    return checked


def decode_upload(data: bytes) -> str:
    """An uploaded file's text (UTF-8, a byte-order mark allowed); ``PolicyFileError`` if it is not."""
    if len(data) > MAX_FILE_BYTES:
        raise PolicyFileError([Problem(None, "", f"the file is larger than {MAX_FILE_BYTES // 1024} KiB")])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise PolicyFileError([Problem(line, "", "the file is not UTF-8 text")]) from None


# --- import --------------------------------------------------------------------------------------------


def _key(values: dict[str, Any]) -> str:
    """Identity of a rule's content, to keep the rules that the file leaves as they are."""
    expires = values["expires_at"]
    return json.dumps(
        [
            values["effect"],
            values["server"],
            values["tool"],
            values["constraints"],
            values["note"],
            values["enabled"],
            _time(expires) if expires is not None else None,
            *(values[field] for field in RESULT_KEYS.values()),
        ],
        sort_keys=True,
    )


def _row_values(rule: Rule) -> dict[str, Any]:
    return {name: getattr(rule, name) for name in RULE_FIELDS}


def _brief(values: dict[str, Any], pk: int | None) -> dict[str, Any]:
    return {"rule": pk, "effect": values["effect"], "server": values["server"], "tool": values["tool"]}


def _group(rules: list[Rule]) -> dict[str, list[Rule]]:
    groups: dict[str, list[Rule]] = {}
    for rule in rules:
        groups.setdefault(_key(_row_values(rule)), []).append(rule)
    return groups


def _limit_key(values: dict[str, Any]) -> str:
    """Identity of a rate limit's content, to keep the limits that the file leaves as they are."""
    return json.dumps([values[name] for name in LIMIT_KEYS], sort_keys=True)


def _limit_brief(limit: RateLimit) -> dict[str, Any]:
    return {
        "limit": limit.pk,
        "scope": limit.scope,
        "server": limit.server,
        "tool": limit.tool,
        "window": limit.window,
        "max_calls": limit.max_calls,
    }


def _import_limits(
    team: Team, limits: list[LimitValues], by: AbstractBaseUser | None
) -> tuple[list[RateLimit], list[RateLimit], int]:
    """Make the team's rate limits exactly these, inside ``import_policy``'s transaction: an equal limit
    is kept (its counters go on), the others are deleted, the rest created. (created, removed, kept)"""
    existing: dict[str, list[RateLimit]] = {}
    for limit in RateLimit.objects.filter(team=team).order_by("id"):
        existing.setdefault(_limit_key({n: getattr(limit, n) for n in LIMIT_KEYS}), []).append(limit)
    to_add: list[LimitValues] = []
    kept = 0
    for values in limits:
        same = existing.get(_limit_key(values.as_fields()))
        if same:
            same.pop(0)
            kept += 1
        else:
            to_add.append(values)
    removed = [limit for group in existing.values() for limit in group]
    if removed:
        RateLimit.objects.filter(pk__in=[limit.pk for limit in removed]).delete()
    created = RateLimit.objects.bulk_create(
        [
            RateLimit(team=team, created_by_id=by.pk if by is not None else None, **values.as_fields())
            for values in to_add
        ]
    )
    return created, removed, kept


def import_policy(
    *,
    team: Team,
    policy_file: PolicyFile,
    by: AbstractBaseUser | None,
    source: str = "",
) -> ImportResult:
    """Make the team's rules exactly the file's (and its mode, if the file sets one, and its rate limits,
    if it has a ``limits`` section), all or nothing.

    A rule equal in every field to one in the file is kept as it is, with its id, creator and the calls it
    decided; the others are deleted, and the file's remaining rules are created in file order (after the
    kept ones: the order only decides which rule a reason names, never the outcome). One ``rules.imported``
    audit event lists what was added and removed.
    """
    with transaction.atomic():
        locked = Team.objects.select_for_update().get(pk=team.pk)  # one import per team at a time
        existing = _group(list(Rule.objects.filter(team=locked).order_by("id")))
        to_add: list[RuleValues] = []
        kept = 0
        for values in policy_file.rules:
            same = existing.get(_key(values.as_fields()))
            if same:
                same.pop(0)
                kept += 1
            else:
                to_add.append(values)
        removed = [rule for group in existing.values() for rule in group]
        if removed:
            Rule.objects.filter(pk__in=[rule.pk for rule in removed]).delete()
        created = Rule.objects.bulk_create(
            [
                Rule(team=locked, created_by_id=by.pk if by is not None else None, **values.as_fields())
                for values in to_add
            ]
        )
        limits_created: list[RateLimit] = []
        limits_removed: list[RateLimit] = []
        limits_kept = 0
        if policy_file.limits is not None:
            limits_created, limits_removed, limits_kept = _import_limits(locked, policy_file.limits, by)
        mode_before = locked.mode
        mode_after = policy_file.mode or mode_before
        fields = ["rules_version"]
        # bulk_create sends no post_save; the same stamp makes every process rebuild its compiled limits.
        locked.rules_version = new_rules_version()
        if mode_after != mode_before:
            locked.mode = mode_after
            fields.append("mode")
        results_changed: list[str] = []
        results_record: dict[str, Any] = {}
        for key, action in (policy_file.results or {}).items():
            field = RESULT_KEYS[key]
            if getattr(locked, field) != action:
                results_record[key] = {"before": getattr(locked, field), "after": action}
                setattr(locked, field, action)
                setattr(team, field, action)
                fields.append(field)
                results_changed.append(key)
        locked.save(update_fields=fields)
        team.mode, team.rules_version = locked.mode, locked.rules_version
        limits_record: dict[str, Any] = {"results": results_record} if results_record else {}
        if policy_file.limits is not None:
            limits_record |= {
                "limits_added": [_limit_brief(limit) for limit in limits_created],
                "limits_removed": [_limit_brief(limit) for limit in limits_removed],
                "limits_kept": limits_kept,
            }
        audit_record(
            kind="rules.imported",
            team=locked,
            actor_id=by.pk if by is not None else None,
            source=source[:200],
            added=[_brief(_row_values(rule), rule.pk) for rule in created],
            removed=[_brief(_row_values(rule), rule.pk) for rule in removed],
            kept=kept,
            mode_before=mode_before,
            mode_after=mode_after,
            **limits_record,
        )
    return ImportResult(
        added=len(created),
        removed=len(removed),
        kept=kept,
        mode_before=mode_before,
        mode_after=mode_after,
        limits_added=len(limits_created),
        limits_removed=len(limits_removed),
        limits_kept=limits_kept,
        results_changed=tuple(results_changed),
    )


def import_text(
    *, team: Team, text: str, by: AbstractBaseUser | None, fmt: Format | None = None, filename: str = ""
) -> ImportResult:
    """Check the whole file, then import it (``PolicyFileError`` and nothing changed when it has problems)."""
    checked = parse_policy(text, fmt=fmt, filename=filename)
    return import_policy(team=team, policy_file=checked, by=by, source=filename)

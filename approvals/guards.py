"""Guards: pure checks of a call's arguments that run before any rule (DESIGN §4).

``inspect_arguments`` returns findings of two severities:

- **block**: the call is refused automatically, with the finding's message as the reason. Arguments that are
  not a JSON object, nested deeper than ``Limits.max_depth``, a string value over ``Limits.max_string_bytes``,
  all arguments over ``Limits.max_total_bytes`` (as compact UTF-8 JSON), and violations of the tool's
  ``inputSchema``. When a size or depth limit is exceeded nothing else is checked: the call is refused anyway.
- **warn**: a risk badge shown to the reviewer next to the argument it concerns: path traversal, SQL injection
  and shell injection hints, and a tool schema that could not be used (invalid, unresolvable ``$ref``, an
  unknown ``$schema``, or a regular expression that cannot be run in bounded time).

The hints are heuristics tuned for few false positives on ordinary text: the broad ones (``;``, ``&&``,
``--``, a leading ``DELETE``) apply only where the argument is a query or a command by its name or its
content; the rest are signatures that ordinary prose does not contain. They flag, they never refuse.

The schema is validated with ``jsonschema`` (the draft named by ``$schema``; 2020-12 when there is none, as
MCP says), with no remote ``$ref`` retrieval (an upstream must not make Signoff fetch URLs), and with the
schema's regular expressions (``pattern``, ``patternProperties``) run by ``approvals.policy.SafeRegex``
rather than ``re``, so that a hostile schema and a crafted argument cannot stall the server. Findings are
ordered: blocks first, then warnings, each in the order of the arguments.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import jsonschema
import referencing
from jsonschema.exceptions import ValidationError
from jsonschema.validators import validator_for

from approvals import pathnorm
from approvals.policy import PolicyError, SafeRegex, json_kind, shorten

Severity = Literal["block", "warn"]
Kind = Literal["arguments", "size", "depth", "schema", "traversal", "sql", "shell"]

MAX_SCHEMA_FINDINGS: Final = 20


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a guard noticed about a call's arguments.

    ``pointer`` is the JSON pointer of the argument concerned (``/path``, ``/options/0``), ``""`` for the
    arguments as a whole.
    """

    kind: Kind
    severity: Severity
    pointer: str
    message: str


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits on a call's arguments. Bytes are UTF-8; the total is the compact JSON encoding."""

    max_string_bytes: int = 64 * 1024
    max_total_bytes: int = 256 * 1024
    max_depth: int = 32


def inspect_arguments(
    *, arguments: Any, input_schema: Mapping[str, Any] | None, limits: Limits = Limits()
) -> list[Finding]:
    """Check a call's arguments before any rule: what blocks it and what a reviewer should be warned of."""
    if not isinstance(arguments, Mapping):
        return [
            Finding(
                "arguments", "block", "", f"the arguments must be a JSON object, not {json_kind(arguments)}"
            )
        ]
    strings, blocks = _walk(arguments, limits)
    if blocks:
        return blocks
    try:
        encoded = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return [
            Finding(
                "arguments", "block", "", "the arguments contain NaN or Infinity, which JSON does not allow"
            )
        ]
    except TypeError as error:
        return [Finding("arguments", "block", "", f"the arguments are not JSON ({error})")]
    total = len(encoded.encode("utf-8", errors="surrogatepass"))
    if total > limits.max_total_bytes:
        return [
            Finding(
                "size",
                "block",
                "",
                f"the arguments are {_bytes(total)} in all, "
                f"over the limit of {_limit(limits.max_total_bytes)}",
            )
        ]
    findings = _schema_findings(arguments, input_schema)
    for pointer, key, text in strings:
        findings.extend(_hints(pointer, key, text))
    findings.sort(key=lambda f: f.severity != "block")  # stable: blocks first, each group in order
    return findings


# --- Shape and size --------------------------------------------------------------------------------------


def _walk(arguments: Mapping[str, Any], limits: Limits) -> tuple[list[tuple[str, str, str]], list[Finding]]:
    """Every string value as (pointer, nearest object key, text), and the size and depth blocks."""
    strings: list[tuple[str, str, str]] = []
    blocks: list[Finding] = []
    stack: list[tuple[str, str, Any, int]] = [("", "", arguments, 0)]
    while stack:
        pointer, key, value, depth = stack.pop()
        if isinstance(value, str):
            size = len(value.encode("utf-8", errors="surrogatepass"))
            if size > limits.max_string_bytes:
                blocks.append(
                    Finding(
                        "size",
                        "block",
                        pointer,
                        f"{_where(pointer)} is {_bytes(size)}, over the limit of "
                        f"{_limit(limits.max_string_bytes)} per value",
                    )
                )
            else:
                strings.append((pointer, key, value))
            continue
        if not isinstance(value, Mapping | list | tuple):
            continue
        if depth >= limits.max_depth:
            blocks.append(
                Finding(
                    "depth",
                    "block",
                    pointer,
                    f"{_where(pointer)} nests deeper than {limits.max_depth} levels",
                )
            )
            continue
        if isinstance(value, Mapping):
            children = [(f"{pointer}/{_escape(str(k))}", str(k), v) for k, v in value.items()]
        else:
            children = [(f"{pointer}/{i}", key, v) for i, v in enumerate(value)]
        stack.extend((p, k, v, depth + 1) for p, k, v in reversed(children))
    return strings, blocks


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _where(pointer: str) -> str:
    if not pointer:
        return "the arguments"
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]
    name = tokens[0] + "".join(f"[{t}]" if t.isdigit() else f".{t}" for t in tokens[1:])
    return f"argument `{name}`"


def _bytes(size: int) -> str:
    """Exact: a value one byte over a 64 KiB limit must not read "64 KiB, over the limit of 64 KiB"."""
    return f"{size:,} bytes"


def _limit(size: int) -> str:
    whole_kib = size >= 1024 and size % 1024 == 0
    return f"{size:,} bytes ({size // 1024} KiB)" if whole_kib else _bytes(size)


# --- Schema ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _safe_regex(pattern: str) -> SafeRegex | None:
    try:
        return SafeRegex(pattern)
    except PolicyError:
        return None


def _kw_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "string"):
        return
    regex = _safe_regex(pattern)
    if regex is not None and not regex.search(instance):
        yield ValidationError(f"{shorten(repr(instance), 60)} does not match {pattern!r}")


def _kw_pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        regex = _safe_regex(pattern)
        for key, value in instance.items():
            if regex is not None and regex.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    regexes = [_safe_regex(p) for p in schema.get("patternProperties", {})]
    return [
        key
        for key in instance
        if key not in properties and not any(r is not None and r.search(key) for r in regexes)
    ]


def _kw_additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = _additional(instance, schema)
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif additional is False and extras:
        names = ", ".join(repr(e) for e in sorted(extras))
        yield ValidationError(f"Additional properties are not allowed ({names} unexpected)")


@functools.lru_cache(maxsize=16)
def _safe_validator(base: type[Any]) -> type[Any]:
    overrides = {
        "pattern": _kw_pattern,
        "patternProperties": _kw_pattern_properties,
        "additionalProperties": _kw_additional_properties,
    }
    return jsonschema.validators.extend(base, {k: v for k, v in overrides.items() if k in base.VALIDATORS})


def _regex_problems(schema: Any) -> tuple[list[str], bool, bool]:
    """The schema's patterns outside the safe subset, and whether it has patternProperties / unevaluated."""
    unsafe: list[str] = []
    pattern_properties = unevaluated = False
    stack = [schema]
    seen = 0
    while stack and seen < 100_000:
        node = stack.pop()
        seen += 1
        if isinstance(node, Mapping):
            if isinstance(node.get("pattern"), str) and _safe_regex(node["pattern"]) is None:
                unsafe.append(node["pattern"])
            if isinstance(node.get("patternProperties"), Mapping):
                pattern_properties = True
                unsafe.extend(p for p in node["patternProperties"] if _safe_regex(str(p)) is None)
            unevaluated = unevaluated or "unevaluatedProperties" in node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return unsafe, pattern_properties, unevaluated


def _schema_findings(arguments: Mapping[str, Any], schema: Any) -> list[Finding]:
    if schema is None:
        return []
    if not isinstance(schema, Mapping):
        return [_schema_warning(f"is {json_kind(schema)}, not a JSON Schema object")]
    try:
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return [_schema_warning("is not JSON")]
    validator, notes = _prepared_schema(key)
    findings = list(notes)
    if validator is None:
        return findings
    try:
        errors = list(validator.iter_errors(arguments))
    except Exception as error:  # an upstream's schema must never crash the gate
        return [
            *findings,
            _schema_warning(f"could not be applied ({type(error).__name__}: {shorten(str(error), 120)})"),
        ]
    blocks: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for failure in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        for pointer, message in _describe(failure):
            if (pointer, message) not in seen:
                seen.add((pointer, message))
                blocks.append(Finding("schema", "block", pointer, message))
    if len(blocks) > MAX_SCHEMA_FINDINGS:
        more = len(blocks) - MAX_SCHEMA_FINDINGS
        blocks = [
            *blocks[:MAX_SCHEMA_FINDINGS],
            Finding("schema", "block", "", f"and {more} more schema errors"),
        ]
    return [*blocks, *findings]


@functools.lru_cache(maxsize=256)
def _prepared_schema(key: str) -> tuple[Any, tuple[Finding, ...]]:
    """A tool's inputSchema (as canonical JSON) checked and compiled once: the validator, or None when the
    arguments cannot be checked against it, and the reviewer's warnings about the schema itself. A
    bridge sends the same few schemas with every call: checking them each time cost more than the call."""
    schema = json.loads(key)
    findings: list[Finding] = []
    cls: Any = validator_for(schema, default=jsonschema.Draft202012Validator)
    if "$schema" in schema and validator_for(schema, default=None) is None:
        findings.append(
            Finding(
                "schema",
                "warn",
                "",
                f"the tool's inputSchema names an unknown $schema {shorten(repr(schema['$schema']), 80)}; "
                "it was checked as JSON Schema 2020-12",
            )
        )
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as error:
        return None, (
            *findings,
            _schema_warning(f"is not a valid JSON Schema ({shorten(error.message, 120)})"),
        )
    unsafe, pattern_properties, unevaluated = _regex_problems(schema)
    if pattern_properties and (unevaluated or unsafe):
        return None, (
            *findings,
            _schema_warning("uses patternProperties that cannot be checked in bounded time here"),
        )
    if unsafe:
        findings.append(
            _schema_warning(
                "has regular expressions that cannot be run in bounded time "
                f"({shorten(repr(unsafe[0]), 80)}); "
                "values were not checked against them",
                checked=True,
            )
        )
    return _safe_validator(cls)(schema, registry=referencing.Registry()), tuple(findings)


def _schema_warning(what: str, *, checked: bool = False) -> Finding:
    tail = "" if checked else "; the arguments were not checked against it"
    return Finding("schema", "warn", "", f"the tool's inputSchema {what}{tail}")


def _types(expected: Any) -> str:
    names = [expected] if isinstance(expected, str) else list(expected)
    article = {"array": "an array", "object": "an object", "integer": "an integer", "null": "null"}
    return " or ".join(article.get(str(n), f"a {n}") for n in names)


def _describe(error: ValidationError) -> Iterable[tuple[str, str]]:
    """(pointer, message) for a validation error, naming the argument and saying what was expected."""
    path = [str(p) for p in error.absolute_path]
    pointer = "".join(f"/{_escape(p)}" for p in path)
    where = _where(pointer)
    keyword, expected, instance = error.validator, error.validator_value, error.instance
    if keyword == "required" and isinstance(instance, Mapping):
        for name in expected:
            if name not in instance:
                child = f"{pointer}/{_escape(str(name))}"
                yield child, f"{_where(child)} is required but missing"
        return
    if keyword == "additionalProperties" and isinstance(instance, Mapping):
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        for name in _additional(instance, schema):
            child = f"{pointer}/{_escape(name)}"
            yield child, f"{_where(child)} is not an argument this tool accepts"
        return
    if keyword == "type":
        yield pointer, f"{where} must be {_types(expected)}, not {json_kind(instance)}"
    elif keyword == "enum":
        options = shorten(json.dumps(expected, ensure_ascii=False), 160)
        yield pointer, f"{where} must be one of {options}"
    elif keyword == "const":
        yield pointer, f"{where} must be {shorten(json.dumps(expected, ensure_ascii=False), 160)}"
    elif keyword == "pattern":
        yield pointer, f"{where} does not match the pattern {shorten(repr(expected), 160)}"
    elif keyword in ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"):
        unit = {"Length": "characters", "Items": "items", "Properties": "properties"}[keyword[3:]]
        bound = "at least" if keyword.startswith("min") else "at most"
        yield pointer, f"{where} must have {bound} {expected} {unit}"
    elif keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        relation = {
            "minimum": "≥",
            "maximum": "≤",
            "exclusiveMinimum": ">",
            "exclusiveMaximum": "<",
        }[keyword]
        yield pointer, f"{where} must be {relation} {expected}"
    else:
        yield pointer, f"{where}: {shorten(error.message, 200)}"


# --- Risk hints ------------------------------------------------------------------------------------------

_SECRETS = (
    r"(?:ssh|aws|gnupg|kube|docker|azure|config/gcloud|netrc|git-credentials|pgpass|npmrc|pypirc"
    r"|bash_history|zsh_history)"
)
_BOUNDARY = r"(?:^|(?<=[\s'\"=(,:<>]))"
_SENSITIVE_POSIX = re.compile(
    _BOUNDARY + r"(?:file://)?(?P<path>"
    r"/etc(?=/|$|[\s'\"])"
    r"|/root(?=/|$|[\s'\"])"
    r"|/(?:proc|sys|boot)/"
    r"|/dev/(?!(?:null|zero|u?random|stdin|stdout|stderr|tty|fd/\d{1,3})\b)"
    r"|/(?:var/)?run/secrets(?=/|$)"
    r"|/var/lib/docker(?=/|$)"
    r"|(?:~|\$HOME|\$\{HOME\}|/home/[^/\s]{1,64}|/Users/[^/\s]{1,64}|/root)/\."
    + _SECRETS
    + r"(?=/|$|[\s'\"])"
    r")"
)
_SENSITIVE_WINDOWS = re.compile(
    _BOUNDARY + r"(?P<path>[a-z]:/(?:windows/system32|windows/repair|users/[^/\s]{1,64}/\.(?:ssh|aws)"
    r"|users/[^/\s]{1,64}/appdata/roaming/microsoft/credentials))(?=/|$|[\s'\"])",
    re.IGNORECASE,
)
_SECRET_FILES = re.compile(
    r"(?:^|/)(?P<path>id_(?:rsa|dsa|ecdsa|ed25519)(?:\.pub)?|\.env(?:\.[\w-]{1,20})?)$"
)
_DOTDOT = re.compile(r"(?:^|/)\.\.(?:/|$)")
_OVERLONG = re.compile(r"%(?:c0|c1|e0%[89][0-9a-f]|f0%8[0-9a-f])", re.IGNORECASE)


def _traversal_hints(text: str) -> list[str]:
    hints: list[str] = []
    if "\x00" in text:
        hints.append("a NUL byte")
    decoded = text
    if "%" in text:
        try:
            decoded = pathnorm.percent_decode(text)
        except pathnorm.PathProblem as problem:
            if "NUL" in str(problem):
                hints.append("a percent-encoded NUL byte")
            elif _OVERLONG.search(text):
                hints.append("an overlong UTF-8 encoding (hides '.' or '/')")
            decoded = text.replace("\x00", "")
    decoded = unicodedata.normalize("NFKC", decoded).replace("\x00", "")
    slashed = decoded.replace("\\", "/")
    if _DOTDOT.search(slashed):
        plain = _DOTDOT.search(text.replace("\\", "/")) is not None
        hints.append("a '..' path component" + ("" if plain else " (encoded)"))
    for regex in (_SENSITIVE_POSIX, _SENSITIVE_WINDOWS):
        for match in regex.finditer(slashed):
            hints.append(f"a sensitive location {match.group('path')}")
            break
    secret = _SECRET_FILES.search(slashed.strip())
    if secret:
        hints.append(f"a secrets file {secret.group('path')}")
    return hints


_SQL_VERBS = (
    r"(?:select|insert|update|delete|drop|create|alter|truncate|grant|revoke|exec|execute|declare|merge"
    r"|replace|call|copy|attach|pragma|shutdown|load_file|into\s++outfile)"
)
_SQL_WORDS = frozenset({"sql", "query", "queries", "statement", "statements", "stmt", "ddl", "dml"})
_SQL_START = re.compile(
    r"\s*+(?:select|insert|update|delete|with|drop|create|alter|truncate|grant|revoke|replace|merge|exec|execute"
    r"|call|pragma|attach)\b",
    re.IGNORECASE,
)
_SQL_LITERAL = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_SQL_STACKED = re.compile(r";\s*+" + _SQL_VERBS + r"\b", re.IGNORECASE)
_SQL_QUOTE_STACKED = re.compile(r"['\"]\s*+\)?\s*+;\s*+" + _SQL_VERBS + r"\b", re.IGNORECASE)
_SQL_TAUTOLOGY = re.compile(
    r"\b(?:or|and)\s++(?:(['\"])(\w{0,32})\1\s*+=\s*+\1\2\1?(?!\w)|(\w{1,32})\s*+=\s*+\3\b|true\b)",
    re.IGNORECASE,
)
_SQL_QUOTE_TAUTOLOGY = re.compile(r"['\"]\s*+\)?\s*+(?:or|\|\|)\s++\S", re.IGNORECASE)
_SQL_COMMENT = re.compile(r"--(?:\s|$)|/\*|#\s*+$")
_SQL_QUOTE_COMMENT = re.compile(r"\w['\"]\)?(?:--|#|/\*)|\w['\"]\)?\s++(?:--|#)\s*+$")
_SQL_UNION = re.compile(r"\bunion\s++(?:all\s++|distinct\s++)?select\b", re.IGNORECASE)
_SQL_OBJECTS = (
    r"(?:table|database|schema|view|index|user|role|function|procedure|trigger|sequence|type|extension)"
)
_SQL_DANGEROUS = re.compile(
    r"(?:^|;)\s*+(?:(?P<drop>drop)\s++(?:materialized\s++)?" + _SQL_OBJECTS + r"\b"
    r"|(?P<alter>alter)\s++(?:" + _SQL_OBJECTS[3:-1] + r"|system|default)\b"
    r"|(?P<truncate>truncate)\s++(?:table\s++)?[\w.\"`]{1,128}\s*+(?:;|$)"
    r"|(?P<delete>delete)\s++from\b"
    r"|(?P<grant>grant|revoke)\s++[\w\s,]{1,200}?\s(?:on|to|from)\b)"
    r"|\b(?P<ddl>drop|truncate)\s++table\b",
    re.IGNORECASE,
)


def _words(key: str) -> set[str]:
    """The words of an argument name: ``sqlQuery`` → {sql, query}, ``cmd_line`` → {cmd, line}."""
    return {w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", key)}


def _sql_hints(key: str, text: str) -> list[str]:
    hints: list[str] = []
    in_query = bool(_SQL_WORDS & _words(key)) or bool(_SQL_START.match(text))
    if _SQL_UNION.search(text):
        hints.append("UNION SELECT")
    if in_query:
        bare = _SQL_LITERAL.sub("''", text)
        if _SQL_STACKED.search(bare):
            hints.append("stacked queries (; followed by another statement)")
        if _SQL_TAUTOLOGY.search(bare):
            hints.append("an always-true condition (OR 1=1)")
        if _SQL_COMMENT.search(bare):
            hints.append("a comment (-- or /*) that can cut off the rest of a query")
        dangerous = _SQL_DANGEROUS.search(bare)
        if dangerous:
            verb = next(v for v in dangerous.groupdict().values() if v).upper()
            hints.append(f"{'an' if verb[0] in 'AEIOU' else 'a'} {verb} statement")
    else:
        if _SQL_QUOTE_STACKED.search(text):
            hints.append("a quote followed by a stacked statement ('; DROP …)")
        if _SQL_QUOTE_TAUTOLOGY.search(text) and _SQL_TAUTOLOGY.search(text):
            hints.append("a quote followed by an always-true condition (' OR '1'='1)")
        if _SQL_QUOTE_COMMENT.search(text):
            hints.append("a quote followed by a comment (admin'--)")
    return hints


_SHELL_WORDS = frozenset(
    {
        "command",
        "commands",
        "cmd",
        "cmds",
        "cmdline",
        "commandline",
        "shell",
        "script",
        "scripts",
        "bash",
        "sh",
    }
    | {"zsh", "exec", "run", "pipeline", "oneliner"}
)
_SHELL_START = re.compile(r"\s*+(?:sudo\s++)?(?:/bin/|/usr/bin/)?(?:ba|z|da|k)?sh\s++-c\b")
_INTERPRETER = r"(?:sudo\s++)?(?:/usr/bin/|/bin/)?(?:(?:ba|z|da|k|fi)?sh|python[0-9.]*|perl|ruby|node|php)\b"
_SHELL_PIPE = re.compile(r"\|\s*+" + _INTERPRETER)
_SHELL_FETCH = re.compile(r"\b(?:curl|wget)\b")
_SHELL_SUBST = re.compile(r"\$\([^()\n]{1,500}\)")
_SHELL_RM = re.compile(
    r"\brm\s++(?:-[a-zA-Z]*(?:r[a-zA-Z]*f|f[a-zA-Z]*r)[a-zA-Z]*|-r\s++-f|-f\s++-r|--recursive\s++--force"
    r"|--force\s++--recursive|-[a-zA-Z]*[rR][a-zA-Z]*\s++/(?:\s|$|\*))|--no-preserve-root",
    re.IGNORECASE,
)
_SHELL_CHAIN_DANGER = re.compile(
    r"(?:;|&&|\|\|)\s*+(?:sudo\s++)?(?:rm|curl|wget|nc|ncat|bash|sh|chmod|chown|mkfifo|dd|mkfs\S*|shutdown|reboot"
    r"|kill|killall|python[0-9.]*|perl|base64)\b"
)
_SHELL_REDIRECT_SENSITIVE = re.compile(r">{1,2}\s*+(?:/etc/|/dev/sd|/dev/nvme|~/\.|\$HOME/\.|/root/)")
_SHELL_CHAIN = re.compile(r";\s*+\S|&&|\|\|")
_SHELL_BACKTICK = re.compile(r"`[^`\n]{1,500}`")
_SHELL_REDIRECT = re.compile(r"(?<![\d&])>{1,2}\s*+(?!/dev/null\b|&\d)\S|(?<![<])<(?![<(=])\s*+[\w./~$]")


def _command_before(text: str, end: int) -> str:
    """The pipeline stage ending at ``end``: back to the previous '|' or newline, at most 500 characters."""
    start = max(text.rfind("|", 0, end), text.rfind("\n", 0, end), end - 500)
    return text[start + 1 : end]


def _shell_hints(key: str, text: str) -> list[str]:
    hints: list[str] = []
    in_command = bool(_SHELL_WORDS & _words(key)) or bool(_SHELL_START.match(text))
    pipes = list(itertools.islice(_SHELL_PIPE.finditer(text), 50))
    if any(_SHELL_FETCH.search(_command_before(text, pipe.start())) for pipe in pipes):
        hints.append("a download piped into an interpreter (curl … | sh)")
    elif pipes:
        hints.append("a pipe into a shell or interpreter (| sh)")
    if _SHELL_SUBST.search(text):
        hints.append("command substitution $( )")
    if _SHELL_RM.search(text):
        hints.append("a recursive forced delete (rm -rf)")
    if _SHELL_CHAIN_DANGER.search(text):
        hints.append("a chained dangerous command (; rm, && curl …)")
    if _SHELL_REDIRECT_SENSITIVE.search(text):
        hints.append("a redirection into a sensitive file")
    if in_command:
        if _SHELL_CHAIN.search(text) and not any(h.startswith("a chained") for h in hints):
            hints.append("command chaining (;, && or ||)")
        if _SHELL_BACKTICK.search(text):
            hints.append("backtick command substitution")
        if _SHELL_REDIRECT.search(text) and not any(h.startswith("a redirection") for h in hints):
            hints.append("a redirection (> or <)")
    return hints


def _hints(pointer: str, key: str, text: str) -> list[Finding]:
    checks: list[tuple[Kind, list[str], str]] = [
        ("traversal", _traversal_hints(text), "path traversal"),
        ("sql", _sql_hints(key, text), "SQL injection"),
        ("shell", _shell_hints(key, text), "shell injection"),
    ]
    where = _where(pointer)
    return [
        Finding(kind, "warn", pointer, f"{what} hints in {where}: {', '.join(hints)}")
        for kind, hints, what in checks
        if hints
    ]

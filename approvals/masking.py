"""Secret masking: hide tokens, API keys and passwords in text and JSON on their way out.

Tool calls carry whatever an agent put in them, and results whatever a tool answered: bridge tokens,
cloud keys, a database URL with its password. Signoff stores them as they came (the audit chain hashes
them; changing a stored row would break it) and masks them wherever they are shown or leave the server:
the History, Audit and call pages, the exports, and the log (``SecretMaskingFilter``).

A masked secret keeps a short prefix that is not secret and says what it was, then ``…[masked]``::

    sgo_1234abcd_Zt6q…    ->  sgo_1234abcd…[masked]     (Signoff's lookup prefix, shown on the Tokens page)
    ghp_16C7e42F292c69…   ->  ghp_…[masked]
    Bearer eyJhbGciOi…    ->  Bearer …[masked]
    postgres://app:pw@db  ->  postgres://app:[masked]@db
    {"password": "pw"}    ->  {"password": "[masked]"}

Recognised: Signoff bridge tokens (``sgo_``), AWS access key ids (``AKIA…``), GitHub (``ghp_``,
``gho_``…, ``github_pat_``), GitLab (``glpat-``), Slack tokens (``xoxb-``…) and webhook URLs, OpenAI and
Anthropic keys (``sk-…``), Stripe secret keys, Google API keys (``AIza…``) and OAuth tokens (``ya29.``),
Hugging Face and npm tokens, JWTs, PEM private key blocks, ``Bearer``/``Basic``/``Token`` credentials,
passwords in URLs (``user:pass@``), and ``name=value`` / ``name: value`` where the name says secret
(``password``, ``secret``, ``token``, ``api_key``, ``authorization``…). In JSON, every value under such a
key is masked, whatever it looks like.

Masking is best effort: a secret in no known format under an innocent name (``{"note": "hunter2"}``)
is not recognised. It errs towards leaving ordinary text alone; ``tests/unit/test_masking.py`` holds the
corpus of what must be masked and of what must stay untouched. Masking is idempotent.

This module is pure Python (no Django), so that settings can install its logging filter. The token formats
are ``mcpbridge.inspection.SECRET_FORMATS``, shared with the bridge's result inspection
(``docs/inspection.md``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from mcpbridge.inspection import SECRET_FORMATS
from mcpbridge.inspection import looks_secret as _looks_secret

__all__ = [
    "MASK",
    "SecretMaskingFilter",
    "is_sensitive_key",
    "mask_json",
    "mask_text",
    "masked",
]

MASK = "[masked]"
"""What replaces a secret."""
_ELLIPSIS = "…"


def masked(keep: str = "") -> str:
    """The replacement for a secret: its non-secret prefix ``keep``, if any, then ``…[masked]``."""
    return f"{keep}{_ELLIPSIS}{MASK}" if keep else MASK


# --- names that say "secret" ------------------------------------------------------------------------
# Matched against the *last word* of a name split at separators and camelCase (``db_password``,
# ``githubToken``, ``X-Auth-Token``), so that ``max_tokens``, ``token_count`` or ``bypass`` stay readable.
_SECRET_LAST_WORDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "secret",
        "secrets",
        "token",
        "authorization",
        "auth",
        "credential",
        "credentials",
        "cookie",
        "apikey",
    }
)
# The last two words together: ``api_key``, ``private-key``, ``sessionId``…
_SECRET_LAST_PAIRS = frozenset(
    {
        "apikey",
        "accesskey",
        "privatekey",
        "secretkey",
        "signingkey",
        "encryptionkey",
        "masterkey",
        "sshkey",
        "sessionid",
        "sessionkey",
    }
)
# Names written as one lowercase word (``apikey``, ``accesstoken``, ``clientsecret``): their ending.
_SECRET_ENDINGS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "accesskey",
    "privatekey",
    "secretkey",
    "authorization",
    "credentials",
    "sessionid",
)
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def is_sensitive_key(name: str) -> bool:
    """Whether a JSON key or variable name says its value is a secret (``password``, ``apiKey``,
    ``AWS_SECRET_ACCESS_KEY``, ``Authorization``), as opposed to ``max_tokens`` or ``token_type``."""
    if len(name) > 100:
        return False
    if name.lower() == "pass":
        return True
    words = [word.lower() for word in _WORDS.findall(name)]
    if not words:
        return False
    if words[-1] in _SECRET_LAST_WORDS or "".join(words[-2:]) in _SECRET_LAST_PAIRS:
        return True
    return len(words) == 1 and words[0].endswith(_SECRET_ENDINGS)


# --- secrets in text ---------------------------------------------------------------------------------
_Replacer = Callable[[re.Match[str]], str]


def _keep_prefix(match: re.Match[str]) -> str:
    return masked(match.group("keep"))


def _credential(match: re.Match[str]) -> str:
    """``Bearer <credential>``: only when the credential looks like one, so that prose such as "the
    bearer instrument" stays as it is."""
    secret = match.group("secret")
    if MASK in secret or not (_looks_secret(secret) and len(secret) >= 8):
        return match.group(0)
    return masked(match.group("keep"))


def _url_password(match: re.Match[str]) -> str:
    return f"{match.group('keep')}{MASK}@"


_AUTH_SCHEMES = frozenset({"bearer", "basic", "token", "digest", "negotiate"})


_LINE_END = re.compile(r"[ \t]*(?:\r?\n|\Z)")
_NOT_SECRETS = frozenset({"null", "none", "true", "false", "undefined"} | _AUTH_SCHEMES)
# A name and what separates it from its value: ``name=``, ``name: ``, ``"name": ``, ``--name ``.
_NAME = re.compile(
    r"(?<![A-Za-z0-9_.\-])(?P<key>(?:--?)?[\"']?[A-Za-z_][A-Za-z0-9_.\-]{0,63}[\"']?)"
    r"(?P<sep>[ \t]*[:=](?![:=])[ \t]*|(?<=[A-Za-z0-9_])[ \t]+(?=\S))"
)
# Bounded, so that a pathological line costs linear time, not quadratic.
_VALUE = re.compile(
    r"\"(?:[^\"\\\n]|\\.){0,4096}\"|'(?:[^'\\\n]|\\.){0,4096}'|[^\s\"'`,;&<>()\[\]{}]{1,4096}(?:\[masked\])?"
)


def _names_a_secret(key: str, separator: str) -> bool:
    """``name=``, ``name:`` or ``--name `` with a name that says secret. A name followed by mere
    whitespace counts only as a command-line flag (``--password x``; ``the token x`` is prose)."""
    if not (":" in separator or "=" in separator or key.startswith("-")):
        return False
    return is_sensitive_key(key.strip("\"'-"))


def _masked_value(value: str, separator: str, *, at_line_end: bool) -> str | None:
    """The masked form of a secret-named assignment's value, or None to leave it. A value after a colon
    in the middle of a sentence ("your password: it must…") is left alone unless it looks like a
    credential; at the end of a line (YAML, HTTP headers) it is masked."""
    if MASK in value:
        return None
    quoted = value[:1] in {'"', "'"}
    inner = value[1:-1] if quoted else value
    if not inner or inner.lower() in _NOT_SECRETS:  # "Authorization: Bearer …" is the scheme rule's job
        return None
    if not quoted and "=" not in separator and not (_looks_secret(inner) or at_line_end):
        return None
    return f"{value[0]}{MASK}{value[0]}" if quoted else MASK


def _mask_assignments(text: str) -> str:
    """Mask the values of secret-named assignments: ``name=value``, ``name: value``, ``"name": "value"``,
    ``--name value``. A scan rather than one ``re.sub``: the value of an innocent name must not swallow
    the next name (``note: password=x``)."""
    parts: list[str] = []
    done = 0
    for name in _NAME.finditer(text):
        key, separator = name.group("key"), name.group("sep")
        if name.start() < done or not _names_a_secret(key, separator):
            continue
        value = _VALUE.match(text, name.end())
        if value is None:
            continue
        at_line_end = _LINE_END.match(text, value.end()) is not None
        shown = _masked_value(value.group(), separator, at_line_end=at_line_end)
        if shown is not None:
            parts += [text[done : name.end()], shown]
            done = value.end()
    return "".join([*parts, text[done:]])


# The formats themselves are ``mcpbridge.inspection.SECRET_FORMATS``: one catalogue for what the bridge flags
# in results and what Signoff masks on its pages (the bridge cannot import Django, so it lives there). Order
# matters: whole blocks and URLs first, then the specific formats (which keep their prefix), then the generic
# ``Bearer …`` rule; ``name=value`` comes last (``_mask_assignments``) and skips what is already masked.
def _replacer(detector: str) -> _Replacer:
    if detector == "password_in_url":
        return _url_password
    if detector == "bearer_token":
        return _credential
    return _keep_prefix


_RULES: tuple[tuple[str, re.Pattern[str], _Replacer], ...] = tuple(
    (fmt.label, fmt.pattern, _replacer(fmt.detector)) for fmt in SECRET_FORMATS
)


def mask_text(text: str) -> str:
    """``text`` with every recognised secret masked (see the module's docstring)."""
    if not text:
        return text
    for _name, pattern, replace in _RULES:
        text = pattern.sub(replace, text)
    return _mask_assignments(text)


def _known_prefix(value: str) -> str | None:
    """The non-secret prefix when the whole of ``value`` is one secret in a known format, else None."""
    for _name, pattern, replace in _RULES:
        match = pattern.fullmatch(value.strip())
        if match is not None and replace is not _url_password and match.group("keep"):
            if replace is _credential and replace(match) == match.group(0):
                continue
            return str(match.group("keep"))
    return None


def _redact(value: Any) -> Any:
    """Everything under a secret-named key: strings, numbers, and every leaf of nested structures.
    ``null``, booleans and empty strings say nothing secret and are kept, as are masks already there."""
    if isinstance(value, dict):
        return {_mask_key(key): _redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(item) for item in value]
    if value is None or isinstance(value, bool) or value == "":
        return value
    if isinstance(value, str):
        if MASK in value:
            return value
        keep = _known_prefix(value)
        return masked(keep or "")
    return MASK


def _mask_key(key: Any) -> Any:
    return mask_text(key) if isinstance(key, str) else key


def mask_json(value: Any) -> Any:
    """A copy of a JSON value (as ``json.loads`` gives it) with its secrets masked.

    Strings are masked with ``mask_text``; every value under a key that names a secret
    (``is_sensitive_key``) is masked whatever it looks like. Keys are masked too (a token used as a key);
    two keys that mask alike are kept apart with a suffix. The input is not changed.
    """
    if isinstance(value, dict):
        result: dict[Any, Any] = {}
        for key, item in value.items():
            shown = _mask_key(key)
            copies = 1
            while shown in result:  # two secrets as keys that mask alike: do not let one hide the other
                copies += 1
                shown = f"{_mask_key(key)} ({copies})"
            sensitive = isinstance(key, str) and is_sensitive_key(key)
            result[shown] = _redact(item) if sensitive else mask_json(item)
        return result
    if isinstance(value, list | tuple):
        return [mask_json(item) for item in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


# --- the log -----------------------------------------------------------------------------------------
class SecretMaskingFilter(logging.Filter):
    """A logging filter (installed on the handlers in ``config/settings.py``) that masks secrets in
    every record's message, exception text and stack, whichever logger wrote it.

    It never drops a record. A record whose message has no secret is left exactly as it was.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the handler's to report, not ours
            return True
        shown = mask_text(message)
        if shown != message:
            record.msg, record.args = shown, None
        if record.exc_info and not record.exc_text:
            # Formatted here (as the handler would) so that the traceback's text can be masked.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True

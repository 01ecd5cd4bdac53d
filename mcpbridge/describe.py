"""What the bridge tells Signoff about the upstream it fronts, for the team's inventory (docs/inventory.md).

Everything here leaves the user's machine, so it is masked *before* it is sent: a token passed as a
command-line argument (``--api-key sk-…``, ``--password=…``, ``GITHUB_TOKEN=ghp_…``), a password in a URL
(``postgres://app:pw@db``), a secret in a query string (``?token=…``) never reaches the server. Of the
environment handed to the upstream only the variable *names* are sent, never a value.

Masking is best effort and errs towards hiding: a long random-looking argument is hidden even when it
is an innocent hash. The server masks what it receives once more (``approvals.masking``), so a bridge that
missed a format still does not get it stored in the clear. Pure Python; the bridge cannot import Django.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mcpbridge import protocol

MASK = "[masked]"
"""What replaces a secret (the same mark as the server's ``approvals.masking``)."""

# The limits of ``protocol.UpstreamReport``: what is longer is cut here rather than refused there.
MAX_ARGS = protocol.MAX_COMMAND_ARGS
MAX_ARG_LENGTH = protocol.MAX_ARG_LENGTH
MAX_URL_LENGTH = protocol.MAX_URL_LENGTH
MAX_ENV_NAMES = protocol.MAX_ENV_NAMES
MAX_ENV_NAME_LENGTH = protocol.MAX_NAME_LENGTH
MAX_CAPABILITIES_BYTES = protocol.MAX_CAPABILITIES_BYTES

# The last word of a flag, query parameter or variable name that says its value is a secret.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "secret",
        "token",
        "key",
        "apikey",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "pat",
        "sig",
        "signature",
        "cookie",
    }
)
# Names written as one word: their ending (``apikey``, ``accesstoken``, ``clientsecret``).
_SECRET_ENDINGS = ("password", "passwd", "secret", "token", "apikey", "accesskey", "secretkey", "privatekey")
# Formats that are secrets whatever their name; the group ``keep`` is not secret and says what it was.
_TOKEN_FORMATS = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"(?P<sgo>sgo_)[A-Za-z0-9_-]{8,}"
    r"|(?P<sk>sk-(?:ant-|proj-|live-|test-)?)[A-Za-z0-9_-]{12,}"
    r"|(?P<stripe>[sr]k_(?:live|test)_)[A-Za-z0-9]{8,}"
    r"|(?P<gh>gh[pousr]_|github_pat_)[A-Za-z0-9_]{20,}"
    r"|(?P<gl>glpat-)[A-Za-z0-9_-]{16,}"
    r"|(?P<slack>xox[abposre]-|xapp-)[A-Za-z0-9-]{10,}"
    r"|(?P<aws>AKIA|ASIA)[A-Z0-9]{16}"
    r"|(?P<google>AIza)[0-9A-Za-z_-]{30,}"
    r"|(?P<hf>hf_)[A-Za-z0-9]{20,}"
    r"|(?P<npm>npm_)[A-Za-z0-9]{30,}"
    r"|(?P<jwt>eyJ)[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"
    r")"
)
# ``name=value`` or ``"name": "value"`` inside an argument (``-e API_KEY=…``, ``--config {"token": …}``).
_ASSIGNMENT = re.compile(
    r"(?P<name>[\"']?[A-Za-z_][A-Za-z0-9_.-]{0,63}[\"']?)(?P<sep>\s*[:=]\s*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s,;&}\[\]\"']+(?:\[masked\])?|\[masked\])"
)
# A long word of letters and digits with no path or dots in it: most likely a key or a password.
_RANDOM_LOOKING = re.compile(r"[A-Za-z0-9_+=-]{32,}")
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def names_a_secret(name: str) -> bool:
    """Whether a flag, parameter or variable name says its value is secret (``--api-key``,
    ``GITHUB_TOKEN``, ``password``, ``clientSecret``), as opposed to ``--port`` or ``max_tokens``."""
    words = [word.lower() for word in _WORDS.findall(name.strip("-\"' "))]
    if not words:
        return False
    if words[-1] in _SECRET_WORDS or "".join(words[-2:]) in {"apikey", "accesskey", "privatekey"}:
        return True
    return len(words) == 1 and words[0].endswith(_SECRET_ENDINGS)


def _mask_formats(text: str) -> str:
    def keep(match: re.Match[str]) -> str:
        prefix = next((group for group in match.groups() if group), "")
        return f"{prefix}…{MASK}"

    return _TOKEN_FORMATS.sub(keep, text)


def _mask_assignments(text: str) -> str:
    def hide(match: re.Match[str]) -> str:
        if not names_a_secret(match.group("name")) or MASK in match.group("value"):
            return match.group(0)
        value = match.group("value")
        quote = value[0] if value[:1] in {'"', "'"} else ""
        return f"{match.group('name')}{match.group('sep')}{quote}{MASK}{quote}"

    return _ASSIGNMENT.sub(hide, text)


def mask_url(url: str) -> str:
    """``url`` without its secrets: the password of ``user:pass@``, a token used as the user name, the
    values of secret-named query and fragment parameters, and tokens of known formats in the path."""
    url = url[:MAX_URL_LENGTH]
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if colon:
            userinfo = f"{user}:{MASK}"
        elif _mask_formats(user) != user or len(user) >= 20:
            userinfo = MASK  # https://<token>@github.com/…
        netloc = f"{userinfo}@{host}"
    return urlunsplit(
        (
            parts.scheme,
            netloc,
            _mask_formats(parts.path),
            _mask_parameters(parts.query),
            _mask_parameters(parts.fragment),
        )
    )


def _mask_parameters(query: str) -> str:
    if not query:
        return query
    shown = []
    for pair in query.split("&"):
        name, equals, value = pair.partition("=")
        if equals and value and names_a_secret(name):
            shown.append(f"{name}={MASK}")
        else:
            shown.append(_mask_formats(pair))
    return "&".join(shown)


def mask_text(text: str) -> str:
    """One piece of text (an argument) with the secrets in it masked: URLs, known token formats and the
    values of secret-named assignments."""
    text = re.sub(r"[A-Za-z][A-Za-z0-9+.-]{0,19}://[^\s\"'<>]+", lambda m: mask_url(m.group(0)), text)
    return _mask_assignments(_mask_formats(text))


def mask_command(argv: Iterable[str]) -> list[str]:
    """The upstream's command line as Signoff may see it: every argument masked (``mask_text``); the
    value after a secret-named flag (``--api-key VALUE``) and a long random-looking argument hidden
    whole. At most ``MAX_ARGS`` arguments, each cut to ``MAX_ARG_LENGTH`` (the cut is marked)."""
    shown: list[str] = []
    hide_next = False
    args = list(argv)
    for arg in args[:MAX_ARGS]:
        if hide_next and not arg.startswith("-"):
            shown.append(MASK)
            hide_next = False
            continue
        hide_next = False
        if arg.startswith("-") and "=" not in arg:
            hide_next = names_a_secret(arg)
            shown.append(arg[:MAX_ARG_LENGTH])
            continue
        masked = mask_text(arg)
        if masked == arg and "/" not in arg and "." not in arg and _RANDOM_LOOKING.fullmatch(arg):
            masked = MASK if any(c.isdigit() for c in arg) and any(c.isalpha() for c in arg) else arg
        shown.append(masked if len(masked) <= MAX_ARG_LENGTH else masked[: MAX_ARG_LENGTH - 1] + "…")
    if len(args) > MAX_ARGS:
        shown[-1] = f"… ({len(args) - MAX_ARGS + 1} more arguments)"
    return shown


def env_names(env: Mapping[str, str]) -> list[str]:
    """The names of the variables in ``env``, sorted, at most ``MAX_ENV_NAMES``: never a value."""
    return sorted(name[:MAX_ENV_NAME_LENGTH] for name in env if name and "=" not in name)[:MAX_ENV_NAMES]


def capabilities(value: Mapping[str, Any], size: int) -> dict[str, Any]:
    """The upstream's capabilities as sent: whole when their JSON fits ``MAX_CAPABILITIES_BYTES``, else
    only which capabilities it has (``{"tools": {}, "experimental": {}}``). ``size`` is the JSON's size."""
    if size <= MAX_CAPABILITIES_BYTES:
        return dict(value)
    return {str(name)[:64]: {} for name in list(value)[:64]}

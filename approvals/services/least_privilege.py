"""Least-privilege warnings: what an upstream server can reach that it likely should not.

"If this server gets compromised, what can an attacker access?" Each check reads what the team's bridges
reported of a server (``Upstream``: its masked command line or URL, its tools and their annotations) and,
for two of them, the team's rules and calls. A warning says what was found, why it matters and how to fix
it; none blocks anything by itself (the checklist sign-off, ``server_review``, is the gate).

The checks, by key (docs/inventory.md lists them with examples):

``broad_root``          an argument that opens the whole disk, a drive root or a home directory
``db_admin_user``       a database URL whose user is an administrator (``postgres``, ``root``, ``sa``…)
``db_not_read_only``    a database URL with no read-only hint, for a server run with no read-only flag
``plain_http``          an HTTP upstream reached with ``http://`` on a host that is not this machine
``secret_in_arguments`` a token or password on the command line (or in the URL), masked before it was sent
``destructive_unguarded`` a tool annotated destructive that an allow rule without constraints lets run
``stale_version``       a version unchanged for ``STALE_AFTER`` while the server is still called

The checks are pure functions of their inputs except ``upstream_warnings``, which gathers the rules and
the dates from the database.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from django.db.models import Max
from django.utils import timezone

from approvals.masking import MASK
from approvals.models import Rule, Team, ToolCall, Upstream, UpstreamChange

STALE_AFTER = timedelta(days=180)
"""A version unchanged this long, while calls continue, earns ``stale_version``."""
RECENT_CALLS = timedelta(days=30)
"""Calls this recent count as "calls continue"."""

ADMIN_USERS = frozenset(
    {
        "postgres",
        "root",
        "admin",
        "administrator",
        "sa",
        "sys",
        "system",
        "superuser",
        "dbadmin",
        "rdsadmin",
        "azure_superuser",
        "cloudsqlsuperuser",
        "mysql",
        "master",
        "dbo",
    }
)
"""Database user names that are, by convention, administrators."""
DATABASE_SCHEMES = frozenset(
    {
        "postgres",
        "postgresql",
        "mysql",
        "mariadb",
        "mssql",
        "sqlserver",
        "mongodb",
        "mongodb+srv",
        "redis",
        "rediss",
        "oracle",
        "clickhouse",
        "cockroachdb",
        "snowflake",
    }
)
READ_ONLY_QUERY = re.compile(
    r"read[-_]?only|readonly|mode=ro\b|applicationintent=readonly|default_transaction_read_only|"
    r"target_session_attrs=read-only|readpreference=secondary",
    re.IGNORECASE,
)
READ_ONLY_USER = re.compile(
    r"(?:^|[-_.])(?:ro|read|reader|readonly|read_only|viewer|report(?:ing)?)(?:$|[-_.])"
)
READ_ONLY_FLAG = re.compile(
    r"^--?(?:read[-_]?only|ro|readonly|access[-_]mode(?:=(?:restricted|read[-_]?only))?)(?:=(?:true|1|yes))?$",
    re.IGNORECASE,
)
_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)
_WINDOWS_DRIVE_ROOT = re.compile(r"^[A-Za-z]:[\\/]?$")
_HOME = re.compile(
    r"^(?:~|\$HOME|\$\{HOME\}|%USERPROFILE%|/root|/home/[^/]+|/Users/[^/]+|[A-Za-z]:[\\/]Users[\\/][^\\/]+)[\\/]?$"
)


@dataclass(frozen=True)
class PrivilegeWarning:
    """One finding of too much privilege, for the Inventory pages."""

    key: str
    title: str
    detail: str
    """What was found, quoting the (masked) argument, URL or tool."""
    why: str
    """Why it matters, in one or two sentences."""
    fix: str
    """What to change."""


# --- the command line and URL ----------------------------------------------------------------------------
def _values(argument: str) -> list[str]:
    """The values an argument carries: itself, and the value of ``--flag=value``."""
    values = [argument]
    if argument.startswith("-") and "=" in argument:
        values.append(argument.split("=", 1)[1])
    return values


def broad_root(command: Sequence[str]) -> PrivilegeWarning | None:
    """An argument that gives the server the whole disk (``/``, ``C:\\``) or a home directory."""
    for argument in command[1:]:
        for value in _values(argument):
            stripped = value.strip().strip("\"'")
            if stripped in ("/", "\\", "file:///") or _WINDOWS_DRIVE_ROOT.match(stripped):
                reach = "the whole disk"
            elif _HOME.match(stripped):
                reach = "a whole home directory, with its SSH keys, cloud credentials and browser profiles"
            else:
                continue
            return PrivilegeWarning(
                key="broad_root",
                title="Rooted at a disk or home directory",
                detail=f"The argument {argument!r} gives it {reach}.",
                why="Whatever the server can read, a compromised server or a misled model can read and "
                "send elsewhere; whatever it can write, they can change.",
                fix="Give it only the project directories its tools need, e.g. /srv/projects/app instead of "
                "/ or ~.",
            )
    return None


@dataclass(frozen=True)
class DatabaseUrl:
    """A database connection URL found in an argument or as the upstream's URL (passwords masked)."""

    text: str
    scheme: str
    user: str
    query: str


def database_urls(texts: Iterable[str]) -> list[DatabaseUrl]:
    """The database URLs in the texts (arguments or a URL), by scheme."""
    found = []
    for text in texts:
        for match in _URL.finditer(text):
            url = match.group(0)
            try:  # the mark of a masked password has brackets, which urlsplit takes for an IPv6 host
                parts = urlsplit(url.replace(MASK, "masked"))
            except ValueError:
                continue
            scheme = parts.scheme.lower().removeprefix("jdbc:")
            if scheme not in DATABASE_SCHEMES:
                continue
            user = unquote(parts.username or "")
            query = "&".join(f"{k}={v}" for k, v in parse_qsl(parts.query, keep_blank_values=True))
            found.append(DatabaseUrl(text=url, scheme=scheme, user=user, query=query))
    return found


def database_warnings(command: Sequence[str], url: str) -> list[PrivilegeWarning]:
    """An administrator as the database user; no read-only hint in the URL or the command line."""
    urls = database_urls([*command[1:], url])
    read_only_flag = any(READ_ONLY_FLAG.match(argument) for argument in command[1:])
    warnings = []
    for db in urls:
        if db.user.lower() in ADMIN_USERS:
            warnings.append(
                PrivilegeWarning(
                    key="db_admin_user",
                    title="Connects to the database as an administrator",
                    detail=f"It connects as {db.user!r}: {db.text}",
                    why="An administrator can read every database, change schemas and roles, and on some "
                    "systems run programs on the database host.",
                    fix="Create a user with rights on the tables the tools need only (read-only where "
                    "possible) and connect as that user.",
                )
            )
            break
    if urls and not read_only_flag:
        for db in urls:
            if READ_ONLY_QUERY.search(db.query) or READ_ONLY_USER.search(db.user.lower()):
                continue
            warnings.append(
                PrivilegeWarning(
                    key="db_not_read_only",
                    title="No read-only hint for the database",
                    detail=f"Neither the URL nor the command line says read-only: {db.text}",
                    why="A model that only needs to look things up can then change or delete data, "
                    "by mistake or because a result told it to.",
                    fix="Connect as a read-only user, or set a read-only option (e.g. PostgreSQL's "
                    "options=-c default_transaction_read_only=on, SQLite's mode=ro, or the server's "
                    "--read-only flag) unless its tools must write.",
                )
            )
            break
    return warnings


def _loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http(transport: str, url: str) -> PrivilegeWarning | None:
    """An HTTP upstream reached without TLS on a host other than this machine."""
    if transport != Upstream.Transport.HTTP or not url.lower().startswith("http://"):
        return None
    try:
        host = urlsplit(url.replace(MASK, "masked")).hostname or ""
    except ValueError:
        host = ""
    if _loopback(host):
        return None
    return PrivilegeWarning(
        key="plain_http",
        title="Reached over plain HTTP",
        detail=f"The upstream's URL is {url}",
        why="Anyone on the network path can read the tool calls and results, and change them on the way.",
        fix="Serve the upstream over https:// (TLS), or run it on the same machine as the bridge.",
    )


def secret_in_arguments(command: Sequence[str], url: str) -> PrivilegeWarning | None:
    """A secret on the command line or in the URL. The bridge masked it before sending, so the mark of
    the masking is what shows it was there."""
    places = [argument for argument in command[1:] if MASK in argument]
    if MASK in url:
        places.append(url)
    if not places:
        return None
    where = "in its URL" if places == [url] else "on its command line"
    return PrivilegeWarning(
        key="secret_in_arguments",
        title="A secret is passed " + where,
        detail="Masked here: " + ", ".join(repr(place) for place in places[:3]),
        why="Command lines are visible to every user of the machine (ps, /proc) and end up in shell "
        "history, process monitors and crash reports; URLs end up in logs.",
        fix="Pass the secret in an environment variable (the bridge hands its environment to the "
        "upstream) or a file the server reads, and remove it from the arguments.",
    )


# --- tools, rules and dates --------------------------------------------------------------------------------
def destructive_unguarded(
    *, server: str, tools: dict[str, dict[str, Any]], rules: Sequence[Rule], now: datetime
) -> PrivilegeWarning | None:
    """Tools annotated destructive that an enabled allow rule without argument constraints lets run with
    no human review, where no deny rule covers them. ``rules`` are the team's rules."""
    live = [rule for rule in rules if rule.enabled and (rule.expires_at is None or rule.expires_at > now)]
    unguarded = []
    for name, entry in sorted(tools.items()):
        if entry.get("annotations", {}).get("destructiveHint") is not True:
            continue
        matching = [
            rule for rule in live if fnmatchcase(server, rule.server) and fnmatchcase(name, rule.tool)
        ]
        denied = any(rule.effect == Rule.Effect.DENY and not rule.constraints for rule in matching)
        blanket = [rule for rule in matching if rule.effect == Rule.Effect.ALLOW and not rule.constraints]
        if blanket and not denied:
            unguarded.append((name, blanket[0]))
    if not unguarded:
        return None
    listed = ", ".join(f"{name} (rule #{rule.pk} {rule.server}/{rule.tool})" for name, rule in unguarded[:5])
    return PrivilegeWarning(
        key="destructive_unguarded",
        title="Destructive tools run without review",
        detail=f"Allowed by a rule without argument constraints: {listed}.",
        why="The server says these tools may delete or overwrite; an allow rule without constraints lets "
        "every call to them run with no human looking, whatever its arguments.",
        fix="Add argument constraints to the rule (e.g. a path within a project directory), or delete "
        "the rule so that a reviewer decides each call.",
    )


def stale_version(
    *, version: str, version_since: datetime, last_call_at: datetime | None, now: datetime
) -> PrivilegeWarning | None:
    """The same version for ``STALE_AFTER`` or longer while the server is still called."""
    if not version or now - version_since < STALE_AFTER:
        return None
    if last_call_at is None or now - last_call_at > RECENT_CALLS:
        return None
    days = (now - version_since).days
    return PrivilegeWarning(
        key="stale_version",
        title="Not updated for a long time",
        detail=f"Version {version} has not changed for {days} days, and it is still called.",
        why="Security fixes reach a server only through updates; an old version may carry known "
        "vulnerabilities.",
        fix="Check for a newer release of the server and update it; pin the new version.",
    )


def warnings_for(
    upstream: Upstream,
    *,
    rules: Sequence[Rule],
    version_since: datetime | None,
    last_call_at: datetime | None,
    now: datetime,
) -> list[PrivilegeWarning]:
    """Every warning for one server, from what is known of it. ``version_since``: when its version last
    changed (None: never since it was first seen)."""
    command = list(upstream.command or [])
    found: list[PrivilegeWarning | None] = [
        broad_root(command),
        *database_warnings(command, upstream.url),
        plain_http(upstream.transport, upstream.url),
        secret_in_arguments(command, upstream.url),
        destructive_unguarded(server=upstream.name, tools=upstream.tools, rules=rules, now=now),
        stale_version(
            version=upstream.server_version,
            version_since=version_since or upstream.first_seen_at,
            last_call_at=last_call_at,
            now=now,
        ),
    ]
    return [warning for warning in found if warning is not None]


def team_warnings(team: Team, upstreams: Sequence[Upstream]) -> dict[int, list[PrivilegeWarning]]:
    """The warnings of each of the team's listed servers, by ``Upstream`` id, in three queries: the
    team's rules, the servers' version changes and their latest calls."""
    if not upstreams:
        return {}
    now = timezone.now()
    rules = list(Rule.objects.filter(team=team))
    version_since: dict[int, datetime] = {}
    changes = (
        UpstreamChange.objects.filter(upstream__in=upstreams)
        .order_by("upstream_id", "-at")
        .values_list("upstream_id", "at", "changes")
    )
    for upstream_id, at, items in changes:
        if upstream_id not in version_since and any(item.get("field") == "server_version" for item in items):
            version_since[upstream_id] = at
    last_calls = dict(
        ToolCall.objects.filter(team=team, server__in=[upstream.name for upstream in upstreams])
        .values_list("server")
        .annotate(at=Max("created_at"))
        .values_list("server", "at")
    )
    return {
        upstream.pk: warnings_for(
            upstream,
            rules=rules,
            version_since=version_since.get(upstream.pk),
            last_call_at=last_calls.get(upstream.name),
            now=now,
        )
        for upstream in upstreams
    }


def upstream_warnings(upstream: Upstream) -> list[PrivilegeWarning]:
    """Every warning for one server (its page)."""
    return team_warnings(upstream.team, [upstream])[upstream.pk]

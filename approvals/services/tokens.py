"""Bridge tokens: issued per person and team, stored as a hash, revocable at once.

A token may be scoped to some servers (the bridge's ``--name``, or shell-style globs of it): a bridge that
announces another server is refused at its hello, and a call to another server is denied.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from approvals import realtime
from approvals.models import BridgeToken, Team
from approvals.services.alerts import alerts_address_seen, seen_addresses_after
from approvals.services.audit import audit_record

TOKEN_MARK = "sgo_"
PREFIX_LENGTH = 8
# What token_issue makes; anything else is refused before it reaches the database (which may refuse
# some text outright: PostgreSQL has no NUL character).
_TOKEN_SHAPE = re.compile(rf"{TOKEN_MARK}[0-9a-f]{{{PREFIX_LENGTH}}}_[A-Za-z0-9_-]{{1,100}}")


# A server name as a token's scope may hold it: what `mcpbridge --name` typically is, plus the globs `*`
# and `?` (no `[...]` classes, no spaces or commas, which separate the names in the form).
_SERVER_PATTERN = re.compile(r"[A-Za-z0-9._:@+/*?-]{1,128}")
MAX_SCOPE_SERVERS = 20


class TokenScopeInvalid(ValueError):
    """A server scope that cannot be stored: the message says which name and why."""


def token_servers_validate(servers: Iterable[str]) -> list[str]:
    """The scope as stored: each name or glob checked, duplicates dropped, order kept. Empty means any."""
    scope: list[str] = []
    for server in servers:
        if not isinstance(server, str) or not _SERVER_PATTERN.fullmatch(server):
            raise TokenScopeInvalid(
                f"{str(server)[:40]!r} is not a server name: use 1 to 128 letters, digits or . _ - : @ + /, "
                "with * and ? as wildcards"
            )
        if server not in scope:
            scope.append(server)
    if len(scope) > MAX_SCOPE_SERVERS:
        raise TokenScopeInvalid(f"at most {MAX_SCOPE_SERVERS} servers (use a glob such as files-*)")
    return scope


def token_servers_parse(text: str) -> list[str]:
    """A scope typed by a person: names or globs separated by commas and/or spaces."""
    return token_servers_validate(part for part in re.split(r"[\s,]+", text.strip()) if part)


def server_in_scope(servers: Sequence[str], server: str) -> bool:
    """May a token with this scope front this server? Case-sensitive, like rules; empty scope: any server."""
    return not servers or any(fnmatch.fnmatchcase(server, pattern) for pattern in servers)


def scope_text(servers: Sequence[str]) -> str:
    """The scope for people: ``files, git-*`` or ``any server``."""
    return ", ".join(servers) if servers else "any server"


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_issue(
    *,
    team: Team,
    user: User,
    name: str,
    expires_at: datetime | None = None,
    servers: Sequence[str] = (),
    by: User | None = None,
) -> tuple[BridgeToken, str]:
    """Create a token and return it with its raw value, which is never stored and shown only now.

    ``servers`` limits the servers its bridges may front (names or globs; empty: any), and raises
    ``TokenScopeInvalid`` for a bad one. ``by`` is whoever issued it, when not the owner (an admin, an
    operator's command).
    """
    scope = token_servers_validate(servers)
    with transaction.atomic():
        while True:
            prefix = secrets.token_hex(PREFIX_LENGTH // 2)
            if not BridgeToken.objects.filter(prefix=prefix).exists():
                break
        raw = f"{TOKEN_MARK}{prefix}_{secrets.token_urlsafe(32)}"
        token = BridgeToken.objects.create(
            team=team,
            user=user,
            name=name,
            prefix=prefix,
            secret_hash=_hash(raw),
            expires_at=expires_at,
            servers=scope,
        )
        audit_record(
            kind="token.issued",
            team=team,
            actor_id=(by or user).pk,
            token=token,
            name=name,
            prefix=prefix,
            servers=scope,
        )
    return token, raw


def token_scope_refused(*, token: BridgeToken, server: str) -> str:
    """Record that a bridge announced a server outside its token's scope; return the refusal's text.

    Audited: a token tried on a server it was not issued for may be a leaked or misused token.
    """
    with transaction.atomic():
        audit_record(
            kind="token.scope_refused",
            team=token.team,
            token=token,
            server=server,
            servers=list(token.servers),
        )
    return (
        f"Signoff refused this bridge: its token “{token.name}” may only front {scope_text(token.servers)}, "
        f"but this bridge fronts the server '{server}' (mcpbridge --name). Start the bridge with one of "
        "those names, or ask your Signoff admin for a token for this server."
    )


def token_authenticate(raw: str) -> BridgeToken | None:
    """The usable token with this raw value, or None. Constant-time compare of the hash."""
    if len(raw) > 200 or not _TOKEN_SHAPE.fullmatch(raw):
        return None
    prefix = raw[len(TOKEN_MARK) : len(TOKEN_MARK) + PREFIX_LENGTH]
    token = BridgeToken.objects.select_related("team", "user").filter(prefix=prefix).first()
    if token is None or not hmac.compare_digest(token.secret_hash, _hash(raw)):
        return None
    if not token.is_usable() or not token.user.is_active:
        return None
    return token


def token_touch(*, token: BridgeToken, address: str | None) -> None:
    """Record that the token was just used, and from where; an address it was not used from before alerts
    the team's admins (not its very first one). It remembers its latest few (``seen_addresses``)."""
    now = timezone.now()
    if not address:
        BridgeToken.objects.filter(pk=token.pk).update(last_used_at=now, last_used_ip=address)
        return
    with transaction.atomic():
        # Locked: two bridges connecting at once must not forget each other's address.
        row = (
            BridgeToken.objects.select_for_update()
            .filter(pk=token.pk)
            .values("seen_addresses", "last_used_ip")
        )
        current = row.first()
        if current is None:
            return
        seen = list(current["seen_addresses"] or [])
        if not seen and current["last_used_ip"]:  # used before addresses were remembered
            seen = [current["last_used_ip"]]
        BridgeToken.objects.filter(pk=token.pk).update(
            last_used_at=now, last_used_ip=address, seen_addresses=seen_addresses_after(seen, address)
        )
        alerts_address_seen(token=token, address=address, seen=seen)


def token_revoke(*, token: BridgeToken, by: User | None, reason: str = "token revoked") -> bool:
    """Revoke a token at once: its open bridges are closed, its held calls denied and its held results
    blocked.

    Returns False when it was already revoked.
    """
    from approvals.services.calls import calls_deny_for_token
    from approvals.services.results import results_block_for_token

    now = timezone.now()
    with transaction.atomic():
        changed = BridgeToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now)
        if not changed:
            return False
        token.revoked_at = now
        # Row locks before the audit chain's lock (taken by the first audit_record): a reviewer deciding
        # one of these calls takes them in the same order, so the two cannot deadlock.
        calls_deny_for_token(token=token, reason=f"denied: {reason}")
        results_block_for_token(token=token, reason=f"blocked: {reason}")
        audit_record(
            kind="token.revoked",
            team=token.team,
            actor_id=by.pk if by else None,
            token=token,
            name=token.name,
            reason=reason,
        )
        realtime.send_on_commit(realtime.bridge_group(token.pk), {"type": "bridge.revoked", "reason": reason})
    return True


TOKEN_EXPIRED = "the token expired"


def tokens_expire_due(*, limit: int = 200) -> int:
    """Tokens past their expiry are revoked the moment the sweep sees them: their open bridges are closed
    and their held calls denied, as with a revocation (the token was already refused at connect and on
    every call). Returns how many."""
    due = BridgeToken.objects.select_related("team").filter(
        revoked_at__isnull=True, expires_at__lte=timezone.now()
    )
    return sum(token_revoke(token=token, by=None, reason=TOKEN_EXPIRED) for token in due[:limit])

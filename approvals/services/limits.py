"""Rate limits: at most N matching calls per minute, hour or day, counted per token, per team or per tool.

A team's limits are rows of ``RateLimit``; every write here is atomic, audited (``limit.created``,
``limit.updated``, ``limit.enabled``, ``limit.disabled``, ``limit.deleted``) and moves the team's
``rules_version`` — the one stamp of "the team's policy changed" that ``call_submit`` already reads — so
that every process rebuilds its compiled limits (``team_limits``) before the next call.

Counting (``limits_check``) uses Django's cache, shared by every process when ``REDIS_URL`` is set (the
embedded default's local-memory cache serves its one process). Windows are fixed and aligned to the
minute, hour or day (UTC); a counter's key carries its window's start, so a new window starts at 0 without
any reset job. ``cache.add(key, 0)`` then ``cache.incr(key)`` is atomic in Redis and in the local-memory
cache: two processes never both take the last call. A call denied by a limit gives back what it took from
every counter (so it counts against no limit: a token stuck at its limit does not eat the team's), and
when the counters cannot be reached every call that a limit would count is denied (fail closed).
See docs/policy.md, "Rate limits".
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db import transaction

from approvals import metrics
from approvals.models import BridgeToken, RateLimit, Team, ToolCall, ToolPin, new_rules_version
from approvals.services.alerts import alert_raise
from approvals.services.audit import audit_record
from approvals.services.rules import name_error, note_error

logger = logging.getLogger(__name__)

SCOPES: Final = tuple(RateLimit.Scope.values)
WINDOWS: Final = tuple(RateLimit.Window.values)
WINDOW_SECONDS: Final = {"minute": 60, "hour": 3600, "day": 86400}
MAX_LIMITS_PER_TEAM: Final = 100
"""Each limit costs two cache round trips on every call it matches: keep the list short."""
MAX_CALLS: Final = 1_000_000_000
"""``RateLimit.server`` and ``RateLimit.tool`` hold this many characters (as rules' do)."""
KEY_GRACE_SECONDS: Final = 10
"""A counter outlives its window by this much: it never expires between the ``add`` and the ``incr``."""
UNAVAILABLE_REASON: Final = (
    "denied: rate limits unavailable (Signoff cannot reach its counters, so it cannot count this call); "
    "try again later"
)


class LimitInvalid(ValueError):
    """Values a limit cannot have. ``errors`` maps a field (``max_calls``, ``server``…) to its message."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors.items()))
        self.errors = dict(errors)


@dataclass(frozen=True, slots=True)
class LimitValues:
    """A limit's fields as validated: what ``limit_create`` and ``limit_update`` store."""

    scope: str
    server: str
    tool: str
    window: str
    max_calls: int
    note: str
    enabled: bool

    def as_fields(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "server": self.server,
            "tool": self.tool,
            "window": self.window,
            "max_calls": self.max_calls,
            "note": self.note,
            "enabled": self.enabled,
        }


def limit_validate(
    *,
    scope: Any,
    server: Any = "*",
    tool: Any = "*",
    window: Any,
    max_calls: Any,
    note: Any = "",
    enabled: Any = True,
) -> LimitValues:
    """Check a limit's values, all of them, and raise ``LimitInvalid`` listing every problem."""
    errors: dict[str, str] = {}
    if scope not in SCOPES:
        errors["scope"] = f"must be one of: {', '.join(SCOPES)}"
    for name, value in (("server", server), ("tool", tool)):
        problem = name_error(value, name)
        if problem:
            errors[name] = problem
    if window not in WINDOWS:
        errors["window"] = f"must be one of: {', '.join(WINDOWS)}"
    # bool is an int in Python: "max_calls: true" is a mistake, not 1.
    if not isinstance(max_calls, int) or isinstance(max_calls, bool):
        errors["max_calls"] = "must be a whole number of calls"
    elif not 1 <= max_calls <= MAX_CALLS:
        errors["max_calls"] = f"must be between 1 and {MAX_CALLS:,} (disable the limit to stop counting)"
    if (problem := note_error(note)) is not None:
        errors["note"] = problem
    if not isinstance(enabled, bool):
        errors["enabled"] = "must be true or false"
    if errors:
        raise LimitInvalid(errors)
    return LimitValues(
        scope=scope,
        server=server,
        tool=tool,
        window=window,
        max_calls=max_calls,
        note=note.strip(),
        enabled=enabled,
    )


# --- writes --------------------------------------------------------------------------------------------


def limits_changed(team_id: int) -> None:
    """Make every process rebuild the team's compiled limits (and rules) before its next call."""
    Team.objects.filter(pk=team_id).update(rules_version=new_rules_version())


def limit_summary(limit: RateLimit) -> dict[str, Any]:
    """What the audit log keeps of a limit."""
    return {
        "limit": limit.pk,
        "scope": limit.scope,
        "server": limit.server,
        "tool": limit.tool,
        "window": limit.window,
        "max_calls": limit.max_calls,
        "note": limit.note,
        "enabled": limit.enabled,
    }


def limit_create(
    *,
    team: Team,
    by: AbstractBaseUser | None,
    scope: str,
    window: str,
    max_calls: int,
    server: str = "*",
    tool: str = "*",
    note: str = "",
    enabled: bool = True,
) -> RateLimit:
    """Add a limit to the team. Raises ``LimitInvalid`` (also past ``MAX_LIMITS_PER_TEAM``)."""
    values = limit_validate(
        scope=scope, server=server, tool=tool, window=window, max_calls=max_calls, note=note, enabled=enabled
    )
    with transaction.atomic():
        # The team row is the lock: two admins adding the 100th limit at once take turns.
        Team.objects.select_for_update().filter(pk=team.pk).values_list("pk", flat=True).first()
        if RateLimit.objects.filter(team=team).count() >= MAX_LIMITS_PER_TEAM:
            raise LimitInvalid(
                {"__all__": f"a team has at most {MAX_LIMITS_PER_TEAM} rate limits: delete one first"}
            )
        limit = RateLimit.objects.create(
            team=team, created_by_id=by.pk if by is not None else None, **values.as_fields()
        )
        limits_changed(team.pk)
        audit_record(
            kind="limit.created",
            team=team,
            actor_id=by.pk if by is not None else None,
            **limit_summary(limit),
        )
    return limit


def limit_update(
    *,
    limit: RateLimit,
    by: AbstractBaseUser | None,
    scope: str,
    window: str,
    max_calls: int,
    server: str = "*",
    tool: str = "*",
    note: str = "",
    enabled: bool = True,
) -> RateLimit:
    """Change a limit's values. Nothing is written (nor audited) when nothing changed.

    The counters of the current window stay: raising a limit lets more calls through at once, lowering it
    below the count denies the rest of the window.
    """
    values = limit_validate(
        scope=scope, server=server, tool=tool, window=window, max_calls=max_calls, note=note, enabled=enabled
    )
    with transaction.atomic():
        current = RateLimit.objects.select_for_update().select_related("team").get(pk=limit.pk)
        before = limit_summary(current)
        changed = [name for name, value in values.as_fields().items() if getattr(current, name) != value]
        if not changed:
            return current
        for name in changed:
            setattr(current, name, getattr(values, name))
        current.save(update_fields=changed)
        limits_changed(current.team_id)
        after = limit_summary(current)
        audit_record(
            kind="limit.updated",
            team=current.team,
            actor_id=by.pk if by is not None else None,
            limit=current.pk,
            changed=changed,
            before={name: before[name] for name in changed},
            after={name: after[name] for name in changed},
        )
    return current


def limit_set_enabled(*, limit: RateLimit, by: AbstractBaseUser | None, enabled: bool) -> bool:
    """Switch a limit on or off. False when it already was."""
    with transaction.atomic():
        current = RateLimit.objects.select_for_update().select_related("team").get(pk=limit.pk)
        if current.enabled == enabled:
            return False
        current.enabled = enabled
        current.save(update_fields=["enabled"])
        limits_changed(current.team_id)
        audit_record(
            kind="limit.enabled" if enabled else "limit.disabled",
            team=current.team,
            actor_id=by.pk if by is not None else None,
            **limit_summary(current),
        )
    limit.enabled = enabled
    return True


def limit_delete(*, limit: RateLimit, by: AbstractBaseUser | None) -> None:
    """Delete a limit. Its counters are left to expire with their window."""
    with transaction.atomic():
        current = RateLimit.objects.select_for_update().select_related("team").filter(pk=limit.pk).first()
        if current is None:
            return
        summary = limit_summary(current)
        team = current.team
        current.delete()
        limits_changed(team.pk)
        audit_record(kind="limit.deleted", team=team, actor_id=by.pk if by is not None else None, **summary)


# --- the engine's view of limits ---------------------------------------------------------------------

_SCOPE_WORDS: Final = {"token": "per token", "team": "per team", "tool": "per tool"}


def describe(*, max_calls: int, window: str, scope: str, server: str, tool: str) -> str:
    """``10 calls per minute per token on files/*``."""
    calls = "call" if max_calls == 1 else "calls"
    return f"{max_calls:,} {calls} per {window} {_SCOPE_WORDS.get(scope, scope)} on {server}/{tool}"


def _matcher(pattern: str) -> Callable[[str], bool]:
    """Case-sensitive shell glob, as rules match server and tool names (``fnmatch.fnmatchcase``)."""
    if not any(char in pattern for char in "*?["):
        return pattern.__eq__
    compiled = re.compile(fnmatch.translate(pattern))
    return lambda name: compiled.match(name) is not None


@dataclass(frozen=True, slots=True)
class CompiledLimit:
    """One enabled limit, ready to match calls."""

    id: int
    scope: str
    server: str
    tool: str
    window: str
    max_calls: int
    match_server: Callable[[str], bool]
    match_tool: Callable[[str], bool]

    @classmethod
    def of(cls, limit: RateLimit) -> CompiledLimit:
        return cls(
            id=limit.pk,
            scope=limit.scope,
            server=limit.server,
            tool=limit.tool,
            window=limit.window,
            max_calls=limit.max_calls,
            match_server=_matcher(limit.server),
            match_tool=_matcher(limit.tool),
        )

    def matches(self, *, server: str, tool: str) -> bool:
        return self.match_server(server) and self.match_tool(tool)

    def subject(self, *, team_id: int, token_id: int, server: str, tool: str) -> str:
        """What this limit counts the call against: the token's id, the team's id, or ``server/tool``."""
        if self.scope == RateLimit.Scope.TOKEN:
            return str(token_id)
        if self.scope == RateLimit.Scope.TEAM:
            return str(team_id)
        return f"{server}/{tool}"

    def describe(self) -> str:
        return describe(
            max_calls=self.max_calls,
            window=self.window,
            scope=self.scope,
            server=self.server,
            tool=self.tool,
        )


_LIMITS: dict[int, tuple[int, tuple[CompiledLimit, ...]]] = {}
"""Per process: each team's compiled enabled limits, with the ``rules_version`` they were built at."""


def team_limits(team_id: int, *, version: int) -> tuple[CompiledLimit, ...]:
    """The team's enabled limits, compiled, in creation order; rebuilt when ``version`` moved."""
    cached = _LIMITS.get(team_id)
    if cached is not None and cached[0] == version:
        return cached[1]
    compiled = tuple(
        CompiledLimit.of(limit)
        for limit in RateLimit.objects.filter(team_id=team_id, enabled=True).order_by("id")
    )
    _LIMITS[team_id] = (version, compiled)
    return compiled


# --- counting ----------------------------------------------------------------------------------------


def window_bounds(window: str, now: datetime) -> tuple[datetime, datetime]:
    """The fixed window holding ``now``: aligned to the minute, hour or day in UTC (start, end)."""
    size = WINDOW_SECONDS[window]
    start = math.floor(now.timestamp() / size) * size
    begins = datetime.fromtimestamp(start, tz=UTC)
    return begins, begins + timedelta(seconds=size)


def counter_key(*, limit_id: int, scope: str, window: str, start: datetime, subject: str) -> str:
    """The cache key of one counter. The subject is hashed: a ``server/tool`` may hold any character."""
    digest = hashlib.sha256(f"{scope}:{subject}".encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"signoff:limit:{limit_id}:{window}:{int(start.timestamp())}:{digest}"


def _in(seconds: float) -> str:
    """``23 s``, ``14 min``, ``5 h 3 min``: how long until a window resets."""
    whole = max(1, math.ceil(seconds))
    if whole < 120:
        return f"{whole} s"
    if whole < 7200:
        return f"{math.ceil(whole / 60)} min"
    hours, rest = divmod(whole, 3600)
    return f"{hours} h {math.ceil(rest / 60)} min"


def reset_text(*, resets_at: datetime, now: datetime) -> str:
    """``resets at 18:21:00 UTC (in 23 s)``; the date too when it is not today's."""
    moment = resets_at.astimezone(UTC)
    when = f"{moment:%H:%M:%S} UTC"
    if moment.date() != now.astimezone(UTC).date():
        when = f"{moment:%Y-%m-%d} {when}"
    return f"resets at {when} (in {_in((resets_at - now).total_seconds())})"


@dataclass(frozen=True, slots=True)
class LimitHit:
    """Why a call is denied by the rate limits: one limit reached, or the counters unreachable."""

    reason: str
    """The call's deny reason, shown to the reviewer and, through the bridge, to the model."""
    limit: CompiledLimit | None = None
    """The limit reached; None when the counters could not be reached (``unavailable``)."""
    subject: str = ""
    count: int = 0
    resets_at: datetime | None = None

    @property
    def unavailable(self) -> bool:
        return self.limit is None


def _count(key: str, timeout: int) -> int:
    """Add one to a counter, creating it at 0 first; atomic in Redis and in the local-memory cache."""
    cache.add(key, 0, timeout)
    try:
        return int(cache.incr(key))
    except ValueError:  # gone between add and incr (evicted under memory pressure): start it again
        cache.add(key, 0, timeout)
        return int(cache.incr(key))


def _give_back(keys: Iterable[str]) -> None:
    """Take back the counts of a call that a limit denied, so it counts against no limit."""
    for key in keys:
        with contextlib.suppress(ValueError):  # expired meanwhile: nothing to give back
            cache.decr(key)


def limits_check(
    *,
    team: Team,
    token: BridgeToken,
    server: str,
    tool: str,
    now: datetime,
    version: int | None = None,
) -> LimitHit | None:
    """Count the call in every enabled limit of the team that matches it; None when all have room.

    The first limit (in creation order) already at its maximum denies the call: the call's counts are then
    given back in every counter it was added to. When the cache fails (Redis unreachable…), the call is
    denied as ``unavailable``: a call is never let through uncounted. ``version`` is the team's
    ``rules_version`` as the caller read it (read here when None). A team without limits touches no cache.
    """
    if version is None:
        version = Team.objects.filter(pk=team.pk).values_list("rules_version", flat=True).get()
    matching = [
        limit for limit in team_limits(team.pk, version=version) if limit.matches(server=server, tool=tool)
    ]
    if not matching:
        return None
    counted: list[str] = []
    try:
        for limit in matching:
            start, end = window_bounds(limit.window, now)
            subject = limit.subject(team_id=team.pk, token_id=token.pk, server=server, tool=tool)
            key = counter_key(
                limit_id=limit.id, scope=limit.scope, window=limit.window, start=start, subject=subject
            )
            timeout = max(1, math.ceil((end - now).total_seconds())) + KEY_GRACE_SECONDS
            count = _count(key, timeout)
            counted.append(key)
            if count > limit.max_calls:
                _give_back(counted)
                reached = "reached" if limit.scope != RateLimit.Scope.TOOL else f"reached for {subject}"
                reason = (
                    f"rate limit #{limit.id}: {limit.describe()} {reached}; "
                    f"{reset_text(resets_at=end, now=now)}"
                )
                return LimitHit(reason=reason, limit=limit, subject=subject, count=count, resets_at=end)
    except Exception as error:  # whatever the cache raised: fail closed
        logger.error(
            "rate limits unavailable, call denied (team %s, %s/%s): %s: %s",
            team.slug,
            server,
            tool,
            type(error).__name__,
            error,
        )
        return LimitHit(reason=UNAVAILABLE_REASON)
    return None


def limit_hit_record(*, hit: LimitHit, call: ToolCall) -> None:
    """After ``call_submit`` denied ``call`` for ``hit``, inside its transaction: raise the limit's alert
    (one open alert per limit and subject, counting repeats) and count the hit for ``/metrics``.

    An unavailable cache raises no alert: the alert's notifications would need the same Redis. It is
    logged (``limits_check``) and every denied call carries the reason.
    """
    limit = hit.limit
    if limit is None:
        return
    team = call.team
    key = f"{limit.id}:{hit.subject}"
    if len(key) > 200:  # Alert.key's size; a long server/tool still gets one alert of its own
        key = f"{limit.id}:sha256:{hashlib.sha256(hit.subject.encode('utf-8', 'surrogatepass')).hexdigest()}"
    names: dict[str, str] = {
        RateLimit.Scope.TOKEN: f"token “{call.token.name}”",
        RateLimit.Scope.TEAM: "the team",
    }
    who = names.get(limit.scope, hit.subject)  # per tool: the server/tool itself
    alert_raise(
        team=team,
        kind="rate_limit",
        key=key,
        message=f"Rate limit #{limit.id} reached by {who}: {limit.describe()}.",
        data={
            "limit": limit.id,
            "scope": limit.scope,
            "subject": hit.subject,
            "window": limit.window,
            "max_calls": limit.max_calls,
            "call": str(call.pk),
            "resets_at": hit.resets_at.isoformat() if hit.resets_at else None,
        },
        token=call.token if limit.scope == RateLimit.Scope.TOKEN else None,
    )
    slug, scope = team.slug, limit.scope
    transaction.on_commit(lambda: metrics.count_rate_limit_hit(team_slug=slug, scope=scope))


# --- reading the counters for the Limits page -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """How full a limit's current window is: for its busiest subject, and until when."""

    count: int
    subject: str
    """Who it counts: a token's name, the team, or ``server/tool``; empty when nothing was counted."""
    resets_at: datetime
    subjects: int
    """How many subjects were looked at (tokens of the team, tools seen)."""


MAX_SUBJECTS_READ: Final = 200


def limits_usage(*, team: Team, limits: Iterable[RateLimit], now: datetime) -> dict[int, Usage] | None:
    """Each limit's count in its current window (the busiest subject's); None when the cache fails.

    Cheap: one ``get_many`` for the page. Per-token limits read the team's usable tokens; per-tool limits
    read the tools bridges have announced to the team (``ToolPin``), at most ``MAX_SUBJECTS_READ`` each.
    """
    limits = list(limits)
    tokens: list[tuple[int, str]] = []
    tools: list[tuple[str, str]] = []
    if any(limit.scope == RateLimit.Scope.TOKEN for limit in limits):
        tokens = list(
            BridgeToken.objects.filter(team=team, revoked_at__isnull=True)
            .order_by("-last_used_at", "pk")
            .values_list("pk", "name")[:MAX_SUBJECTS_READ]
        )
    if any(limit.scope == RateLimit.Scope.TOOL for limit in limits):
        tools = list(
            ToolPin.objects.filter(team=team).order_by("server", "tool").values_list("server", "tool")
        )
    wanted: dict[str, tuple[int, str]] = {}
    ends: dict[int, tuple[datetime, int]] = {}
    for limit in limits:
        compiled = CompiledLimit.of(limit)
        start, end = window_bounds(limit.window, now)
        subjects: list[tuple[str, str]]
        if limit.scope == RateLimit.Scope.TOKEN:
            subjects = [(str(pk), f"token “{name}”") for pk, name in tokens]
        elif limit.scope == RateLimit.Scope.TEAM:
            subjects = [(str(team.pk), "the team")]
        else:
            subjects = [(f"{s}/{t}", f"{s}/{t}") for s, t in tools if compiled.matches(server=s, tool=t)][
                :MAX_SUBJECTS_READ
            ]
        ends[limit.pk] = (end, len(subjects))
        for subject, label in subjects:
            key = counter_key(
                limit_id=limit.pk, scope=limit.scope, window=limit.window, start=start, subject=subject
            )
            wanted[key] = (limit.pk, label)
    try:
        found = cache.get_many(list(wanted)) if wanted else {}
    except Exception as error:  # the page says so; calls are denied meanwhile (limits_check)
        logger.warning("rate limit counters unreadable: %s: %s", type(error).__name__, error)
        return None
    usage = {pk: Usage(count=0, subject="", resets_at=end, subjects=n) for pk, (end, n) in ends.items()}
    for key, value in found.items():
        pk, label = wanted[key]
        count = int(value or 0)
        if count > usage[pk].count:
            end, n = ends[pk]
            usage[pk] = Usage(count=count, subject=label, resets_at=end, subjects=n)
    return usage

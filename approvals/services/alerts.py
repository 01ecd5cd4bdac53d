"""Alerts for a team's admins: raised by detectors, deduplicated while open, acknowledged by an admin.

The detectors (see docs/alerts.md):

* unusual call volume: one token made more than ``Team.alert_calls_per_token_hour`` calls in the last hour;
* a burst of denials: more than ``Team.alert_denials_per_10_minutes`` calls of the team were denied within
  ten minutes;
* a rate limit was hit (raised by the rate limits, through :func:`alert_raise`);
* a tool's definition changed, or a new tool appeared on a server the team already knew;
* a token was used from an address it was not used from before (not for its very first address);
* a bridge was refused for connecting from outside its token's (or team's) allowed networks.

Volume and denials are counted in the cache (Redis in production: ``incr`` is atomic across processes), in
a sliding window of two fixed buckets, so that no call pays for a ``COUNT`` query. The hooks the services
call (``alerts_*``) run their detector once the change they react to commits, in a transaction of its own:
an alert never holds a row lock inside a call's transaction (the audit chain's lock ordering), a detector
that fails is logged without failing the call, and nobody is alerted of something that was rolled back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet
from django.urls import reverse
from django.utils import timezone

from approvals import realtime
from approvals.masking import mask_json, mask_text
from approvals.models import Alert, BridgeToken, Team, ToolCall
from approvals.selectors import active_admins_of
from approvals.services.audit import audit_record

log = logging.getLogger(__name__)

VOLUME_WINDOW_SECONDS = 3600
DENIALS_WINDOW_SECONDS = 600
REPEAT_SECONDS = 60
"""While a threshold stays exceeded, the open alert counts up at most once a minute per token (or team):
a runaway agent must not turn every one of its calls into one more write."""
MAX_SEEN_ADDRESSES = 20
"""How many of a token's latest client addresses are remembered (``BridgeToken.seen_addresses``)."""


def alert_raise(
    *,
    team: Team,
    kind: str,
    key: str,
    message: str,
    data: dict[str, Any] | None = None,
    token: BridgeToken | None = None,
) -> tuple[Alert, bool]:
    """Open an alert, or count one more occurrence of the open alert with the same ``(kind, key)``.

    Returns the alert and whether it is new. Only a new alert is audited (``alert.raised``) and sent to the
    team's channels that subscribe to ``"alert"`` (once this transaction commits): repeats of an open one
    update its count and last-seen time, so a runaway loop cannot flood the log or the admins.

    May run inside a larger transaction that already holds the audit chain's lock (the rate limits raise
    theirs inside ``call_submit``): acknowledging takes the chain's lock before the alert's row, the same
    order, and counting up an open alert here takes no chain lock at all.
    """
    if kind not in Alert.Kind.values:
        raise ValueError(f"Unknown alert kind {kind!r}.")
    key = key[:200]
    now = timezone.now()
    with transaction.atomic():
        updated = Alert.objects.filter(team=team, kind=kind, key=key, state=Alert.State.OPEN).update(
            count=F("count") + 1, last_seen_at=now, message=message[:1000]
        )
        if updated:
            return Alert.objects.get(team=team, kind=kind, key=key, state=Alert.State.OPEN), False
        try:
            with transaction.atomic():  # a savepoint: another process may open the same alert meanwhile
                alert = Alert.objects.create(
                    team=team,
                    kind=kind,
                    key=key,
                    message=message[:1000],
                    data=data or {},
                    token=token,
                    created_at=now,
                    last_seen_at=now,
                )
        except IntegrityError:
            Alert.objects.filter(team=team, kind=kind, key=key, state=Alert.State.OPEN).update(
                count=F("count") + 1, last_seen_at=now
            )
            return Alert.objects.get(team=team, kind=kind, key=key, state=Alert.State.OPEN), False
        audit_record(
            kind="alert.raised", team=team, token=token, alert=alert.pk, alert_kind=kind, message=message
        )
        # robust: a channel that cannot be queued is logged; it must not fail whatever raised the alert.
        transaction.on_commit(lambda: _notify(alert), robust=True)
        _push_open_count_on_commit(team)
    return alert, True


def alerts_page_link(team: Team) -> str:
    """The team's Alerts page, as an absolute address for emails and webhooks."""
    return f"{settings.SIGNOFF_PUBLIC_URL}{reverse('approvals:alerts')}?team={team.slug}"


def alert_payload(alert: Alert) -> dict[str, Any]:
    """An alert as webhooks receive it. The message may quote untrusted names (servers, tools, addresses):
    receivers render it as text."""
    return {
        "id": alert.pk,
        "team": alert.team.slug,
        "kind": alert.kind,
        "kind_label": alert.get_kind_display(),
        "key": alert.key,
        "message": alert.message,
        "data": alert.data,
        "token_name": alert.token.name if alert.token else None,
        "token_prefix": alert.token.prefix if alert.token else None,
        "count": alert.count,
        "created_at": alert.created_at.isoformat(),
        "link": alerts_page_link(alert.team),
    }


def _notify(alert: Alert) -> None:
    from approvals.services.notifications import notify_team  # notifications may come to import services

    link = alerts_page_link(alert.team)
    notify_team(
        team=alert.team,
        event="alert",
        subject=f"[Signoff] {alert.team.name}: {alert.get_kind_display()}",
        # Messages leave the server: masked, as the notifications ask (a denial's reason quotes arguments).
        text=f"{mask_text(alert.message)}\n\nSee and acknowledge it: {link}",
        link=link,
        payload=mask_json(alert_payload(alert)),
    )


def _push_open_count_on_commit(team: Team) -> None:
    """Once the transaction commits, the admins' open queue pages show the team's new open-alert count."""

    def push() -> None:
        admin_ids = list(active_admins_of(team=team).values_list("user_id", flat=True))
        if admin_ids:
            realtime.open_alerts_changed(
                team_id=team.pk, admin_ids=admin_ids, open_count=open_alerts_count(team=team)
            )

    transaction.on_commit(push, robust=True)


# --- counting in the cache -----------------------------------------------------------------------------
def _identity(obj: Team | BridgeToken) -> str:
    """A cache key part for a team or token that a later row reusing its id does not share (SQLite reuses
    ids): a deleted team's or token's counts must not start a new one's above zero."""
    if isinstance(obj, BridgeToken):
        return f"token:{obj.pk}:{obj.prefix}"
    return f"team:{obj.pk}:{obj.created_at.timestamp():.6f}"


def window_count(key: str, *, window: int, now: datetime) -> int:
    """Count one event under ``key`` and return about how many there were in the last ``window`` seconds.

    Two fixed buckets make a sliding window: all of the current bucket plus the part of the previous one
    that the window still covers (assuming its events were spread evenly). Exact while the previous bucket
    is empty. Raises whatever the cache raises.
    """
    moment = now.timestamp()
    bucket = int(moment // window)
    current_key = f"signoff:alerts:{key}:{bucket}"
    try:
        current = cache.incr(current_key)
    except ValueError:  # the bucket's first event (or it was evicted)
        # Unless another process created it in between: then count on top of theirs.
        current = 1 if cache.add(current_key, 1, timeout=2 * window + 60) else cache.incr(current_key)
    previous = int(cache.get(f"signoff:alerts:{key}:{bucket - 1}", 0))
    covered = 1 - (moment % window) / window
    return current + int(previous * covered)


def _first_this_minute(key: str, *, now: datetime) -> bool:
    """True once per minute per key: the repeat throttle of an exceeded threshold."""
    minute = int(now.timestamp() // REPEAT_SECONDS)
    return bool(cache.add(f"signoff:alerts:{key}:raised:{minute}", 1, timeout=2 * REPEAT_SECONDS))


# --- the detectors -------------------------------------------------------------------------------------
def alert_check_volume(
    *, token: BridgeToken, team: Team, threshold: int, now: datetime | None = None
) -> Alert | None:
    """Count one call of ``token``; raise a ``volume`` alert when it made more than ``threshold`` calls in
    the last hour (0: off). Returns the alert raised or counted up, else None."""
    if threshold <= 0:
        return None
    now = now or timezone.now()
    key = _identity(token)
    calls = window_count(f"volume:{key}", window=VOLUME_WINDOW_SECONDS, now=now)
    if calls <= threshold or not _first_this_minute(f"volume:{key}", now=now):
        return None
    owner = token.user.get_username() if token.user_id else "?"
    alert, _ = alert_raise(
        team=team,
        kind=Alert.Kind.VOLUME,
        key=f"token:{token.pk}",
        message=(
            f"The token “{token.name}” (sgo_{token.prefix}_…) of {owner} made about {calls} calls in the "
            f"last hour: more than this team's threshold of {threshold}."
        ),
        data={"token_prefix": token.prefix, "calls": calls, "threshold": threshold},
        token=token,
    )
    return alert


def alert_check_denials(
    *, team: Team, threshold: int, latest: ToolCall | None = None, now: datetime | None = None
) -> Alert | None:
    """Count one denied call of ``team``; raise a ``denials`` alert when more than ``threshold`` were denied
    within ten minutes (0: off). ``latest`` is the call just denied, quoted in the message."""
    if threshold <= 0:
        return None
    now = now or timezone.now()
    key = _identity(team)
    denials = window_count(f"denials:{key}", window=DENIALS_WINDOW_SECONDS, now=now)
    if denials <= threshold or not _first_this_minute(f"denials:{key}", now=now):
        return None
    message = (
        f"About {denials} calls were denied in the last 10 minutes: more than this team's threshold of "
        f"{threshold}."
    )
    data: dict[str, Any] = {"denials": denials, "threshold": threshold}
    if latest is not None:
        message += f" The latest: {latest.server}/{latest.tool}, {mask_text(latest.reason)}"
        data["latest_call"] = str(latest.pk)
    alert, _ = alert_raise(
        team=team,
        kind=Alert.Kind.DENIALS,
        key="team",
        message=message,
        data=data,  # no token: the burst is the team's, whichever tokens it came from
    )
    return alert


def alert_tool_changed(*, team: Team, server: str, tool: str, tool_hash: str, added: bool) -> Alert:
    """Raise a ``tool_changed`` alert: the tool's definition changed since it was approved, or the tool is
    new on a server the team already knew (its calls are held until an admin accepts it either way)."""
    if added:
        message = (
            f"A new tool “{tool}” appeared on the known server “{server}”: its calls are held for a human "
            "until an admin accepts it."
        )
    else:
        message = (
            f"The tool “{tool}” on the server “{server}” changed its definition since it was approved: its "
            "calls are held for a human until an admin accepts the new one."
        )
    alert, _ = alert_raise(
        team=team,
        kind=Alert.Kind.TOOL_CHANGED,
        key=f"{server}/{tool}",
        message=message,
        data={"server": server, "tool": tool, "hash": tool_hash, "added": added},
    )
    return alert


def alert_new_address(*, token: BridgeToken, address: str, seen: Sequence[str]) -> Alert:
    """Raise a ``new_address`` alert: the token was used from ``address``, not among those ``seen``."""
    owner = token.user.get_username() if token.user_id else "?"
    before = ", ".join(list(seen)[-3:])
    alert, _ = alert_raise(
        team=token.team,
        kind=Alert.Kind.NEW_ADDRESS,
        key=f"token:{token.pk}:{address}",
        message=(
            f"The token “{token.name}” (sgo_{token.prefix}_…) of {owner} was used from a new address, "
            f"{address} (before: {before}). Revoke it if that was not them."
        ),
        data={"token_prefix": token.prefix, "address": address, "seen": list(seen)},
        token=token,
    )
    return alert


def alert_network_refused(*, token: BridgeToken, address: str) -> Alert:
    """Raise a ``network`` alert: a bridge with ``token`` tried to connect from ``address``, outside the
    networks it may connect from. Repeats from the same token and address count up the open alert."""
    owner = token.user.get_username() if token.user_id else "?"
    alert, _ = alert_raise(
        team=token.team,
        kind=Alert.Kind.NETWORK,
        key=f"token:{token.pk}:{address}",
        message=(
            f"The token “{token.name}” (sgo_{token.prefix}_…) of {owner} was refused: a bridge tried to "
            f"connect from {address}, outside the networks it may connect from. Revoke the token if that was "
            "not them; allow the address (team settings, or the token's networks) if it was."
        ),
        data={"token_prefix": token.prefix, "address": address},
        token=token,
    )
    return alert


# --- hooks for the services: each runs its detector once the caller's transaction commits --------------
def alerts_call_recorded(*, call: ToolCall) -> None:
    """A new call was recorded (any outcome): count it for its token's volume, and a denial for its team.

    Reads the thresholds from ``call.team`` as the caller loaded it (``call_submit`` refreshes them with
    the token's row): no query of its own.
    """
    team, token = call.team, call.token
    volume, denials = team.alert_calls_per_token_hour, team.alert_denials_per_10_minutes
    denied = call.state == ToolCall.State.DENIED
    if volume <= 0 and (not denied or denials <= 0):
        return

    def detect() -> None:
        alert_check_volume(token=token, team=team, threshold=volume)
        if denied:
            alert_check_denials(team=team, threshold=denials, latest=call)

    transaction.on_commit(detect, robust=True)


def alerts_result_inspected(*, call: ToolCall, findings: list[dict[str, Any]]) -> None:
    """A result came back with findings: instructions aimed at the model or hidden text alert the admins
    (secrets and personal data are recorded on the call, and are not alone a sign of an attack)."""
    suspicious = [finding for finding in findings if finding["kind"] in ("instruction", "hidden_text")]
    if suspicious:
        transaction.on_commit(lambda: alert_suspicious_result(call=call, findings=suspicious), robust=True)


_RESULT_ACTION_TEXT = {
    "pass": "The model read it: check the call and what it did next.",
    "mask": "The bridge masked it before the model read the result.",
    "block": "The bridge withheld the result from the model.",
}


def alert_suspicious_result(*, call: ToolCall, findings: list[dict[str, Any]]) -> Alert:
    """Raise (or count up) the ``result`` alert of the call's server and tool."""
    detectors = sorted({finding["detector"] for finding in findings})
    first = findings[0]
    alert, _ = alert_raise(
        team=call.team,
        kind=Alert.Kind.RESULT,
        key=f"{call.server}:{call.tool}",
        message=(
            f"A result of {call.server} / {call.tool} holds what looks like instructions aimed at the model "
            f"or hidden text ({', '.join(detectors)}), e.g. “{first['excerpt'][:160]}”. "
            + _RESULT_ACTION_TEXT.get(call.result_action, _RESULT_ACTION_TEXT["pass"])
        ),
        data={"call": str(call.pk), "server": call.server, "tool": call.tool, "detectors": detectors},
        token=call.token,
    )
    return alert


def alerts_call_denied(*, call: ToolCall) -> None:
    """A held call was denied (by a reviewer): count it for its team's burst of denials."""
    threshold = call.team.alert_denials_per_10_minutes
    if threshold > 0:
        transaction.on_commit(
            lambda: alert_check_denials(team=call.team, threshold=threshold, latest=call), robust=True
        )


def alerts_tool_changed(*, team: Team, server: str, tool: str, tool_hash: str, added: bool) -> None:
    """A tool's definition changed, or a tool appeared on a known server (``tools_seen``)."""
    transaction.on_commit(
        lambda: alert_tool_changed(team=team, server=server, tool=tool, tool_hash=tool_hash, added=added),
        robust=True,
    )


def alerts_address_seen(*, token: BridgeToken, address: str, seen: Sequence[str]) -> None:
    """The token was used from ``address``, which is not among the addresses it was ``seen`` from (those it
    was used from before; nothing is raised for a token's first address)."""
    if seen and address not in seen:
        before = list(seen)
        transaction.on_commit(
            lambda: alert_new_address(token=token, address=address, seen=before), robust=True
        )


def seen_addresses_after(seen: Sequence[str], address: str) -> list[str]:
    """The token's remembered addresses once it was used from ``address``: that one last (the most
    recent), at most ``MAX_SEEN_ADDRESSES`` of them (the oldest forgotten first)."""
    kept = [known for known in seen if known != address]
    return [*kept, address][-MAX_SEEN_ADDRESSES:]


# --- reading and acknowledging -------------------------------------------------------------------------
def alerts_for(*, team: Team, state: str | None = None) -> QuerySet[Alert]:
    """The team's alerts, open ones first, then the most recently seen; ``state`` keeps one state only."""
    alerts = Alert.objects.select_related("token", "token__user", "acknowledged_by").filter(team=team)
    if state is not None:
        alerts = alerts.filter(state=state)
    # "open" sorts after "acknowledged": descending puts the open ones first.
    return alerts.order_by("-state", "-last_seen_at", "-pk")


def open_alerts_count(*, team: Team) -> int:
    """How many of the team's alerts are open (the nav's badge)."""
    return Alert.objects.filter(team=team, state=Alert.State.OPEN).count()


def alert_acknowledge(*, alert: Alert, by: AbstractBaseUser) -> bool:
    """An admin has seen the alert: it closes, and the next occurrence of its kind and key opens a new one.

    Audited (``alert.acknowledged``). False when it was no longer open.
    """
    with transaction.atomic():
        acknowledged = _acknowledge(alert, by=by, now=timezone.now(), every=False)
        if acknowledged:
            _push_open_count_on_commit(alert.team)
        return acknowledged


def alerts_acknowledge_all(*, team: Team, by: AbstractBaseUser) -> int:
    """Acknowledge every open alert of the team; each is audited. Returns how many."""
    now = timezone.now()
    with transaction.atomic():
        # No row locks up front: _acknowledge takes the audit chain's lock before each alert's (see there).
        alerts = list(
            Alert.objects.select_related("team", "token")
            .filter(team=team, state=Alert.State.OPEN)
            .order_by("pk")
        )
        acknowledged = sum(_acknowledge(alert, by=by, now=now, every=True) for alert in alerts)
        if acknowledged:
            _push_open_count_on_commit(team)
        return acknowledged


def alert_acknowledge_tool_accepted(*, team: Team, server: str, tool: str, by: AbstractBaseUser) -> bool:
    """An admin accepted the tool's new definition: its open ``tool_changed`` alert has been dealt with.

    Acknowledged in the caller's transaction, audited like any acknowledgement. False when none was open.
    """
    alert = (
        Alert.objects.select_related("team", "token")
        .filter(team=team, kind=Alert.Kind.TOOL_CHANGED, key=f"{server}/{tool}", state=Alert.State.OPEN)
        .first()
    )
    if alert is None or not _acknowledge(alert, by=by, now=timezone.now(), every=False):
        return False
    _push_open_count_on_commit(team)
    return True


class _NoLongerOpen(Exception):
    """Someone acknowledged the alert first: roll back this acknowledgement's audit event."""


def _acknowledge(alert: Alert, *, by: AbstractBaseUser, now: datetime, every: bool) -> bool:
    """Close one open alert, audited. The audit chain's lock is taken before the alert's row: a call's
    transaction holds the chain's lock when a rate limit counts up its open alert (``alert_raise``), and
    the other order could deadlock with it."""
    try:
        with (
            transaction.atomic()
        ):  # a savepoint, undone with its audit event if the alert was closed meanwhile
            audit_record(
                kind="alert.acknowledged",
                team=alert.team,
                actor_id=by.pk,
                token=alert.token,
                alert=alert.pk,
                alert_kind=alert.kind,
                message=alert.message,
                count=alert.count,
                all=every,
            )
            changed = Alert.objects.filter(pk=alert.pk, state=Alert.State.OPEN).update(
                state=Alert.State.ACKNOWLEDGED, acknowledged_by=by.pk, acknowledged_at=now
            )
            if not changed:
                raise _NoLongerOpen
    except _NoLongerOpen:
        return False
    alert.state, alert.acknowledged_by_id, alert.acknowledged_at = Alert.State.ACKNOWLEDGED, by.pk, now
    return True

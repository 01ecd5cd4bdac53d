"""A held call's life: submitted by a bridge, decided by a rule, a reviewer or a deadline, then run once.

Every transition is one conditional UPDATE (``WHERE state = …``): the first decision wins, a call is
never released twice, and an audit event is written in the same transaction.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, User
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from approvals import access, guards, metrics, policy, realtime, scopes
from approvals.models import BridgeToken, Rule, Team, ToolCall, ToolPin
from approvals.scopes import Scope
from approvals.services import limits
from approvals.services.alerts import alerts_call_denied, alerts_call_recorded, alerts_result_inspected
from approvals.services.audit import audit_record
from approvals.services.notifications import notify_call_held
from approvals.services.rows import row_insert
from approvals.services.rules import RuleInvalid, rule_create, rule_spec
from approvals.services.server_review import approval_refusal
from approvals.services.tokens import scope_text, server_in_scope
from approvals.services.tools import tool_pin_accept
from mcpbridge.protocol import arguments_hash

State = ToolCall.State


class CallNotFound(Exception):
    """No such call for this token (or the id is malformed): forged and foreign ids end here."""


class TokenUnusable(Exception):
    """The token was revoked or expired, or its owner deactivated, since the bridge connected."""


class CallAlreadyDecided(Exception):
    """The call left the pending state before this decision arrived."""

    def __init__(self, call: ToolCall) -> None:
        super().__init__(f"This call was already {call.state}.")
        self.call = call


@dataclass(frozen=True)
class Submitted:
    """A bridge's call as the server took it: the call, and whether the bridge may run it now."""

    call: ToolCall
    run: bool
    reattached: bool


def calls_with_relations() -> QuerySet[ToolCall]:
    """Calls with every relation that answers and events read: async callers (consumers) get a call
    they can read without a lazy query, which they may not run. The rule too: an allowed call's answer
    carries its rule's result policy."""
    return ToolCall.objects.select_related("team", "token", "requester", "decided_by", "rule")


def _call_key(call_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(call_id)
    except (ValueError, TypeError, AttributeError):
        raise CallNotFound(call_id) from None


def call_get(call_id: str, **filters: Any) -> ToolCall:
    """The call with its relations (``calls_with_relations``), narrowed by ``filters`` (its token, say);
    raises CallNotFound for a malformed id, another token's call or no call at all."""
    call = calls_with_relations().filter(pk=_call_key(call_id), **filters).first()
    if call is None:
        raise CallNotFound(call_id)
    return call


@dataclass(frozen=True)
class _TokenState:
    """What ``call_submit`` reads of a token before each decision: one row, read by ``_token_state``."""

    revoked: bool
    expired: bool
    user_active: bool
    servers: list[str]
    mode: str
    rules_version: int
    default_deadline_seconds: int
    four_eyes: bool
    alert_calls_per_token_hour: int
    alert_denials_per_10_minutes: int
    result_instructions: str
    result_secrets: str
    result_personal_data: str
    require_reviewed_servers: bool
    held: bool
    """Whether an identical call is held, or allowed and not run (read without a lock: locked if so)."""
    pin_hash: str | None
    """The tool's approved hash: None without a pin, "" for a new tool an admin has not accepted yet."""


_TEAM_SETTINGS = (
    "mode",
    "rules_version",
    "default_deadline_seconds",
    "four_eyes",
    "alert_calls_per_token_hour",
    "alert_denials_per_10_minutes",
    "result_instructions",
    "result_secrets",
    "result_personal_data",
    "require_reviewed_servers",
)
_TOKEN_STATE_SQL: dict[str, str] = {}
"""Per database vendor: ``_token_state``'s statement, written once from the models' tables and columns."""


def _token_state_sql() -> str:
    """One statement for the token, its owner, its team's settings, an identical held call and the tool's pin.

    Plain SQL: this runs before every decision, and the ORM spent ~2 ms compiling the same query with its
    joins and subqueries (docs/performance.md), against ~0.1 ms to run it.
    """
    sql = _TOKEN_STATE_SQL.get(connection.vendor)
    if sql is not None:
        return sql
    quote = connection.ops.quote_name

    def column(model: Any, field: str) -> str:
        return quote(model._meta.get_field(field).column)

    user_model = BridgeToken._meta.get_field("user").related_model
    team_columns = ", ".join(f"m.{column(Team, name)}" for name in _TEAM_SETTINGS)
    sql = (
        f"SELECT t.{column(BridgeToken, 'revoked_at')} IS NOT NULL,"  # noqa: S608 (names from the models)
        f" t.{column(BridgeToken, 'expires_at')} IS NOT NULL AND t.{column(BridgeToken, 'expires_at')} <= %s,"
        f" u.{column(user_model, 'is_active')}, t.{column(BridgeToken, 'servers')}, {team_columns},"
        f" (SELECT c.{column(ToolCall, 'id')} FROM {quote(ToolCall._meta.db_table)} c"
        f" WHERE c.{column(ToolCall, 'token')} = t.{column(BridgeToken, 'id')}"
        f" AND c.{column(ToolCall, 'server')} = %s AND c.{column(ToolCall, 'tool')} = %s"
        f" AND c.{column(ToolCall, 'arguments_hash')} = %s AND c.{column(ToolCall, 'tool_hash')} = %s"
        f" AND c.{column(ToolCall, 'state')} IN (%s, %s) AND c.{column(ToolCall, 'started_at')} IS NULL"
        f" AND c.{column(ToolCall, 'deadline')} > %s LIMIT 1),"
        f" (SELECT p.{column(ToolPin, 'approved_hash')} FROM {quote(ToolPin._meta.db_table)} p"
        f" WHERE p.{column(ToolPin, 'team')} = t.{column(BridgeToken, 'team')}"
        f" AND p.{column(ToolPin, 'server')} = %s AND p.{column(ToolPin, 'tool')} = %s)"
        f" FROM {quote(BridgeToken._meta.db_table)} t"
        f" JOIN {quote(Team._meta.db_table)} m ON m.{column(Team, 'id')} = t.{column(BridgeToken, 'team')}"
        f" JOIN {quote(user_model._meta.db_table)} u"
        f" ON u.{column(user_model, 'id')} = t.{column(BridgeToken, 'user')}"
        f" WHERE t.{column(BridgeToken, 'id')} = %s"
    )
    _TOKEN_STATE_SQL[connection.vendor] = sql
    return sql


def _token_state(
    *, token_id: int, server: str, tool: str, arguments_hash: str, tool_hash: str, now: datetime
) -> _TokenState | None:
    """The token's state as the database holds it now, for ``call_submit``; None when the token is gone."""
    at = connection.ops.adapt_datetimefield_value(now)
    held = [server, tool, arguments_hash, tool_hash, State.PENDING.value, State.ALLOWED.value, at]
    with connection.cursor() as cursor:
        cursor.execute(_token_state_sql(), [at, *held, server, tool, token_id])
        found = cursor.fetchone()
    if found is None:
        return None
    revoked, expired, active, servers, *settings, held_id, pin_hash = found
    team = dict(zip(_TEAM_SETTINGS, settings, strict=True))
    return _TokenState(
        revoked=bool(revoked),
        expired=bool(expired),
        user_active=bool(active),
        # JSON comes back as text from both databases (Django has psycopg leave jsonb undecoded).
        servers=json.loads(servers) if servers else [],
        mode=team["mode"],
        rules_version=int(team["rules_version"]),
        default_deadline_seconds=int(team["default_deadline_seconds"]),
        four_eyes=bool(team["four_eyes"]),
        alert_calls_per_token_hour=int(team["alert_calls_per_token_hour"]),
        alert_denials_per_10_minutes=int(team["alert_denials_per_10_minutes"]),
        result_instructions=team["result_instructions"],
        result_secrets=team["result_secrets"],
        result_personal_data=team["result_personal_data"],
        require_reviewed_servers=bool(team["require_reviewed_servers"]),
        held=held_id is not None,
        pin_hash=pin_hash,
    )


def call_submit(
    *,
    token: BridgeToken,
    server: str,
    tool: str,
    arguments: dict[str, Any],
    tool_hash: str | None,
    input_schema: dict[str, Any] | None = None,
    annotations: dict[str, Any] | None = None,
    timeout: int | None = None,
) -> Submitted:
    """Take a call from a bridge: re-attach to the same held call, or decide it by policy, or hold it.

    ``tool_hash`` is None when the bridge's upstream does not offer the tool: such a call is denied.
    Arguments are checked by the guards first (against ``input_schema`` when the bridge sent it): a
    blocking finding denies the call with its reason; warnings go to the reviewer.
    An identical call (same token, server, tool and arguments) that is still held or allowed-but-not-run
    is the same call: the bridge re-attaches to it, so a client that timed out and repeats the call
    continues the wait, and an allowed call runs exactly once.
    """
    team = token.team
    args_hash = arguments_hash(arguments)
    now = timezone.now()
    with transaction.atomic():
        # The database is the truth: a revocation counts even if its broadcast was lost.
        row = _token_state(
            token_id=token.pk,
            server=server,
            tool=tool,
            arguments_hash=args_hash,
            tool_hash=tool_hash or "",
            now=now,
        )
        if row is None or row.revoked or row.expired or not row.user_active:
            raise TokenUnusable()
        # Reviewers' pages read the setting from the call's team: as fresh as the rest of this decision.
        team.four_eyes = row.four_eyes
        # The alert thresholds too, read with the rest: the volume and denial detectors add no query.
        team.alert_calls_per_token_hour = row.alert_calls_per_token_hour
        team.alert_denials_per_10_minutes = row.alert_denials_per_10_minutes
        # And what the bridge does with the result's findings, sent with an allowed decision.
        team.result_instructions = row.result_instructions
        team.result_secrets = row.result_secrets
        team.result_personal_data = row.result_personal_data
        # Defence in depth: the bridge was refused at its hello, but the scope may have changed since.
        in_scope = server_in_scope(row.servers, server)
        # The team lets its bridges use only servers an admin approved (docs/inventory.md).
        unapproved = (
            approval_refusal(token=token, server=server)
            if in_scope and row.require_reviewed_servers
            else None
        )
        # Nearly every call is new; one that is held already is read again, its row locked this time.
        existing_id = None
        if row.held:
            existing_id = (
                ToolCall.objects.select_for_update()
                .filter(
                    token=token,
                    server=server,
                    tool=tool,
                    arguments_hash=args_hash,
                    # An approval is bound to the tool as it was: a changed or vanished tool is a new call.
                    tool_hash=tool_hash or "",
                    state__in=[State.PENDING, State.ALLOWED],
                    started_at__isnull=True,
                    deadline__gt=now,
                )
                .order_by("created_at")
                .values_list("pk", flat=True)
                .first()
            )
        # Out of scope or unapproved, even a call held before is not run.
        if existing_id is not None and in_scope and unapproved is None:
            existing = calls_with_relations().get(pk=existing_id)
            run = existing.state == State.ALLOWED and _claim(existing, now=now)
            return Submitted(existing, run=run, reattached=True)

        findings: list[guards.Finding] = []
        risks: list[dict[str, str]] = []
        hit: limits.LimitHit | None = None
        decider: Rule | None = None  # the allow rule that allowed it, whose result policy its answer carries
        if not in_scope:
            verdict = policy.Verdict(
                "deny",
                f"denied: the token “{token.name}” may only front {scope_text(row.servers)}, "
                f"not the server '{server}'",
            )
        elif unapproved is not None:
            verdict = policy.Verdict("deny", unapproved)
        elif tool_hash is None:
            verdict = policy.Verdict("deny", f"denied: the server '{server}' has no tool named '{tool}'")
        else:
            findings = guards.inspect_arguments(arguments=arguments, input_schema=input_schema)
            blocks = [finding for finding in findings if finding.severity == "block"]
            if blocks:
                verdict = policy.Verdict("deny", _invalid_input_reason(blocks))
            # Rate limits count after the guards (a refused input is not counted) and before the rules (a
            # call a rule allows is still limited); a re-attached call returned above, counted once.
            elif (
                hit := limits.limits_check(
                    team=team,
                    token=token,
                    server=server,
                    tool=tool,
                    now=now,
                    version=row.rules_version,
                )
            ) is not None:
                verdict = policy.Verdict("deny", hit.reason)
            else:
                rules = team_ruleset(team.pk, version=row.rules_version)
                verdict = rules.ruleset.evaluate(
                    server=server, tool=tool, arguments=arguments, mode=row.mode, now=now
                )
                if (
                    verdict.outcome == "allow"
                    and row.four_eyes
                    and verdict.rule_id is not None
                    and rules.creators.get(verdict.rule_id) == token.user_id
                ):
                    # Four eyes: a rule is its creator's approval, and nobody approves their own call.
                    verdict = policy.Verdict(
                        "review",
                        f"held: four eyes: rule #{verdict.rule_id}, which would allow it, was created by the "
                        "requester; another reviewer must approve",
                    )
                risks = [
                    {"kind": f.kind, "severity": f.severity, "pointer": f.pointer, "message": f.message}
                    for f in findings
                ]
                risks += _annotation_risks(annotations or {})
                # The pin's whole row (both definitions, for the reviewer) only when it is not as approved.
                unpinned = row.pin_hash is not None and row.pin_hash != tool_hash
                pin = (
                    ToolPin.objects.filter(team=team, server=server, tool=tool).first() if unpinned else None
                )
                if pin is not None and pin.approved_hash != tool_hash:
                    risks.insert(0, _tool_change_risk(pin))
                    if verdict.outcome == "allow":
                        verdict = policy.Verdict(
                            "review", f"held: {risks[0]['message']} (a rule would allow it)"
                        )
                if verdict.outcome == "allow" and verdict.rule_id is not None:
                    decider = rules.allow_rules.get(verdict.rule_id)

        seconds = row.default_deadline_seconds
        if timeout:
            seconds = min(seconds, timeout)
        state = {"allow": State.ALLOWED, "deny": State.DENIED, "review": State.PENDING}[verdict.outcome]
        decided = verdict.outcome != "review"
        call = ToolCall(
            team=team,
            token=token,
            requester=token.user,
            server=server,
            tool=tool,
            arguments=arguments,
            arguments_hash=args_hash,
            tool_hash=tool_hash or "",
            risks=risks,
            state=state,
            reason=verdict.reason,
            deadline=now + timedelta(seconds=seconds),
            created_at=now,
            decided_at=now if decided else None,
            decided_via=(ToolCall.DecidedVia.RULE if verdict.rule_id else ToolCall.DecidedVia.SYSTEM)
            if decided
            else "",
            rule_id=verdict.rule_id,
            # An automatic allow is handed to the bridge in this very answer: it is claimed now.
            started_at=now if state == State.ALLOWED else None,
        )
        row_insert(call)  # on every call: without the ORM's compiling
        call.token = token
        call.requester = token.user
        if decider is not None:  # its row from the compiled rules: the answer reads it without a query
            call.rule = decider
        limited: dict[str, Any] = {"rate_limit": hit.limit.id if hit.limit else "unavailable"} if hit else {}
        # Which result policy its bridge applies: the team's, with its rule's overrides.
        applied: dict[str, Any] = {"result_policy": call.result_policy()} if state == State.ALLOWED else {}
        audit_record(
            kind=f"call.{state}",
            team=team,
            token=token,
            call=call,
            server=server,
            tool=tool,
            arguments_hash=args_hash,
            reason=verdict.reason,
            rule=verdict.rule_id,
            **applied,
            **limited,
        )
        if hit is not None:
            limits.limit_hit_record(hit=hit, call=call)
        alerts_call_recorded(call=call)  # volume and denial alerts, on commit
        if state == State.PENDING:
            realtime.call_changed(call)
            # Held for a human: the team's call.held channels hear of it once this commits.
            notify_call_held(call)
    return Submitted(call, run=state == State.ALLOWED, reattached=False)


def _invalid_input_reason(blocks: list[guards.Finding]) -> str:
    first = blocks[0]
    where = f" at {first.pointer}" if first.pointer else ""
    more = f" (and {len(blocks) - 1} more)" if len(blocks) > 1 else ""
    return f"denied: invalid input{where}: {first.message}{more}"[:900]


def _tool_change_risk(pin: ToolPin) -> dict[str, Any]:
    """The reviewer's warning for an unapproved tool definition, with the old and new definition."""
    message = (
        "a new tool on a known server: an admin has not accepted it yet"
        if not pin.approved_hash
        else "the tool's definition changed since it was approved"
    )
    return {
        "kind": "tool_changed",
        "severity": "warn",
        "pointer": "",
        "message": message,
        "before": pin.approved_definition,
        "after": pin.current_definition,
    }


_ANNOTATION_RISKS = {
    "destructiveHint": "the tool says it may destroy or overwrite data",
    "openWorldHint": "the tool says it reaches the outside world",
}


def _annotation_risks(annotations: dict[str, Any]) -> list[dict[str, str]]:
    """The tool's own annotations, as badges for the reviewer."""
    risks = [
        {"kind": name, "severity": "info", "pointer": "", "message": message}
        for name, message in _ANNOTATION_RISKS.items()
        if annotations.get(name) is True
    ]
    if annotations.get("readOnlyHint") is True:
        risks.append({"kind": "readOnlyHint", "severity": "info", "pointer": "", "message": "read-only"})
    return risks


@dataclass(frozen=True)
class TeamRules:
    """A team's compiled rules, who created each (with four eyes, no rule approves its creator's calls)."""

    ruleset: policy.RuleSet
    creators: dict[int, int | None]
    allow_rules: dict[int, Rule]
    """The allow rules' rows by id, read only: a call one allows gets it as ``call.rule`` without a query,
    for the result policy its answer carries (``ToolCall.result_policy``)."""


_RULESETS: dict[int, tuple[int, TeamRules]] = {}
"""Per process: each team's compiled rules, with the ``rules_version`` they were built at."""


def team_ruleset(team_id: int, *, version: int) -> TeamRules:
    """The team's enabled rules, compiled, in creation order; rebuilt when ``version`` moved.

    A rule that no longer parses denies every call it could match (fail closed), so a broken rule never
    widens what is allowed.
    """
    cached = _RULESETS.get(team_id)
    if cached is not None and cached[0] == version:
        return cached[1]
    rules = list(Rule.objects.filter(team_id=team_id, enabled=True).order_by("id"))
    compiled = TeamRules(
        ruleset=policy.compile_rules([rule_spec(rule) for rule in rules]),
        creators={rule.pk: rule.created_by_id for rule in rules},
        allow_rules={rule.pk: rule for rule in rules if rule.effect == Rule.Effect.ALLOW},
    )
    _RULESETS[team_id] = (version, compiled)
    return compiled


def _claim(call: ToolCall, *, now: Any) -> bool:
    claimed = ToolCall.objects.filter(pk=call.pk, state=State.ALLOWED, started_at__isnull=True).update(
        started_at=now
    )
    if claimed:
        call.started_at = now
        audit_record(kind="call.started", team=call.team, token=call.token, call=call)
    return bool(claimed)


def call_claim(*, token: BridgeToken, call_id: str) -> tuple[ToolCall, bool]:
    """Hand the right to run an allowed call to the bridge asking. True for exactly one claim.

    A claim after the call's deadline expires it instead: the deadline holds even when no sweep ran (the
    Celery worker or beat down), so an allowed call never starts after its deadline.
    """
    now = timezone.now()
    with transaction.atomic():
        call = call_get(call_id, token=token)
        if call.state != State.ALLOWED or call.started_at is not None:
            return call, False
        # As at submit: the token must still be usable; it may have expired since the call was allowed.
        usable = (
            BridgeToken.objects.filter(pk=token.pk, revoked_at__isnull=True, user__is_active=True)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
            .exists()
        )
        if not usable:
            raise TokenUnusable()
        if call.deadline <= now:
            _expire(call, now=now)
            call.refresh_from_db(from_queryset=calls_with_relations())
            return call, False
        return call, _claim(call, now=now)


def call_report_result(
    *,
    token: BridgeToken,
    call_id: str,
    is_error: bool,
    summary: str,
    duration_ms: int,
    findings: list[dict[str, Any]] | None = None,
    action: str | None = None,
) -> ToolCall:
    """Record what the upstream answered to a call the bridge ran, and what the bridge's inspection found
    in it (``mcpbridge.inspection``): instructions aimed at the model or hidden text alert the admins."""
    findings = findings or []
    now = timezone.now()
    key = _call_key(call_id)
    state = State.FAILED if is_error else State.COMPLETED
    with transaction.atomic():
        # Update first, read once: this runs after every call a bridge ran, so it is kept to one read.
        changed = ToolCall.objects.filter(
            pk=key, token=token, state=State.ALLOWED, started_at__isnull=False
        ).update(
            state=state,
            finished_at=now,
            result_summary=summary[:2000],
            duration_ms=duration_ms,
            result_findings=findings,
            result_action=action or "",
        )
        if not changed:
            # A refusal answers with the call's decision, whose result policy reads its rule.
            call = ToolCall.objects.select_related("decided_by", "rule").filter(pk=key, token=token).first()
            if call is None:
                raise CallNotFound(call_id)
            call.token, call.team = token, token.team
            raise CallAlreadyDecided(call)
        call = _reported_call(key)
        # The team and token are the reporting token's own.
        call.token, call.team = token, token.team
        if call.result_review == ToolCall.ResultReview.HELD:
            call = calls_with_relations().get(pk=key)  # rare: its queue entry is redrawn from all of it
        extra: dict[str, Any] = {"findings": finding_counts(findings), "action": action} if findings else {}
        audit_record(
            kind=f"call.{state}",
            team=call.team,
            token=token,
            call=call,
            is_error=is_error,
            duration_ms=duration_ms,
            summary=summary[:500],
            **extra,
        )
        if findings:
            alerts_result_inspected(call=call, findings=findings)
        if call.result_review == ToolCall.ResultReview.HELD:
            _close_held_result(call, now=now)
    return call


_REPORTED_FIELDS = (
    "id",
    "team_id",
    "token_id",
    "server",
    "tool",
    "state",
    "reason",
    "deadline",
    "decided_by_id",
    "rule_id",
    "result_action",
    "result_review",
    "result_deadline",
)
"""What the answer to a result report, its audit event and its alerts read of the call."""
_REPORTED_SQL: dict[str, tuple[str, list[tuple[str, Any, list[Any]]]]] = {}
"""Per database vendor: ``_reported_call``'s statement, and each column's field name, expression and
converters."""


def _reported_call(key: uuid.UUID) -> ToolCall:
    """The call a result was just recorded for, with the fields its answer reads (the others deferred) and
    who decided it.

    Plain SQL, converted by the fields' own converters: this runs after every call a bridge ran, and the
    ORM spent ~1.4 ms compiling the query with its joins, against ~0.1 ms to run it.
    """
    prepared = _REPORTED_SQL.get(connection.vendor)
    if prepared is None:
        table = ToolCall._meta.db_table
        # In the model's field order, as ``Model.from_db`` takes them.
        fields = [field for field in ToolCall._meta.concrete_fields if field.attname in _REPORTED_FIELDS]
        columns = []
        for field in fields:
            column = field.get_col(table)
            converters = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
            columns.append((field.attname, column, converters))
        quote = connection.ops.quote_name
        sql = (
            f"SELECT {', '.join(quote(str(field.column)) for field in fields)} FROM {quote(table)}"  # noqa: S608
            f" WHERE {quote(str(ToolCall._meta.pk.column))} = %s"
        )
        prepared = _REPORTED_SQL[connection.vendor] = (sql, columns)
    sql, columns = prepared
    with connection.cursor() as cursor:
        cursor.execute(sql, [ToolCall._meta.pk.get_db_prep_value(key, connection)])
        found = cursor.fetchone()
    values = []
    for (_name, column, converters), value in zip(columns, found, strict=True):
        for convert in converters:
            value = convert(value, column, connection)
        values.append(value)
    call = ToolCall.from_db(connection.alias, [name for name, _, _ in columns], values)
    if call.decided_by_id is not None:  # a reviewer allowed it: the answer names them
        call.decided_by = User.objects.get(pk=call.decided_by_id)
    return call


def _close_held_result(call: ToolCall, *, now: Any) -> None:
    """The bridge settled a result that was still held (it lost Signoff for too long, or its deadline
    passed first): it blocked it, so the review is over; the queue drops it."""
    reason = "the bridge stopped waiting for the review and blocked the result"
    if ToolCall.objects.filter(pk=call.pk, result_review=ToolCall.ResultReview.HELD).update(
        result_review=ToolCall.ResultReview.EXPIRED, result_reviewed_at=now, result_review_reason=reason
    ):
        call.result_review = ToolCall.ResultReview.EXPIRED
        audit_record(kind="call.result_expired", team=call.team, token=call.token, call=call, reason=reason)
        realtime.call_changed(call)


def finding_counts(findings: list[dict[str, Any]]) -> dict[str, int]:
    """How many findings of each kind (``instruction``, ``hidden_text``, ``secret``, ``pii``)."""
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding["kind"]] = counts.get(finding["kind"], 0) + 1
    return counts


def call_withdraw(*, token: BridgeToken, call_id: str, reason: str) -> ToolCall:
    """The client gave up on a held call: cancel it unless it was already decided or run."""
    now = timezone.now()
    with transaction.atomic():
        call = call_get(call_id, token=token)
        changed = ToolCall.objects.filter(
            pk=call.pk, state__in=[State.PENDING, State.ALLOWED], started_at__isnull=True
        ).update(state=State.CANCELLED, reason=reason or "cancelled by the client", finished_at=now)
        call.refresh_from_db(from_queryset=calls_with_relations())
        if changed:
            audit_record(kind="call.cancelled", team=call.team, token=token, call=call, reason=call.reason)
            realtime.call_changed(call)
    return call


def call_decide(
    *,
    call_id: str,
    reviewer: AbstractBaseUser,
    allow: bool,
    reason: str = "",
    always_allow: bool = False,
    scope: Scope = "tool",
    constraints: list[dict[str, Any]] | None = None,
) -> ToolCall:
    """A reviewer's decision. Raises PermissionDenied, CallNotFound, CallAlreadyDecided or InvalidRule.

    With ``always_allow`` an allow rule is created in the same transaction as the decision, scoped to
    ``exact`` (this very call), ``constraints`` (the given ones, which must match this call) or
    ``tool`` (any arguments). A team that keeps rules to its admins refuses it from a reviewer.
    In a four-eyes team, allowing (or Always-Allowing) a call made with one's own token raises
    ``access.FourEyesRefused``, a PermissionDenied, and the attempt is audited; denying it stays possible.
    """
    now = timezone.now()
    refusal: access.FourEyesRefused | None = None
    with transaction.atomic():
        call = call_get(call_id)
        access.require_decide(reviewer, call)
        if allow:
            try:
                access.require_approve(reviewer, call)
            except access.FourEyesRefused as exc:
                # Recorded here and raised once this commits: raising inside would roll the record back.
                refusal = exc
                audit_record(
                    kind="call.approval_refused",
                    team=call.team,
                    actor_id=reviewer.pk,
                    token=call.token,
                    call=call,
                    reason="four eyes: the reviewer made this call with their own token",
                    decision="always_allow" if always_allow else "allow",
                )
        changed = refusal is None and _decide_held(
            call,
            reviewer=reviewer,
            allow=allow,
            reason=reason,
            always_allow=always_allow,
            scope=scope,
            constraints=constraints,
            now=now,
        )
    if refusal is not None:
        raise refusal
    if not changed:
        raise CallAlreadyDecided(call)
    # The decision latency for /metrics. Committed above: the view and the review socket call this outside
    # any transaction (no ATOMIC_REQUESTS).
    metrics.observe_human_decision(state=call.state, created_at=call.created_at, decided_at=call.decided_at)
    return call


def _decide_held(
    call: ToolCall,
    *,
    reviewer: AbstractBaseUser,
    allow: bool,
    reason: str,
    always_allow: bool,
    scope: Scope,
    constraints: list[dict[str, Any]] | None,
    now: Any,
) -> bool:
    """``call_decide``'s change, inside its transaction: False when the call had left the pending state."""
    rule_constraints: list[dict[str, Any]] | None = None
    if allow and always_allow:
        rule_constraints = _always_allow_constraints(call, reviewer, scope, constraints)
    reason = reason.replace("\x00", "").strip()[:1000]  # PostgreSQL text has no NUL
    if allow:
        who = reviewer.get_username()
        text = f"allowed by {who}" + (f": {reason}" if reason else "")
    else:
        text = "denied by a reviewer" + (f": {reason}" if reason else "")
    changed = ToolCall.objects.filter(pk=call.pk, state=State.PENDING, deadline__gt=now).update(
        state=State.ALLOWED if allow else State.DENIED,
        reason=text,
        decided_at=now,
        decided_by=reviewer.pk,
        decided_via=ToolCall.DecidedVia.HUMAN,
    )
    if not changed:
        # Nothing may raise in here, or the expiry below would be rolled back with the transaction.
        call.refresh_from_db(from_queryset=calls_with_relations())  # the state that won, for the refusal
        if call.state == State.PENDING:  # past its deadline; the sweeper had not reached it yet
            _expire(call, now=now)
        return False
    try:
        _record_decision(call, reviewer=reviewer, text=text, rule_constraints=rule_constraints)
    except RuleInvalid as exc:  # rolls the decision back with the rule: the call stays held
        raise InvalidRule(str(exc)) from None
    return True


class InvalidRule(Exception):
    """An Always-Allow rule that cannot be made as asked; the call stays held."""


def _always_allow_constraints(
    call: ToolCall, reviewer: AbstractBaseUser, scope: str, constraints: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    if call.team.rules_admins_only and not access.is_admin(reviewer, call.team):
        raise InvalidRule("Only the team's admins may create rules: use Allow instead.")
    if scope == "exact":
        return scopes.exact_call(call.arguments)
    if scope == "tool":
        return []
    if scope != "constraints":
        raise InvalidRule(f"Unknown scope {scope!r}: choose exact, constraints or tool.")
    try:
        parsed = policy.parse_constraints(constraints if constraints is not None else [])
    except policy.PolicyError as exc:
        raise InvalidRule(str(exc)) from None
    spec = policy.RuleSpec(id=0, effect="allow", server=call.server, tool=call.tool, constraints=parsed)
    if not spec.applies(call.arguments):
        raise InvalidRule(
            "These constraints do not match the held call's own arguments: " + spec.explain(call.arguments)
        )
    return [constraint.to_dict() for constraint in parsed]


def _record_decision(
    call: ToolCall, *, reviewer: AbstractBaseUser, text: str, rule_constraints: list[dict[str, Any]] | None
) -> None:
    """Audit and broadcast a reviewer's decision (and its Always-Allow rule), inside its transaction."""
    call.refresh_from_db()
    rule = None
    if rule_constraints is not None:
        rule = rule_create(
            team=call.team,
            by=reviewer,
            effect=Rule.Effect.ALLOW,
            server=call.server,
            tool=call.tool,
            constraints=rule_constraints,
            note=f"Always-Allow from call {call.pk}",
            created_from_call=call,
        )
    audit_record(
        kind=f"call.{call.state}",
        team=call.team,
        actor_id=reviewer.pk,
        token=call.token,
        call=call,
        reason=text,
        always_allow=rule.pk if rule else None,
        **({"result_policy": call.result_policy()} if call.state == State.ALLOWED else {}),
    )
    # The bridge first: it is waiting on this decision, while the pages only redraw their queue.
    realtime.decision_changed(call)
    realtime.call_changed(call)
    if call.state == State.DENIED:
        alerts_call_denied(call=call)  # a reviewer's denial counts toward a burst too, on commit


def call_tool_definition_accept(*, call_id: str, reviewer: AbstractBaseUser) -> bool:
    """From a held call: an admin accepts its tool's changed definition (the one the call was made against).

    The call itself stays held for a decision. False when there was nothing to accept.
    """
    call = call_get(call_id)
    access.require_admin(reviewer, call.team)
    return tool_pin_accept(
        team=call.team,
        server=call.server,
        tool=call.tool,
        tool_hash=call.tool_hash,
        by=reviewer,  # type: ignore[arg-type]
    )


def _expire(call: ToolCall, *, now: Any) -> bool:
    changed = ToolCall.objects.filter(
        pk=call.pk, state__in=[State.PENDING, State.ALLOWED], started_at__isnull=True, deadline__lte=now
    ).update(
        state=State.EXPIRED,
        reason="expired: no decision before the deadline",
        decided_at=now,
        decided_via=ToolCall.DecidedVia.SYSTEM,
    )
    if changed:
        call.refresh_from_db()
        audit_record(kind="call.expired", team=call.team, token=call.token, call=call, reason=call.reason)
        realtime.call_changed(call)
        realtime.decision_changed(call)
    return bool(changed)


def calls_expire_due() -> int:
    """Expire every held (or allowed but never run) call past its deadline. Returns how many."""
    now = timezone.now()
    due = ToolCall.objects.select_related("team", "token", "requester", "decided_by").filter(
        state__in=[State.PENDING, State.ALLOWED], started_at__isnull=True, deadline__lte=now
    )
    expired = 0
    for call in due[:500]:
        with transaction.atomic():
            expired += _expire(call, now=now)
    return expired


def calls_deny_for_token(*, token: BridgeToken, reason: str) -> int:
    """Deny every held call of a token (it was revoked or its owner removed). Inside the caller's atomic.

    Returns how many calls this denied; a call decided concurrently keeps that decision.
    """
    now = timezone.now()
    # Lock them all before the first audit_record takes the chain's lock (see services/audit.py).
    held = list(
        calls_with_relations()
        .select_for_update(of=("self",))
        .filter(token=token, state__in=[State.PENDING, State.ALLOWED], started_at__isnull=True)
    )
    denied = 0
    for call in held:
        changed = ToolCall.objects.filter(pk=call.pk, state=call.state, started_at__isnull=True).update(
            state=State.DENIED, reason=reason, decided_at=now, decided_via=ToolCall.DecidedVia.SYSTEM
        )
        if not changed:
            continue
        denied += 1
        call.refresh_from_db(from_queryset=calls_with_relations())
        audit_record(kind="call.denied", team=call.team, token=token, call=call, reason=reason)
        realtime.call_changed(call)
        realtime.decision_changed(call)
    return denied


def calls_lock_held_of(*, user_id: int, team_id: int | None = None) -> None:
    """Lock a person's held calls (in one team, or all) before an offboarding writes its first audit
    event: offboarding and a reviewer's decision then take row locks and the chain's lock in one order."""
    held = ToolCall.objects.select_for_update().filter(
        token__user_id=user_id, state__in=[State.PENDING, State.ALLOWED], started_at__isnull=True
    )
    if team_id is not None:
        held = held.filter(team_id=team_id)
    list(held.values_list("pk", flat=True))


def call_states_for_bridge(*, token: BridgeToken, call_ids: list[str]) -> list[ToolCall]:
    """The current state of the token's calls among these ids (unknown and foreign ids are left out)."""
    keys = []
    for raw in call_ids:
        try:
            keys.append(uuid.UUID(raw))
        except (ValueError, TypeError, AttributeError):
            continue
    # The team and rule too: an allowed call's answer carries its result policy (read in async code: no lazy
    # query).
    return list(
        ToolCall.objects.select_related("decided_by", "team", "rule").filter(token=token, pk__in=keys)
    )

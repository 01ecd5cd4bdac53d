"""A team's rules: create, change, switch on and off, delete, and try them against a sample call.

Every write is atomic and writes its audit event in the same transaction. The ``post_save`` and
``post_delete`` signals on ``Rule`` move the team's ``rules_version``, so that every process rebuilds its
compiled rules (``approvals.services.calls.team_ruleset``). Who may call these is decided by the views
(``approvals.access``); the services check the values (constraints with ``policy.parse_constraints``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from approvals import guards, policy
from approvals.models import Rule, Team, ToolCall, ToolPin
from approvals.services.audit import audit_record

MAX_NAME_CHARS: Final = 128
"""``Rule.server`` and ``Rule.tool`` hold this many characters."""
MAX_NOTE_CHARS: Final = 500
"""``Rule.note`` holds this many characters."""
EFFECTS: Final = ("allow", "deny")
RESULT_FIELDS: Final = tuple(Rule.RESULT_FIELDS)
"""A rule's overrides of the team's result policy: ``result_instructions``, ``result_secrets``,
``result_personal_data``; each blank (the team's action) or pass, mask or block."""


class RuleInvalid(ValueError):
    """Values a rule cannot have. ``errors`` maps a field (``server``, ``constraints``…) to its message.

    A constraint refused by the engine is reported on ``constraints``, naming the entry:
    ``constraints[1].value: within takes a directory as a string``.
    """

    def __init__(
        self, errors: Mapping[str, str], *, constraint: tuple[int | None, str | None] | None = None
    ) -> None:
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors.items()))
        self.errors = dict(errors)
        self.constraint = constraint
        """For a refused constraint: the ``(index, field)`` of ``PolicyError``, to point at it."""


@dataclass(frozen=True, slots=True)
class RuleValues:
    """A rule's fields as validated: what ``rule_create`` and ``rule_update`` store."""

    effect: str
    server: str
    tool: str
    constraints: list[dict[str, Any]]
    note: str
    enabled: bool
    expires_at: datetime | None
    result_instructions: str = ""
    result_secrets: str = ""
    result_personal_data: str = ""

    def as_fields(self) -> dict[str, Any]:
        return {
            "effect": self.effect,
            "server": self.server,
            "tool": self.tool,
            "constraints": self.constraints,
            "note": self.note,
            "enabled": self.enabled,
            "expires_at": self.expires_at,
            "result_instructions": self.result_instructions,
            "result_secrets": self.result_secrets,
            "result_personal_data": self.result_personal_data,
        }


def note_error(note: Any) -> str | None:
    """What is wrong with a free-text note, or None. Rules and limits share it."""
    if not isinstance(note, str):
        return "must be text"
    if len(note) > MAX_NOTE_CHARS:
        return f"at most {MAX_NOTE_CHARS} characters"
    if "\x00" in note:
        return "no NUL character"
    return None


def name_error(value: Any, what: str) -> str | None:
    """What is wrong with a server or tool name (a name or a glob), or None. Rules and limits share it."""
    if not isinstance(value, str) or not value.strip():
        return f"give a {what} name or a glob such as *"
    if len(value) > MAX_NAME_CHARS:
        return f"at most {MAX_NAME_CHARS} characters"
    if "\x00" in value or value != value.strip():
        return "no NUL character and no leading or trailing spaces"
    return None


def rule_validate(
    *,
    effect: Any,
    server: Any,
    tool: Any,
    constraints: Any = None,
    note: Any = "",
    enabled: Any = True,
    expires_at: Any = None,
    result_instructions: Any = "",
    result_secrets: Any = "",
    result_personal_data: Any = "",
) -> RuleValues:
    """Check a rule's values, all of them, and raise ``RuleInvalid`` listing every problem.

    Constraints are read by the engine's own parser, so what is stored is what it will evaluate; they are
    stored in their canonical JSON form (``Constraint.to_dict``). The result overrides (``RESULT_FIELDS``)
    are blank (the team's action) or an action; only an allow rule may set them (a deny rule's calls never
    run, so they have no result).
    """
    errors: dict[str, str] = {}
    if effect not in EFFECTS:
        errors["effect"] = "must be allow or deny"
    for name, value in (("server", server), ("tool", tool)):
        problem = name_error(value, name)
        if problem:
            errors[name] = problem
    parsed: tuple[policy.Constraint, ...] = ()
    at: tuple[int | None, str | None] | None = None
    try:
        parsed = policy.parse_constraints([] if constraints is None else constraints)
    except policy.PolicyError as error:
        errors["constraints"] = error.message
        at = (error.index, error.field)
    if (problem := note_error(note)) is not None:
        errors["note"] = problem
    if not isinstance(enabled, bool):
        errors["enabled"] = "must be true or false"
    if expires_at is not None and (not isinstance(expires_at, datetime) or timezone.is_naive(expires_at)):
        errors["expires_at"] = "must be a date and time with a timezone"
    results = {
        "result_instructions": result_instructions,
        "result_secrets": result_secrets,
        "result_personal_data": result_personal_data,
    }
    for name, action in results.items():
        if action not in ("", *Team.ResultAction.values):
            errors[name] = f"must be one of: {', '.join(Team.ResultAction.values)} (or blank: the team's)"
        elif action and effect == Rule.Effect.DENY:
            errors[name] = "a deny rule runs no call, so it has no result: leave it to the team"
    if errors:
        raise RuleInvalid(errors, constraint=at)
    return RuleValues(
        effect=effect,
        server=server,
        tool=tool,
        constraints=[c.to_dict() for c in parsed],
        note=note.strip(),
        enabled=enabled,
        expires_at=expires_at,
        **results,
    )


def _summary(rule: Rule) -> dict[str, Any]:
    """What the audit log keeps of a rule (no call arguments: constraints are the rule's own text)."""
    return {
        "rule": rule.pk,
        "effect": rule.effect,
        "server": rule.server,
        "tool": rule.tool,
        "constraints": rule.constraints,
        "note": rule.note,
        "enabled": rule.enabled,
        "expires_at": rule.expires_at,
        **{name: getattr(rule, name) for name in RESULT_FIELDS},
    }


def rule_create(
    *,
    team: Team,
    by: AbstractBaseUser | None,
    effect: str,
    server: str,
    tool: str,
    constraints: Any = None,
    note: str = "",
    enabled: bool = True,
    expires_at: datetime | None = None,
    result_instructions: str = "",
    result_secrets: str = "",
    result_personal_data: str = "",
    created_from_call: ToolCall | None = None,
) -> Rule:
    """Add a rule to the team (last in order). Raises ``RuleInvalid``.

    ``result_*`` override the team's result policy for the calls the rule allows (blank: the team's).
    """
    values = rule_validate(
        effect=effect,
        server=server,
        tool=tool,
        constraints=constraints,
        note=note,
        enabled=enabled,
        expires_at=expires_at,
        result_instructions=result_instructions,
        result_secrets=result_secrets,
        result_personal_data=result_personal_data,
    )
    if created_from_call is not None and created_from_call.team_id != team.pk:
        raise RuleInvalid({"created_from_call": "that call is another team's"})
    with transaction.atomic():
        rule = Rule.objects.create(
            team=team,
            created_by_id=by.pk if by is not None else None,
            created_from_call=created_from_call,
            **values.as_fields(),
        )
        audit_record(
            kind="rule.created",
            team=team,
            actor_id=by.pk if by is not None else None,
            call=created_from_call,
            **_summary(rule),
        )
    return rule


def rule_update(
    *,
    rule: Rule,
    by: AbstractBaseUser | None,
    effect: str,
    server: str,
    tool: str,
    constraints: Any = None,
    note: str = "",
    enabled: bool = True,
    expires_at: datetime | None = None,
    result_instructions: str = "",
    result_secrets: str = "",
    result_personal_data: str = "",
) -> Rule:
    """Change a rule's values (its place in the order, creator and origin stay). Raises ``RuleInvalid``.

    Returns the rule as saved; when nothing changed nothing is written and no event is recorded.
    """
    values = rule_validate(
        effect=effect,
        server=server,
        tool=tool,
        constraints=constraints,
        note=note,
        enabled=enabled,
        expires_at=expires_at,
        result_instructions=result_instructions,
        result_secrets=result_secrets,
        result_personal_data=result_personal_data,
    )
    with transaction.atomic():
        current = Rule.objects.select_for_update().get(pk=rule.pk)
        before = _summary(current)
        changed = [name for name, value in values.as_fields().items() if getattr(current, name) != value]
        if not changed:
            return current
        for name in changed:
            setattr(current, name, getattr(values, name))
        current.save(update_fields=changed)
        audit_record(
            kind="rule.updated",
            team=current.team,
            actor_id=by.pk if by is not None else None,
            rule=current.pk,
            changed=changed,
            before={name: before[name] for name in changed},
            after={name: _summary(current)[name] for name in changed},
        )
    return current


def rule_set_enabled(*, rule: Rule, by: AbstractBaseUser | None, enabled: bool) -> bool:
    """Switch a rule on or off. False when it already was."""
    with transaction.atomic():
        current = Rule.objects.select_for_update().get(pk=rule.pk)
        if current.enabled == enabled:
            return False
        current.enabled = enabled
        current.save(update_fields=["enabled"])
        audit_record(
            kind="rule.enabled" if enabled else "rule.disabled",
            team=current.team,
            actor_id=by.pk if by is not None else None,
            rule=current.pk,
            effect=current.effect,
            server=current.server,
            tool=current.tool,
        )
    rule.enabled = enabled
    return True


def rule_delete(*, rule: Rule, by: AbstractBaseUser | None) -> None:
    """Delete a rule. The calls it decided keep their reason; their link to the rule is cleared."""
    with transaction.atomic():
        current = Rule.objects.select_for_update().filter(pk=rule.pk).first()
        if current is None:
            return
        summary = _summary(current)
        team = current.team
        current.delete()
        audit_record(kind="rule.deleted", team=team, actor_id=by.pk if by is not None else None, **summary)


# --- reading rules for the engine ----------------------------------------------------------------------


def rule_spec(rule: Rule) -> policy.RuleSpec:
    """The engine's view of a rule row.

    A rule whose stored constraints no longer parse (written around the services, or by an older version)
    becomes a deny rule without constraints for its server and tool: fail closed, a broken rule never
    widens what is allowed.
    """
    try:
        constraints = policy.parse_constraints(rule.constraints or [])
        effect = rule.effect
    except policy.PolicyError:
        constraints, effect = (), Rule.Effect.DENY
    if effect not in EFFECTS:
        constraints, effect = (), Rule.Effect.DENY
    return policy.RuleSpec(
        id=rule.pk,
        effect=effect,  # type: ignore[arg-type]
        server=rule.server,
        tool=rule.tool,
        constraints=constraints,
        expires_at=rule.expires_at,
    )


def rule_is_broken(rule: Rule) -> bool:
    """Do the stored values fail to parse (so that ``rule_spec`` reads the rule as a plain deny)?"""
    if rule.effect not in EFFECTS:
        return True
    try:
        policy.parse_constraints(rule.constraints or [])
    except policy.PolicyError:
        return True
    return False


# --- dry run -------------------------------------------------------------------------------------------

Status = Literal["wins", "applies", "does_not_apply", "disabled", "expired"]


@dataclass(frozen=True, slots=True)
class RuleExplanation:
    """What one rule for the sample call's server and tool made of it."""

    rule: Rule
    status: Status
    detail: str
    broken: bool = False


@dataclass(frozen=True, slots=True)
class DryRun:
    """The verdict the team's rules give a sample call, and each candidate rule's part in it."""

    verdict: policy.Verdict
    rules: list[RuleExplanation]
    other_rules: int
    """Rules of the team for other servers or tools (not listed)."""
    findings: list[guards.Finding]
    """What the guards, which run before any rule, say of the arguments."""
    schema_known: bool
    """Whether the tool's approved ``inputSchema`` was known and the guards checked against it."""

    @property
    def blocked(self) -> bool:
        """Would the guards refuse the call before any rule is read?"""
        return any(finding.severity == "block" for finding in self.findings)


def _describe(spec: policy.RuleSpec, arguments: Mapping[str, Any]) -> str:
    explained = spec.explain(arguments)
    return explained or "no constraints: any arguments"


def rules_dry_run(
    *, team: Team, server: str, tool: str, arguments: Mapping[str, Any], now: datetime
) -> DryRun:
    """Decide a sample call with the team's rules and mode, as ``call_submit`` would, without saving it.

    Lists every rule whose server and tool patterns match the sample (disabled and expired ones too), in
    evaluation order, with what it made of the arguments; the rule that decides is marked ``wins``.
    Tool pinning (a changed tool definition holds an allowed call) is not part of the dry run.
    """
    rows = list(Rule.objects.filter(team=team).select_related("created_by").order_by("id"))
    specs = {rule.pk: rule_spec(rule) for rule in rows}
    in_force = [specs[rule.pk] for rule in rows if rule.enabled]
    verdict = policy.compile_rules(in_force).evaluate(
        server=server, tool=tool, arguments=arguments, mode=team.mode, now=now
    )
    explained: list[RuleExplanation] = []
    others = 0
    for rule in rows:
        spec = specs[rule.pk]
        if not spec.matches(server=server, tool=tool):
            others += 1
            continue
        broken = rule_is_broken(rule)
        status: Status
        if not rule.enabled:
            status, detail = "disabled", "switched off: not evaluated"
        elif spec.is_expired(now):
            status, detail = "expired", "expired: not evaluated"
        elif spec.applies(arguments):
            status = "wins" if rule.pk == verdict.rule_id else "applies"
            detail = _describe(spec, arguments)
            if status == "applies":
                detail += (
                    " (an earlier deny rule wins)"
                    if spec.effect == "deny"
                    else (" (deny beats allow)" if verdict.outcome == "deny" else " (an earlier rule wins)")
                )
        else:
            status, detail = "does_not_apply", _describe(spec, arguments)
        if broken:
            detail = "its stored constraints do not parse: read as a deny of any arguments; " + detail
        explained.append(RuleExplanation(rule=rule, status=status, detail=detail, broken=broken))
    schema = (
        ToolPin.objects.filter(team=team, server=server, tool=tool)
        .values_list("approved_definition", flat=True)
        .first()
    )
    input_schema = schema.get("input_schema") if isinstance(schema, dict) else None
    findings = guards.inspect_arguments(
        arguments=arguments, input_schema=input_schema if isinstance(input_schema, dict) else None
    )
    return DryRun(
        verdict=verdict,
        rules=explained,
        other_rules=others,
        findings=findings,
        schema_known=isinstance(input_schema, dict),
    )

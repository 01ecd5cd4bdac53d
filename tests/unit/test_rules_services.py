"""Rule services: create, update, switch, delete (atomic, audited, validated by the engine's parser),
``rule_spec`` and the dry run's explanations."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from approvals.models import AuditEvent, Rule, ToolCall, ToolPin
from approvals.services import rules as rule_services
from approvals.services.rules import RuleInvalid, rule_create, rule_delete, rule_set_enabled, rule_update

from .conftest import SERVER, TOOL_HASH

pytestmark = pytest.mark.django_db

WITHIN = {"path": "path", "op": "within", "value": "/srv/project"}


def events(kind: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(kind=kind).order_by("seq"))


def make(team: Any, by: Any = None, **values: Any) -> Rule:
    fields: dict[str, Any] = {"effect": "allow", "server": SERVER, "tool": "read_file"} | values
    return rule_create(team=team, by=by, **fields)


# --- create ----------------------------------------------------------------------------------------------


def test_a_created_rule_is_stored_in_canonical_form_and_audited(team_a, admin) -> None:
    rule = make(team_a, admin, constraints=[WITHIN], note="  project files ")
    rule.refresh_from_db()
    assert (rule.effect, rule.server, rule.tool, rule.note) == ("allow", SERVER, "read_file", "project files")
    assert rule.constraints == [WITHIN]
    assert rule.created_by == admin and rule.enabled
    [event] = events("rule.created")
    assert event.team_id == team_a.pk and event.actor_id == admin.pk
    assert event.data["rule"] == rule.pk and event.data["constraints"] == [WITHIN]
    assert event.data["actor"]["username"] == admin.username


def test_a_refused_constraint_is_reported_naming_its_entry_and_nothing_is_saved(team_a, admin) -> None:
    bad = [WITHIN, {"path": "q", "op": "regex", "value": "(a)\\1"}]
    with pytest.raises(RuleInvalid) as caught:
        make(team_a, admin, constraints=bad)
    assert caught.value.errors["constraints"].startswith("constraints[1].value: ")
    assert "backreferences" in caught.value.errors["constraints"]
    assert caught.value.constraint == (1, "value")
    assert not Rule.objects.exists() and not events("rule.created")


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"effect": "maybe"}, "effect"),
        ({"server": ""}, "server"),
        ({"tool": "x" * 129}, "tool"),
        ({"tool": " read"}, "tool"),
        ({"note": "n" * 501}, "note"),
        ({"constraints": {"path": "p"}}, "constraints"),
        ({"constraints": [{"path": "p", "op": "nope", "value": 1}]}, "constraints"),
        ({"expires_at": datetime(2030, 1, 1)}, "expires_at"),
        ({"enabled": "yes"}, "enabled"),
        ({"result_secrets": "drop"}, "result_secrets"),
        ({"effect": "deny", "result_instructions": "block"}, "result_instructions"),
    ],
)
def test_invalid_values_are_refused_by_field(team_a, admin, values, field) -> None:
    with pytest.raises(RuleInvalid) as caught:
        make(team_a, admin, **values)
    assert field in caught.value.errors
    assert not Rule.objects.exists()


def test_every_problem_is_reported_at_once(team_a) -> None:
    with pytest.raises(RuleInvalid) as caught:
        make(team_a, effect="x", server="", tool="", constraints="nope")
    assert set(caught.value.errors) == {"effect", "server", "tool", "constraints"}


def test_a_failing_audit_rolls_the_rule_back(team_a, admin, monkeypatch) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("audit down")

    monkeypatch.setattr(rule_services, "audit_record", broken)
    with pytest.raises(RuntimeError):
        make(team_a, admin)
    assert not Rule.objects.exists()


def test_a_rule_from_another_teams_call_is_refused(team_a, team_b, outsider_token, submit) -> None:
    call = submit(outsider_token.token).call
    with pytest.raises(RuleInvalid):
        make(team_a, created_from_call=call)


# --- update, enable, delete -------------------------------------------------------------------------------


def test_an_update_records_what_changed(team_a, admin) -> None:
    rule = make(team_a, admin)
    updated = rule_update(
        rule=rule, by=admin, effect="deny", server=SERVER, tool="read_file", constraints=[WITHIN], note=""
    )
    assert (updated.effect, updated.constraints) == ("deny", [WITHIN])
    [event] = events("rule.updated")
    assert event.data["changed"] == ["effect", "constraints"]
    assert event.data["before"] == {"effect": "allow", "constraints": []}
    assert event.data["after"] == {"effect": "deny", "constraints": [WITHIN]}
    assert Rule.objects.get(pk=rule.pk).created_by == admin  # the creator stays


def test_an_update_that_changes_nothing_writes_nothing(team_a, admin) -> None:
    rule = make(team_a, admin)
    version = type(team_a).objects.get(pk=team_a.pk).rules_version
    rule_update(rule=rule, by=admin, effect="allow", server=SERVER, tool="read_file")
    assert not events("rule.updated")
    assert type(team_a).objects.get(pk=team_a.pk).rules_version == version


def test_an_invalid_update_leaves_the_rule_as_it_was(team_a, admin) -> None:
    rule = make(team_a, admin, constraints=[WITHIN])
    with pytest.raises(RuleInvalid):
        rule_update(rule=rule, by=admin, effect="allow", server="*", tool="*", constraints=[{"op": "glob"}])
    rule.refresh_from_db()
    assert (rule.server, rule.constraints) == (SERVER, [WITHIN])


def test_switching_a_rule_off_and_on_is_audited_once_each(team_a, admin) -> None:
    rule = make(team_a, admin)
    assert rule_set_enabled(rule=rule, by=admin, enabled=False)
    assert not rule_set_enabled(rule=rule, by=admin, enabled=False)
    assert not Rule.objects.get(pk=rule.pk).enabled
    assert rule_set_enabled(rule=rule, by=admin, enabled=True)
    assert [e.kind for e in AuditEvent.objects.filter(kind__startswith="rule.").order_by("seq")] == [
        "rule.created",
        "rule.disabled",
        "rule.enabled",
    ]


def test_a_deleted_rules_calls_keep_their_reason(team_a, admin, member_token, submit) -> None:
    rule = make(team_a, admin)
    call = submit(member_token.token).call
    assert call.rule_id == rule.pk
    rule_delete(rule=rule, by=admin)
    call.refresh_from_db()
    assert call.rule_id is None and f"#{rule.pk}" in call.reason
    [event] = events("rule.deleted")
    assert event.data["rule"] == rule.pk and event.data["tool"] == "read_file"
    rule_delete(rule=rule, by=admin)  # already gone: nothing happens
    assert len(events("rule.deleted")) == 1


def test_every_change_reaches_the_next_call(team_a, admin, member_token, submit) -> None:
    """The signals move the team's rules_version: the compiled rules are rebuilt."""
    rule = make(team_a, admin, tool="read_file", constraints=[WITHIN])
    first = submit(member_token.token, arguments={"path": "/srv/project/a"}).call
    assert first.state == "allowed"
    rule_set_enabled(rule=rule, by=admin, enabled=False)
    second = submit(member_token.token, arguments={"path": "/srv/project/b"}).call
    assert second.state == "pending"
    rule_set_enabled(rule=rule, by=admin, enabled=True)
    rule_update(rule=rule, by=admin, effect="deny", server=SERVER, tool="read_file", constraints=[WITHIN])
    third = submit(member_token.token, arguments={"path": "/srv/project/c"}).call
    assert (third.state, third.rule_id) == ("denied", rule.pk)


# --- the result policy of the calls a rule allows ---------------------------------------------------------

TEAM_POLICY = {"instruction": "mask", "hidden_text": "mask", "secret": "mask", "pii": "pass"}


def test_a_rules_result_overrides_go_over_the_teams_policy_kind_by_kind() -> None:
    rule = Rule(effect="allow", result_instructions="block", result_personal_data="mask")
    assert rule.result_policy_over(TEAM_POLICY) == {
        "instruction": "block",
        "hidden_text": "block",  # decided with instructions, as the team's setting
        "secret": "mask",  # left blank: the team's
        "pii": "mask",
    }
    assert Rule(effect="allow").result_policy_over(TEAM_POLICY) == TEAM_POLICY
    assert TEAM_POLICY["instruction"] == "mask"  # the team's policy is not changed in place


def test_result_overrides_are_stored_audited_and_cleared(team_a, admin) -> None:
    rule = make(team_a, admin, result_secrets="block")
    rule.refresh_from_db()
    assert (rule.result_instructions, rule.result_secrets, rule.result_personal_data) == ("", "block", "")
    [created] = events("rule.created")
    assert created.data["result_secrets"] == "block" and created.data["result_instructions"] == ""
    rule_update(
        rule=rule, by=admin, effect="allow", server=SERVER, tool="read_file", result_personal_data="mask"
    )
    [event] = events("rule.updated")
    assert event.data["changed"] == ["result_secrets", "result_personal_data"]
    assert event.data["before"] == {"result_secrets": "block", "result_personal_data": ""}
    assert event.data["after"] == {"result_secrets": "", "result_personal_data": "mask"}


def test_a_call_a_rule_allows_carries_its_rules_policy_without_a_query(
    team_a, admin, member_token, submit, django_assert_num_queries
) -> None:
    from approvals.realtime import decision_for

    team_a.result_personal_data = "block"
    team_a.save(update_fields=["result_personal_data"])
    rule = make(team_a, admin, result_secrets="block", result_instructions="pass")
    submitted = submit(member_token.token)
    assert (submitted.call.state, submitted.call.rule_id) == ("allowed", rule.pk)
    with django_assert_num_queries(0):  # the consumer sends it from async code, where no query may run
        decision = decision_for(submitted.call, run=submitted.run)
    expected = {"instruction": "pass", "hidden_text": "pass", "secret": "block", "pii": "block"}
    assert decision.result_policy == expected
    allowed = AuditEvent.objects.get(call=submitted.call, kind="call.allowed")
    assert allowed.data["result_policy"] == expected


def test_a_call_a_reviewer_allows_carries_the_teams_policy(team_a, reviewer, member_token, submit) -> None:
    from approvals.realtime import decision_for
    from approvals.services.calls import call_decide

    held = submit(member_token.token).call  # no rule: held
    call = call_decide(call_id=str(held.pk), reviewer=reviewer, allow=True)
    assert call.rule_id is None and decision_for(call).result_policy == TEAM_POLICY
    assert AuditEvent.objects.get(call=call, kind="call.allowed").data["result_policy"] == TEAM_POLICY


# --- rule_spec -------------------------------------------------------------------------------------------


def test_rule_spec_reads_a_row_as_the_engine_does(team_a) -> None:
    expires = timezone.now() + timedelta(days=1)
    rule = make(team_a, constraints=[WITHIN], expires_at=expires)
    spec = rule_services.rule_spec(rule)
    assert (spec.id, spec.effect, spec.server, spec.tool, spec.expires_at) == (
        rule.pk,
        "allow",
        SERVER,
        "read_file",
        expires,
    )
    assert [c.to_dict() for c in spec.constraints] == [WITHIN]


def test_a_rule_that_no_longer_parses_reads_as_a_plain_deny(team_a) -> None:
    rule = Rule.objects.create(
        team=team_a, effect="allow", server=SERVER, tool="*", constraints=[{"path": "p", "op": "nope"}]
    )
    spec = rule_services.rule_spec(rule)
    assert (spec.effect, spec.constraints) == ("deny", ())
    assert rule_services.rule_is_broken(rule)


# --- dry run ---------------------------------------------------------------------------------------------


def dry(team: Any, arguments: dict[str, Any], *, tool: str = "read_file", now: datetime | None = None) -> Any:
    return rule_services.rules_dry_run(
        team=team, server=SERVER, tool=tool, arguments=arguments, now=now or timezone.now()
    )


def test_the_dry_run_names_the_winning_allow_rule_and_why(team_a) -> None:
    allow = make(team_a, constraints=[WITHIN])
    result = dry(team_a, {"path": "/srv/project/a.txt"})
    assert (result.verdict.outcome, result.verdict.rule_id) == ("allow", allow.pk)
    [item] = result.rules
    assert item.status == "wins" and 'path within "/srv/project"' in item.detail
    assert not ToolCall.objects.exists()  # nothing saved


def test_the_dry_run_shows_deny_beating_allow(team_a) -> None:
    allow = make(team_a, tool="*")
    deny = make(team_a, effect="deny", constraints=[{"path": "path", "op": "glob", "value": "*.key"}])
    other = make(team_a, tool="write_file")
    result = dry(team_a, {"path": "/srv/project/server.key"})
    assert (result.verdict.outcome, result.verdict.rule_id) == ("deny", deny.pk)
    statuses = {item.rule.pk: (item.status, item.detail) for item in result.rules}
    assert statuses[allow.pk] == ("applies", "no constraints: any arguments (deny beats allow)")
    assert statuses[deny.pk][0] == "wins"
    assert other.pk not in statuses and result.other_rules == 1


def test_the_dry_run_explains_a_rule_that_did_not_apply(team_a) -> None:
    allow = make(team_a, constraints=[WITHIN])
    result = dry(team_a, {"path": "/srv/project/../../etc/passwd"})
    assert result.verdict.outcome == "review"
    assert f"rule #{allow.pk}" in result.verdict.reason
    [item] = result.rules
    assert item.status == "does_not_apply"
    assert "failed" in item.detail and "outside /srv/project" in item.detail


def test_the_dry_run_lists_off_and_expired_rules_without_evaluating_them(team_a, admin) -> None:
    now = timezone.now()
    off = make(team_a, enabled=False)
    expired = make(team_a, expires_at=now - timedelta(minutes=1))
    result = dry(team_a, {"path": "/x"}, now=now)
    assert result.verdict.outcome == "review"
    assert [(item.rule.pk, item.status) for item in result.rules] == [
        (off.pk, "disabled"),
        (expired.pk, "expired"),
    ]


def test_the_dry_run_follows_the_team_mode(team_a) -> None:
    team_a.mode = "whitelist"
    team_a.save(update_fields=["mode"])
    result = dry(team_a, {})
    assert result.verdict.outcome == "deny" and "no rule allowed" in result.verdict.reason


def test_the_dry_run_marks_a_broken_rule(team_a) -> None:
    Rule.objects.create(team=team_a, effect="allow", server=SERVER, tool="*", constraints="garbage")
    result = dry(team_a, {"path": "/srv/project/a"})
    assert result.verdict.outcome == "deny"
    [item] = result.rules
    assert item.broken and item.status == "wins" and "do not parse" in item.detail


def test_the_dry_run_runs_the_guards_with_the_pinned_schema(team_a) -> None:
    schema = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
    ToolPin.objects.create(
        team=team_a,
        server=SERVER,
        tool="read_file",
        approved_hash=TOOL_HASH,
        current_hash=TOOL_HASH,
        approved_definition={"input_schema": schema},
        current_definition={"input_schema": schema},
    )
    make(team_a)
    result = dry(team_a, {"count": 1})
    assert result.schema_known and result.blocked
    assert any(f.kind == "schema" and "path" in f.message for f in result.findings)
    assert dry(team_a, {"path": "/etc/passwd"}, tool="other").schema_known is False

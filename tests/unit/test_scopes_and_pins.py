"""Always-Allow scopes, the rug-pull defence (tool pinning), risks on calls and the rule cache."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import PermissionDenied

from approvals import scopes
from approvals.models import AuditEvent, Rule, Team, ToolCall, ToolPin
from approvals.services.calls import (
    InvalidRule,
    call_decide,
    call_submit,
    call_tool_definition_accept,
)
from approvals.services.tools import tools_seen
from mcpbridge import protocol

from .conftest import SERVER, TOOL_HASH

pytestmark = pytest.mark.django_db
OTHER = "c" * 64


def tool_info(name: str = "read_file", digest: str = TOOL_HASH, **extra: Any) -> protocol.ToolInfo:
    return protocol.ToolInfo(name=name, hash=digest, **extra)


def test_suggested_constraints_put_paths_within_their_directory_and_pin_the_rest() -> None:
    assert scopes.suggested_constraints({"path": "/srv/project/a.txt", "mode": "w", "n": 3}) == [
        {"path": "path", "op": "within", "value": "/srv/project"},
        {"path": "mode", "op": "equals", "value": "w"},
        {"path": "n", "op": "equals", "value": 3},
    ]
    assert scopes.suggested_constraints({"file": "C:\\work\\x.txt"})[0] == {
        "path": "file",
        "op": "within",
        "value": "C:/work",
    }


def test_always_allow_exact_call_matches_only_the_same_arguments(member_token, submit, reviewer) -> None:
    held = submit(member_token.token, arguments={"path": "/srv/a", "n": 1}).call
    call_decide(call_id=str(held.pk), reviewer=reviewer, allow=True, always_allow=True, scope="exact")
    reattached = submit(member_token.token, arguments={"n": 1, "path": "/srv/a"})
    assert reattached.call.pk == held.pk and reattached.run  # the held call itself runs, once
    same = submit(member_token.token, arguments={"n": 1, "path": "/srv/a"})
    more = submit(member_token.token, arguments={"n": 1, "path": "/srv/a", "x": 0})
    assert same.call.state == ToolCall.State.ALLOWED and same.call.pk != held.pk
    assert same.call.decided_via == ToolCall.DecidedVia.RULE
    assert more.call.state == ToolCall.State.PENDING


def test_always_allow_with_constraints_that_miss_the_call_decides_nothing(
    member_token, submit, reviewer
) -> None:
    held = submit(member_token.token, arguments={"path": "/srv/project/a"}).call
    with pytest.raises(InvalidRule, match="do not match the held call"):
        call_decide(
            call_id=str(held.pk),
            reviewer=reviewer,
            allow=True,
            always_allow=True,
            scope="constraints",
            constraints=[{"path": "path", "op": "within", "value": "/home"}],
        )
    with pytest.raises(InvalidRule, match=r"constraints\[0\]"):
        call_decide(
            call_id=str(held.pk),
            reviewer=reviewer,
            allow=True,
            always_allow=True,
            scope="constraints",
            constraints=[{"path": "path", "op": "nope", "value": 1}],
        )
    held.refresh_from_db()
    assert held.state == ToolCall.State.PENDING
    assert not Rule.objects.exists()


def test_a_team_that_keeps_rules_to_admins_refuses_always_allow_from_a_reviewer(
    member_token, submit, reviewer, admin, team_a
) -> None:
    Team.objects.filter(pk=team_a.pk).update(rules_admins_only=True)
    held = submit(member_token.token).call
    with pytest.raises(InvalidRule, match="Only the team's admins"):
        call_decide(call_id=str(held.pk), reviewer=reviewer, allow=True, always_allow=True)
    decided = call_decide(call_id=str(held.pk), reviewer=admin, allow=True, always_allow=True, scope="tool")
    assert decided.state == ToolCall.State.ALLOWED
    assert Rule.objects.get().created_by == admin


def test_a_new_rule_applies_to_the_next_call_at_once(member_token, submit, team_a) -> None:
    assert submit(member_token.token, arguments={"path": "/a"}).call.state == ToolCall.State.PENDING
    Rule.objects.create(team=team_a, effect="allow", server=SERVER, tool="read_file")
    assert submit(member_token.token, arguments={"path": "/b"}).call.state == ToolCall.State.ALLOWED
    Rule.objects.filter(team=team_a).update(enabled=False)  # a bulk update sends no signal…
    Team.objects.filter(pk=team_a.pk).update(rules_version=12345)  # …so the version moves by hand here
    assert submit(member_token.token, arguments={"path": "/c"}).call.state == ToolCall.State.PENDING


def test_first_definition_is_pinned_and_a_change_holds_calls_despite_an_allow_rule(
    member_token, team_a, reviewer, admin
) -> None:
    Rule.objects.create(team=team_a, effect="allow", server=SERVER, tool="read_file")
    assert tools_seen(team=team_a, server=SERVER, tools=[tool_info()]) == []
    allowed = call_submit(
        token=member_token.token,
        server=SERVER,
        tool="read_file",
        arguments={"path": "/a"},
        tool_hash=TOOL_HASH,
    )
    assert allowed.call.state == ToolCall.State.ALLOWED

    assert tools_seen(
        team=team_a, server=SERVER, tools=[tool_info(digest=OTHER, description="now evil")]
    ) == ["read_file"]
    assert AuditEvent.objects.filter(kind="tool.changed").count() == 1
    held = call_submit(
        token=member_token.token, server=SERVER, tool="read_file", arguments={"path": "/b"}, tool_hash=OTHER
    ).call
    assert held.state == ToolCall.State.PENDING
    assert held.risks[0]["kind"] == "tool_changed"
    assert (
        held.risks[0]["after"]["description"] == "now evil" and held.risks[0]["before"]["description"] is None
    )

    with pytest.raises(PermissionDenied):  # a reviewer sees the change; only an admin accepts it
        call_tool_definition_accept(call_id=str(held.pk), reviewer=reviewer)
    assert call_tool_definition_accept(call_id=str(held.pk), reviewer=admin) is True
    assert call_tool_definition_accept(call_id=str(held.pk), reviewer=admin) is False
    pin = ToolPin.objects.get(team=team_a, tool="read_file")
    assert pin.approved_hash == OTHER and pin.approved_definition["description"] == "now evil"
    again = call_submit(
        token=member_token.token, server=SERVER, tool="read_file", arguments={"path": "/c"}, tool_hash=OTHER
    )
    assert again.call.state == ToolCall.State.ALLOWED


def test_an_outsider_cannot_accept_a_tool_definition(member_token, submit, outsider) -> None:
    held = submit(member_token.token).call
    with pytest.raises(PermissionDenied):
        call_tool_definition_accept(call_id=str(held.pk), reviewer=outsider)


def test_guard_warnings_and_tool_annotations_become_risks(member_token, team_a) -> None:
    held = call_submit(
        token=member_token.token,
        server=SERVER,
        tool="run_query",
        arguments={"sql": "SELECT 1; DROP TABLE users"},
        tool_hash=TOOL_HASH,
        annotations={"destructiveHint": True},
    ).call
    kinds = {risk["kind"] for risk in held.risks}
    assert {"sql", "destructiveHint"} <= kinds
    assert all(risk["severity"] in {"warn", "info"} for risk in held.risks)


def test_a_new_tool_on_a_known_server_waits_for_an_admin(member_token, team_a, admin) -> None:
    Rule.objects.create(team=team_a, effect="allow", server=SERVER, tool="*")
    tools_seen(team=team_a, server=SERVER, tools=[tool_info()])
    assert tools_seen(team=team_a, server=SERVER, tools=[tool_info(), tool_info("delete_all", OTHER)]) == [
        "delete_all"
    ]
    assert AuditEvent.objects.filter(kind="tool.added").count() == 1
    held = call_submit(
        token=member_token.token, server=SERVER, tool="delete_all", arguments={}, tool_hash=OTHER
    )
    assert held.call.state == ToolCall.State.PENDING
    assert "new tool on a known server" in held.call.risks[0]["message"]
    assert call_tool_definition_accept(call_id=str(held.call.pk), reviewer=admin) is True
    again = call_submit(
        token=member_token.token, server=SERVER, tool="delete_all", arguments={"x": 1}, tool_hash=OTHER
    )
    assert again.call.state == ToolCall.State.ALLOWED

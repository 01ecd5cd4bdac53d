"""A held call's life through the call services: submit, decide, claim, report, withdraw, expire."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection, connections
from django.utils import timezone

from approvals.models import AuditEvent, BridgeToken, Rule, Team, ToolCall
from approvals.services.calls import (
    CallAlreadyDecided,
    CallNotFound,
    TokenUnusable,
    call_claim,
    call_decide,
    call_report_result,
    call_states_for_bridge,
    call_withdraw,
    calls_expire_due,
)
from approvals.services.tokens import token_issue, token_revoke
from mcpbridge.protocol import arguments_hash

from .conftest import SERVER

pytestmark = pytest.mark.django_db


def _rule(team: Team, effect: str, tool: str = "read_file", server: str = SERVER, **extra: Any) -> Rule:
    return Rule.objects.create(team=team, effect=effect, server=server, tool=tool, **extra)


def _past_deadline(call: ToolCall) -> None:
    """Let the call's deadline pass (the clock is not mocked: the deadline is moved)."""
    ToolCall.objects.filter(pk=call.pk).update(deadline=timezone.now() - timedelta(seconds=1))


def _decide(call: ToolCall, reviewer: Any, **kwargs: Any) -> ToolCall:
    return call_decide(call_id=str(call.pk), reviewer=reviewer, allow=kwargs.pop("allow", True), **kwargs)


# --- submit ---------------------------------------------------------------------------------------
def test_a_call_no_rule_covers_is_held_for_review(member_token, submit, audit_kinds) -> None:
    before = timezone.now()
    submitted = submit(member_token.token, arguments={"path": "/srv/a"})
    call = ToolCall.objects.get(pk=submitted.call.pk)
    assert (submitted.run, submitted.reattached) == (False, False)
    assert call.state == ToolCall.State.PENDING
    assert call.decided_at is None and call.started_at is None and call.decided_via == ""
    assert call.requester == member_token.token.user
    assert call.server == SERVER and call.tool == "read_file"
    assert call.arguments == {"path": "/srv/a"}
    assert call.arguments_hash == arguments_hash({"path": "/srv/a"})
    assert before + timedelta(seconds=599) < call.deadline <= timezone.now() + timedelta(seconds=600)
    assert audit_kinds(call) == ["call.pending"]


def test_the_bridges_timeout_shortens_the_deadline(member_token, submit) -> None:
    call = submit(member_token.token, timeout=30).call
    assert call.deadline <= timezone.now() + timedelta(seconds=30)


def test_the_teams_deadline_wins_over_a_longer_bridge_timeout(member_token, submit, team_a) -> None:
    team_a.default_deadline_seconds = 60
    team_a.save(update_fields=["default_deadline_seconds"])
    call = submit(member_token.token, timeout=3600).call
    assert call.deadline <= timezone.now() + timedelta(seconds=60)


def test_a_call_an_allow_rule_matches_is_allowed_and_handed_over_to_run(
    member_token, submit, team_a, audit_kinds
) -> None:
    rule = _rule(team_a, "allow", tool="read_*")
    submitted = submit(member_token.token)
    call = ToolCall.objects.get(pk=submitted.call.pk)
    assert submitted.run is True
    assert call.state == ToolCall.State.ALLOWED
    assert call.started_at is not None and call.decided_at is not None
    assert call.rule_id == rule.pk
    assert call.decided_via == ToolCall.DecidedVia.RULE
    assert f"#{rule.pk}" in call.reason
    assert audit_kinds(call) == ["call.allowed"]


def test_a_call_a_deny_rule_matches_is_denied(member_token, submit, team_a, audit_kinds) -> None:
    _rule(team_a, "allow", tool="*")
    rule = _rule(team_a, "deny", tool="read_file")
    submitted = submit(member_token.token)
    call = ToolCall.objects.get(pk=submitted.call.pk)
    assert submitted.run is False
    assert (call.state, call.rule_id, call.decided_via) == ("denied", rule.pk, "rule")
    assert call.started_at is None
    assert audit_kinds(call) == ["call.denied"]


def test_a_tool_the_upstream_does_not_offer_is_denied_even_where_a_rule_allows_it(
    member_token, submit, team_a, audit_kinds
) -> None:
    _rule(team_a, "allow", tool="*", server="*")
    submitted = submit(member_token.token, tool="rm_rf", tool_hash=None)
    call = ToolCall.objects.get(pk=submitted.call.pk)
    assert submitted.run is False
    assert call.state == ToolCall.State.DENIED
    assert call.decided_via == ToolCall.DecidedVia.SYSTEM
    assert "no tool named 'rm_rf'" in call.reason
    assert audit_kinds(call) == ["call.denied"]


def test_whitelist_mode_denies_a_call_no_rule_allows(member_token, submit, team_a) -> None:
    team_a.mode = Team.Mode.WHITELIST
    team_a.save(update_fields=["mode"])
    denied = submit(member_token.token, tool="write_file").call
    assert denied.state == ToolCall.State.DENIED
    assert denied.decided_via == ToolCall.DecidedVia.SYSTEM
    _rule(team_a, "allow", tool="read_file")
    assert submit(member_token.token, tool="read_file").call.state == ToolCall.State.ALLOWED


def test_disabled_rules_and_other_teams_rules_do_not_apply(member_token, submit, team_a, team_b) -> None:
    _rule(team_a, "allow", tool="*", enabled=False)
    _rule(team_b, "allow", tool="*")
    assert submit(member_token.token).call.state == ToolCall.State.PENDING


def test_an_identical_repeated_call_reattaches_to_the_held_one(member_token, submit, audit_kinds) -> None:
    first = submit(member_token.token, arguments={"path": "/srv/a", "n": 1})
    again = submit(member_token.token, arguments={"n": 1, "path": "/srv/a"})
    assert again.call.pk == first.call.pk
    assert again.reattached is True and again.run is False
    assert ToolCall.objects.count() == 1
    assert audit_kinds(first.call) == ["call.pending"]


@pytest.mark.parametrize(
    "change",
    [{"arguments": {"path": "/srv/b"}}, {"tool": "read_text_file"}, {"server": "other-files"}],
    ids=["arguments", "tool", "server"],
)
def test_a_call_that_differs_in_anything_is_a_new_call(member_token, submit, change) -> None:
    first = submit(member_token.token, arguments={"path": "/srv/a"})
    other = submit(member_token.token, **{"arguments": {"path": "/srv/a"}, **change})
    assert other.call.pk != first.call.pk
    assert other.reattached is False
    assert ToolCall.objects.filter(state="pending").count() == 2


def test_the_same_call_with_another_token_is_a_new_call(member_token, submit, member, team_a) -> None:
    other_token, _ = token_issue(team=team_a, user=member, name="desktop")
    first = submit(member_token.token)
    assert submit(other_token).call.pk != first.call.pk


def test_a_repeated_call_after_approval_runs_once(member_token, submit, reviewer, audit_kinds) -> None:
    held = submit(member_token.token).call
    _decide(held, reviewer)
    repeat = submit(member_token.token)
    assert (repeat.call.pk, repeat.reattached, repeat.run) == (held.pk, True, True)
    assert ToolCall.objects.get(pk=held.pk).started_at is not None
    # Once it ran, the same call again is a new request that waits for a human again.
    later = submit(member_token.token)
    assert later.call.pk != held.pk and later.run is False
    assert audit_kinds(held) == ["call.pending", "call.allowed", "call.started"]


def test_a_call_past_its_deadline_is_not_reattached(member_token, submit) -> None:
    held = submit(member_token.token).call
    _past_deadline(held)
    assert submit(member_token.token).call.pk != held.pk


@pytest.mark.parametrize("how", ["revoked", "expired", "inactive"])
def test_an_unusable_token_cannot_submit(member_token, submit, member, how) -> None:
    token = member_token.token
    if how == "revoked":
        token_revoke(token=token, by=None)
    elif how == "expired":
        type(token).objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    else:
        member.is_active = False
        member.save(update_fields=["is_active"])
    with pytest.raises(TokenUnusable):
        submit(token)
    assert not ToolCall.objects.exists()


# --- decide ---------------------------------------------------------------------------------------
def test_a_reviewer_allows_a_held_call(member_token, submit, reviewer, audit_kinds) -> None:
    held = submit(member_token.token).call
    decided = _decide(held, reviewer, reason="looks fine")
    call = ToolCall.objects.get(pk=held.pk)
    assert decided.state == call.state == ToolCall.State.ALLOWED
    assert call.decided_by == reviewer
    assert call.decided_via == ToolCall.DecidedVia.HUMAN
    assert call.decided_at is not None
    assert call.started_at is None  # allowed is not run: the bridge claims it
    assert call.reason == "allowed by rita@example.com: looks fine"
    assert audit_kinds(call) == ["call.pending", "call.allowed"]
    event = AuditEvent.objects.get(call=call, kind="call.allowed")
    assert event.actor == reviewer and event.token_id == member_token.token.pk


def test_a_reviewer_denies_a_held_call_with_a_reason(member_token, submit, reviewer, audit_kinds) -> None:
    held = submit(member_token.token).call
    _decide(held, reviewer, allow=False, reason="  not on production  ")
    call = ToolCall.objects.get(pk=held.pk)
    assert call.state == ToolCall.State.DENIED
    assert call.reason == "denied by a reviewer: not on production"
    assert audit_kinds(call) == ["call.pending", "call.denied"]


def test_a_team_admin_may_decide(member_token, submit, admin) -> None:
    held = submit(member_token.token).call
    assert _decide(held, admin, allow=False).state == ToolCall.State.DENIED


def test_second_decision_is_refused(member_token, submit, reviewer, admin, audit_kinds) -> None:
    held = submit(member_token.token).call
    _decide(held, reviewer)
    with pytest.raises(CallAlreadyDecided) as refused:
        _decide(held, admin, allow=False)
    assert refused.value.call.state == ToolCall.State.ALLOWED
    call = ToolCall.objects.get(pk=held.pk)
    assert (call.state, call.decided_by) == ("allowed", reviewer)
    assert audit_kinds(call) == ["call.pending", "call.allowed"]


def test_an_automatically_decided_call_cannot_be_decided_again(
    member_token, submit, team_a, reviewer
) -> None:
    _rule(team_a, "deny")
    denied = submit(member_token.token).call
    with pytest.raises(CallAlreadyDecided):
        _decide(denied, reviewer)
    assert ToolCall.objects.get(pk=denied.pk).state == ToolCall.State.DENIED


def test_a_decision_after_the_deadline_expires_the_call(member_token, submit, reviewer, audit_kinds) -> None:
    held = submit(member_token.token).call
    _past_deadline(held)
    with pytest.raises(CallAlreadyDecided) as refused:
        _decide(held, reviewer)
    assert refused.value.call.state == ToolCall.State.EXPIRED
    call = ToolCall.objects.get(pk=held.pk)
    assert call.state == ToolCall.State.EXPIRED
    assert call.decided_by is None and call.started_at is None
    assert audit_kinds(call) == ["call.pending", "call.expired"]


def test_a_reviewer_of_another_team_cannot_decide(member_token, submit, outsider, audit_kinds) -> None:
    held = submit(member_token.token).call
    with pytest.raises(PermissionDenied):
        _decide(held, outsider)
    assert ToolCall.objects.get(pk=held.pk).state == ToolCall.State.PENDING
    assert audit_kinds(held) == ["call.pending"]


def test_a_plain_member_cannot_decide_even_their_own_call(member_token, submit, member) -> None:
    held = submit(member_token.token).call
    with pytest.raises(PermissionDenied):
        _decide(held, member)
    assert ToolCall.objects.get(pk=held.pk).state == ToolCall.State.PENDING


def test_a_deactivated_reviewer_cannot_decide(member_token, submit, reviewer) -> None:
    held = submit(member_token.token).call
    reviewer.is_active = False
    reviewer.save(update_fields=["is_active"])
    with pytest.raises(PermissionDenied):
        _decide(held, reviewer)


def test_always_allow_creates_a_rule_and_the_next_call_of_the_tool_is_allowed_automatically(
    member_token, submit, reviewer, team_a, audit_kinds
) -> None:
    held = submit(member_token.token, arguments={"path": "/srv/a"}).call
    _decide(held, reviewer, always_allow=True)
    rule = Rule.objects.get(team=team_a)
    assert (rule.effect, rule.server, rule.tool, rule.enabled) == ("allow", SERVER, "read_file", True)
    assert rule.created_by == reviewer
    assert rule.created_from_call_id == held.pk
    assert audit_kinds(held) == ["call.pending", "rule.created", "call.allowed"]

    again = submit(member_token.token, arguments={"path": "/srv/b"})
    assert again.reattached is False and again.run is True
    assert (again.call.state, again.call.rule_id) == ("allowed", rule.pk)
    # The rule is for this tool only.
    assert submit(member_token.token, tool="write_file").call.state == ToolCall.State.PENDING


def test_always_allow_with_deny_creates_no_rule(member_token, submit, reviewer) -> None:
    held = submit(member_token.token).call
    _decide(held, reviewer, allow=False, always_allow=True)
    assert not Rule.objects.exists()


def test_every_step_of_a_calls_life_is_audited_in_order(member_token, submit, reviewer, team_a) -> None:
    held = submit(member_token.token).call
    _decide(held, reviewer)
    call_claim(token=member_token.token, call_id=str(held.pk))
    call_report_result(
        token=member_token.token, call_id=str(held.pk), is_error=False, summary="", duration_ms=3
    )
    events = list(AuditEvent.objects.filter(call=held).order_by("pk"))
    assert [e.kind for e in events] == ["call.pending", "call.allowed", "call.started", "call.completed"]
    assert {e.team_id for e in events} == {team_a.pk}
    assert [e.actor_id for e in events] == [None, reviewer.pk, None, None]


def test_a_decision_is_broadcast_to_the_team_and_the_bridge_only_on_commit(
    member_token, submit, reviewer, team_a, django_capture_on_commit_callbacks
) -> None:
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from approvals import realtime

    layer = get_channel_layer()
    page = async_to_sync(layer.new_channel)()
    bridge = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(realtime.review_group(team_a.pk), page)
    async_to_sync(layer.group_add)(realtime.bridge_group(member_token.token.pk), bridge)
    held = submit(member_token.token).call
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        _decide(held, reviewer)
    assert len(callbacks) == 2  # nothing was sent before the commit
    for callback in callbacks:
        callback()
    update = async_to_sync(layer.receive)(page)
    shown = json.loads(update["text"])["call"]  # the page's frame, rendered once for all of them
    assert (update["type"], shown["id"], shown["state"]) == ("call.update", str(held.pk), "allowed")
    decision = async_to_sync(layer.receive)(bridge)
    assert decision["type"] == "bridge.decision"
    assert (decision["decision"]["call_id"], decision["decision"]["state"]) == (str(held.pk), "allowed")


# --- claim, result, withdraw --------------------------------------------------------------------
def test_claim_succeeds_exactly_once(member_token, submit, reviewer, audit_kinds) -> None:
    held = submit(member_token.token).call
    _decide(held, reviewer)
    call, run = call_claim(token=member_token.token, call_id=str(held.pk))
    assert run is True and call.started_at is not None
    _, run_again = call_claim(token=member_token.token, call_id=str(held.pk))
    assert run_again is False
    assert audit_kinds(held) == ["call.pending", "call.allowed", "call.started"]


def test_an_allowed_call_is_not_claimed_once_its_token_expired(member_token, submit, reviewer) -> None:
    held = submit(member_token.token).call
    _decide(held, reviewer)
    BridgeToken.objects.filter(pk=member_token.token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    with pytest.raises(TokenUnusable):
        call_claim(token=member_token.token, call_id=str(held.pk))
    assert ToolCall.objects.get(pk=held.pk).started_at is None


def test_a_held_call_cannot_be_claimed(member_token, submit) -> None:
    held = submit(member_token.token).call
    call, run = call_claim(token=member_token.token, call_id=str(held.pk))
    assert run is False and call.state == ToolCall.State.PENDING
    assert ToolCall.objects.get(pk=held.pk).started_at is None


def test_an_allowed_call_claimed_after_its_deadline_expires_instead_of_running(
    member_token, submit, reviewer, audit_kinds
) -> None:
    # No sweep ran (a Celery worker down): the claim itself holds the deadline.
    held = submit(member_token.token).call
    _decide(held, reviewer)
    _past_deadline(held)
    call, run = call_claim(token=member_token.token, call_id=str(held.pk))
    assert run is False and call.state == ToolCall.State.EXPIRED and call.started_at is None
    assert call.decided_by is not None  # loaded: the consumer builds its answer from it without a query
    assert audit_kinds(held) == ["call.pending", "call.allowed", "call.expired"]


def test_an_automatically_allowed_call_was_already_claimed_by_its_answer(
    member_token, submit, team_a
) -> None:
    _rule(team_a, "allow")
    call = submit(member_token.token).call
    assert call_claim(token=member_token.token, call_id=str(call.pk))[1] is False


@pytest.mark.parametrize(("is_error", "state"), [(False, "completed"), (True, "failed")])
def test_a_reported_result_completes_or_fails_the_call(
    member_token, submit, team_a, audit_kinds, is_error, state
) -> None:
    _rule(team_a, "allow")
    started = submit(member_token.token).call
    call = call_report_result(
        token=member_token.token,
        call_id=str(started.pk),
        is_error=is_error,
        summary="3 lines",
        duration_ms=42,
    )
    stored = ToolCall.objects.get(pk=started.pk)
    assert call.state == stored.state == state
    assert (stored.result_summary, stored.duration_ms) == ("3 lines", 42)
    assert stored.finished_at is not None
    assert audit_kinds(stored) == ["call.allowed", f"call.{state}"]


def test_a_result_for_a_call_that_never_started_is_refused(member_token, submit, reviewer) -> None:
    held = submit(member_token.token).call
    with pytest.raises(CallAlreadyDecided):
        call_report_result(
            token=member_token.token, call_id=str(held.pk), is_error=False, summary="", duration_ms=1
        )
    _decide(held, reviewer)  # allowed but not claimed
    with pytest.raises(CallAlreadyDecided):
        call_report_result(
            token=member_token.token, call_id=str(held.pk), is_error=False, summary="", duration_ms=1
        )
    assert ToolCall.objects.get(pk=held.pk).state == ToolCall.State.ALLOWED


def test_a_second_result_is_refused(member_token, submit, team_a) -> None:
    _rule(team_a, "allow")
    started = submit(member_token.token).call
    call_report_result(
        token=member_token.token, call_id=str(started.pk), is_error=False, summary="", duration_ms=1
    )
    with pytest.raises(CallAlreadyDecided):
        call_report_result(
            token=member_token.token, call_id=str(started.pk), is_error=True, summary="", duration_ms=1
        )
    assert ToolCall.objects.get(pk=started.pk).state == ToolCall.State.COMPLETED


def test_withdrawing_a_held_call_cancels_it(member_token, submit, audit_kinds) -> None:
    held = submit(member_token.token).call
    call = call_withdraw(token=member_token.token, call_id=str(held.pk), reason="client cancelled")
    assert call.state == ToolCall.State.CANCELLED
    assert call.reason == "client cancelled"
    assert ToolCall.objects.get(pk=held.pk).finished_at is not None
    assert audit_kinds(held) == ["call.pending", "call.cancelled"]


def test_a_cancelled_call_cannot_be_allowed_afterwards(member_token, submit, reviewer) -> None:
    held = submit(member_token.token).call
    call_withdraw(token=member_token.token, call_id=str(held.pk), reason="")
    with pytest.raises(CallAlreadyDecided):
        _decide(held, reviewer)
    assert ToolCall.objects.get(pk=held.pk).state == ToolCall.State.CANCELLED


def test_withdrawing_a_decided_or_running_call_changes_nothing(
    member_token, submit, team_a, audit_kinds
) -> None:
    _rule(team_a, "allow", tool="read_file")
    _rule(team_a, "deny", tool="write_file")
    running = submit(member_token.token, tool="read_file").call
    denied = submit(member_token.token, tool="write_file").call
    for call in (running, denied):
        assert call_withdraw(token=member_token.token, call_id=str(call.pk), reason="").state == call.state
    assert audit_kinds(running) == ["call.allowed"]
    assert audit_kinds(denied) == ["call.denied"]


# --- ids that are not the bridge's ----------------------------------------------------------------
BAD_IDS = ["not-a-uuid", "", "'; DROP TABLE approvals_toolcall; --", "0" * 64, str(uuid.uuid4())]


@pytest.mark.parametrize("call_id", BAD_IDS, ids=["malformed", "empty", "injection", "long", "forged"])
def test_forged_and_malformed_call_ids_are_not_found(member_token, reviewer, call_id) -> None:
    token = member_token.token
    with pytest.raises(CallNotFound):
        call_claim(token=token, call_id=call_id)
    with pytest.raises(CallNotFound):
        call_report_result(token=token, call_id=call_id, is_error=False, summary="", duration_ms=1)
    with pytest.raises(CallNotFound):
        call_withdraw(token=token, call_id=call_id, reason="")
    with pytest.raises(CallNotFound):
        call_decide(call_id=call_id, reviewer=reviewer, allow=True)


def test_another_tokens_call_is_not_found(member_token, outsider_token, submit, team_b) -> None:
    _rule(team_b, "allow")
    foreign = submit(outsider_token.token).call  # allowed and running, in team bravo
    held = submit(outsider_token.token, tool="write_file").call
    for call in (foreign, held):
        with pytest.raises(CallNotFound):
            call_claim(token=member_token.token, call_id=str(call.pk))
        with pytest.raises(CallNotFound):
            call_withdraw(token=member_token.token, call_id=str(call.pk), reason="")
        with pytest.raises(CallNotFound):
            call_report_result(
                token=member_token.token, call_id=str(call.pk), is_error=True, summary="", duration_ms=1
            )
    assert ToolCall.objects.get(pk=held.pk).state == ToolCall.State.PENDING


def test_status_reports_only_the_tokens_own_calls(member_token, outsider_token, submit) -> None:
    own = submit(member_token.token).call
    foreign = submit(outsider_token.token).call
    found = call_states_for_bridge(
        token=member_token.token, call_ids=[str(own.pk), str(foreign.pk), "garbage", str(uuid.uuid4())]
    )
    assert [c.pk for c in found] == [own.pk]


# --- deadlines -----------------------------------------------------------------------------------
def test_calls_expire_due_expires_held_and_unclaimed_calls_past_their_deadline(
    member_token, submit, reviewer, team_a, audit_kinds
) -> None:
    overdue = submit(member_token.token, arguments={"n": 1}).call
    unclaimed = submit(member_token.token, arguments={"n": 2}).call
    _decide(unclaimed, reviewer)
    waiting = submit(member_token.token, arguments={"n": 3}).call
    _rule(team_a, "allow", tool="list_*")
    running = submit(member_token.token, tool="list_directory").call
    for call in (overdue, unclaimed, running):
        _past_deadline(call)

    assert calls_expire_due() == 2
    states = dict(ToolCall.objects.values_list("pk", "state"))
    assert states[overdue.pk] == states[unclaimed.pk] == ToolCall.State.EXPIRED
    assert states[waiting.pk] == ToolCall.State.PENDING
    assert states[running.pk] == ToolCall.State.ALLOWED  # already handed to the bridge: it runs
    assert audit_kinds(overdue) == ["call.pending", "call.expired"]
    assert audit_kinds(unclaimed) == ["call.pending", "call.allowed", "call.expired"]
    assert calls_expire_due() == 0


def test_an_expired_call_cannot_be_claimed(member_token, submit, reviewer) -> None:
    held = submit(member_token.token).call
    _decide(held, reviewer)
    _past_deadline(held)
    calls_expire_due()
    assert call_claim(token=member_token.token, call_id=str(held.pk))[1] is False


# --- two reviewers at once --------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_two_reviewers_deciding_at_once_make_exactly_one_decision(
    member_token, submit, reviewer, admin
) -> None:
    """On PostgreSQL the two decisions really race; SQLite serialises writers, so there they run one
    after the other from two threads. Either way exactly one decision is recorded."""
    held = submit(member_token.token).call
    concurrent = connection.vendor == "postgresql"
    barrier = threading.Barrier(2 if concurrent else 1)
    outcomes: dict[str, Any] = {}

    def decide(who: Any, allow: bool) -> None:
        try:
            barrier.wait(timeout=10)
            outcomes[who.email] = call_decide(call_id=str(held.pk), reviewer=who, allow=allow).state
        except CallAlreadyDecided as exc:
            outcomes[who.email] = exc
        except BaseException as exc:
            outcomes[who.email] = f"unexpected {exc!r}"
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=decide, args=(reviewer, True)),
        threading.Thread(target=decide, args=(admin, False)),
    ]
    for thread in threads:
        thread.start()
        if not concurrent:
            thread.join()
    for thread in threads:
        thread.join(timeout=30)

    assert not any(isinstance(v, str) and v.startswith("unexpected") for v in outcomes.values()), outcomes
    winners = {k: v for k, v in outcomes.items() if not isinstance(v, CallAlreadyDecided)}
    losers = [v for v in outcomes.values() if isinstance(v, CallAlreadyDecided)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    ((winner, state),) = winners.items()
    call = ToolCall.objects.get(pk=held.pk)
    assert call.state == state and call.decided_by.email == winner
    assert losers[0].call.state == state  # the loser is told what won
    decisions = AuditEvent.objects.filter(call=call, kind__in=["call.allowed", "call.denied"])
    assert decisions.count() == 1

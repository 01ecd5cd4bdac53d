"""A call's life through the real bridge, Daphne and upstream, decided over the reviewer socket."""

from __future__ import annotations

import anyio
import pytest

from approvals.models import Rule, ToolCall
from tests.e2e.conftest import (
    SignoffServer,
    TeamSetup,
    bridge,
    call_row,
    free_port,
    make_team,
    reported,
    reviewer_socket,
    text_of,
)


async def test_pending_call_is_released_by_a_reviewer_and_returns_the_upstream_result(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    async with (
        reviewer_socket(signoff, team.reviewer, team.team.slug) as reviewer,
        bridge(tmp_path, url=signoff.url, token=team.raw_token) as b,
        anyio.create_task_group() as tasks,
    ):
        outcome: dict = {}

        async def call() -> None:
            outcome["result"] = await b.session.call_tool("echo", {"text": "hello <b>world</b>"})

        tasks.start_soon(call)
        held = await reviewer.pending_call("echo")
        assert held["arguments"] == {"text": "hello <b>world</b>"}
        assert held["requester"] == team.member.email
        assert b.upstream_calls() == [], "a held call must not reach the upstream"
        answer = await reviewer.decide(held["id"], "allow")
        assert answer == {"type": "decided", "call_id": held["id"], "state": "allowed"}

    result = outcome["result"]
    assert not result.is_error
    assert text_of(result) == "hello <b>world</b>"
    assert [c["tool"] for c in b.upstream_calls()] == ["echo"]
    row = await reported(held["id"])
    assert row.state == ToolCall.State.COMPLETED
    assert row.decided_by == team.reviewer
    assert row.result_summary == "hello <b>world</b>"
    assert row.duration_ms is not None
    kinds = list(row.events.order_by("id").values_list("kind", flat=True))
    assert kinds == ["call.pending", "call.allowed", "call.started", "call.completed"]


async def test_denied_call_never_reaches_the_upstream_and_tells_the_model_why(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    async with (
        reviewer_socket(signoff, team.reviewer, team.team.slug) as reviewer,
        bridge(tmp_path, url=signoff.url, token=team.raw_token) as b,
        anyio.create_task_group() as tasks,
    ):
        outcome: dict = {}

        async def call() -> None:
            outcome["result"] = await b.session.call_tool(
                "write_file", {"path": "/etc/passwd", "content": "x"}
            )

        tasks.start_soon(call)
        held = await reviewer.pending_call("write_file")
        await reviewer.decide(held["id"], "deny", reason="never touch /etc")

    result = outcome["result"]
    assert result.is_error
    assert "not run" in text_of(result)
    assert "never touch /etc" in text_of(result)
    assert b.upstream_calls() == []
    assert call_row(held["id"]).state == ToolCall.State.DENIED


async def test_expired_call_never_reaches_the_upstream(signoff: SignoffServer, tmp_path) -> None:
    setup = make_team(deadline=2)
    async with bridge(tmp_path, url=signoff.url, token=setup.raw_token) as b:
        with anyio.fail_after(20):
            result = await b.session.call_tool("write_file", {"path": "a", "content": "b"})
    assert result.is_error
    assert "deadline" in text_of(result)
    assert b.upstream_calls() == []
    call = ToolCall.objects.get(team=setup.team)
    assert call.state == ToolCall.State.EXPIRED


async def test_expiry_happens_on_the_server_with_no_bridge_and_no_page(
    signoff: SignoffServer, tmp_path
) -> None:
    setup = make_team(deadline=2)
    async with bridge(
        tmp_path, url=signoff.url, token=setup.raw_token, bridge_args=("--client-timeout", "0.5")
    ) as b:
        result = await b.session.call_tool("echo", {"text": "later"})
        assert "still waiting for approval" in text_of(result)
    # The bridge is gone; only the server's sweeper (or Celery beat) can expire the call now.
    call = ToolCall.objects.get(team=setup.team)
    with anyio.fail_after(15):
        while call.state == ToolCall.State.PENDING:
            await anyio.sleep(0.2)
            call.refresh_from_db()
    assert call.state == ToolCall.State.EXPIRED


async def test_rule_allows_without_a_reviewer_and_unknown_tool_is_denied(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    Rule.objects.create(team=team.team, effect="allow", server="test", tool="echo")
    async with bridge(tmp_path, url=signoff.url, token=team.raw_token) as b:
        allowed = await b.session.call_tool("echo", {"text": "auto"})
        unknown = await b.session.call_tool("rm_rf", {"path": "/"})
    assert text_of(allowed) == "auto" and not allowed.is_error
    assert unknown.is_error and "no tool named 'rm_rf'" in text_of(unknown)
    assert [c["tool"] for c in b.upstream_calls()] == ["echo"]


async def test_whitelist_mode_denies_what_no_rule_allows(signoff: SignoffServer, tmp_path) -> None:
    setup = make_team(mode="whitelist")
    async with bridge(tmp_path, url=signoff.url, token=setup.raw_token) as b:
        result = await b.session.call_tool("echo", {"text": "x"})
    assert result.is_error and "only allows calls that a rule allows" in text_of(result)
    assert b.upstream_calls() == []


async def test_always_allow_creates_a_rule_that_releases_the_next_call(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    async with (
        reviewer_socket(signoff, team.reviewer, team.team.slug) as reviewer,
        bridge(tmp_path, url=signoff.url, token=team.raw_token) as b,
        anyio.create_task_group() as tasks,
    ):
        outcome: dict = {}

        async def call() -> None:
            outcome["first"] = await b.session.call_tool("echo", {"text": "one"})

        tasks.start_soon(call)
        held = await reviewer.pending_call("echo")
        await reviewer.decide(held["id"], "always_allow")
    assert text_of(outcome["first"]) == "one"
    async with bridge(tmp_path, url=signoff.url, token=team.raw_token) as b2:
        second = await b2.session.call_tool("echo", {"text": "two"})
    assert text_of(second) == "two"
    rule = Rule.objects.get(team=team.team)
    assert (rule.effect, rule.server, rule.tool, rule.created_by) == ("allow", "test", "echo", team.reviewer)


async def test_client_timeout_answers_early_and_the_repeated_call_runs_exactly_once(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    async with (
        reviewer_socket(signoff, team.reviewer, team.team.slug) as reviewer,
        bridge(tmp_path, url=signoff.url, token=team.raw_token, bridge_args=("--client-timeout", "1")) as b,
    ):
        first = await b.session.call_tool("write_file", {"path": "notes.txt", "content": "hi"})
        assert first.is_error and "still waiting for approval" in text_of(first)
        held = await reviewer.pending_call("write_file")
        assert (await reviewer.decide(held["id"], "allow"))["state"] == "allowed"

        again = await b.session.call_tool("write_file", {"path": "notes.txt", "content": "hi"})
        assert not again.is_error and text_of(again) == "wrote 2 bytes to notes.txt"
        assert len(b.upstream_calls()) == 1
        assert (await reported(held["id"])).state == ToolCall.State.COMPLETED

        # A different call is a new call, held on its own; the upstream still ran only once.
        other = await b.session.call_tool("write_file", {"path": "notes.txt", "content": "bye"})
        assert other.is_error and "still waiting" in text_of(other)
        assert len(b.upstream_calls()) == 1


async def test_progress_is_sent_while_a_call_waits(signoff: SignoffServer, team: TeamSetup, tmp_path) -> None:
    messages: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message)

    async with bridge(
        tmp_path, url=signoff.url, token=team.raw_token, bridge_args=("--client-timeout", "1")
    ) as b:
        await b.session.call_tool("echo", {"text": "p"}, progress_callback=on_progress)
    assert "waiting for approval in Signoff…" in messages


async def test_client_cancellation_withdraws_the_held_call(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    async with (
        reviewer_socket(signoff, team.reviewer, team.team.slug) as reviewer,
        bridge(tmp_path, url=signoff.url, token=team.raw_token) as b,
    ):
        with anyio.move_on_after(2):
            await b.session.call_tool("echo", {"text": "cancel me"})
        held = await reviewer.pending_call("echo")
        gone = await reviewer.next(lambda m: m["type"] == "call" and m["call"]["id"] == held["id"])
        assert gone["call"]["state"] == "cancelled"
    assert call_row(held["id"]).state == ToolCall.State.CANCELLED
    assert b.upstream_calls() == []


async def test_two_reviewers_deciding_at_once_make_exactly_one_decision(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    async with (
        reviewer_socket(signoff, team.reviewer, team.team.slug) as first,
        reviewer_socket(signoff, team.reviewer2, team.team.slug) as second,
        bridge(tmp_path, url=signoff.url, token=team.raw_token) as b,
        anyio.create_task_group() as tasks,
    ):
        outcome: dict = {}

        async def call() -> None:
            outcome["result"] = await b.session.call_tool("write_file", {"path": "x", "content": "y"})

        tasks.start_soon(call)
        held = await first.pending_call("write_file")
        await second.pending_call("write_file")
        answers: dict = {}

        async def decide(name: str, socket, decision: str) -> None:
            answers[name] = await socket.decide(held["id"], decision)

        async with anyio.create_task_group() as race:
            race.start_soon(decide, "allow", first, "allow")
            race.start_soon(decide, "deny", second, "deny")

    kinds = sorted(a["type"] for a in answers.values())
    assert kinds == ["decided", "error"]
    loser = next(a for a in answers.values() if a["type"] == "error")
    assert "already decided" in loser["message"]
    winner = next(name for name, a in answers.items() if a["type"] == "decided")
    row = call_row(held["id"])
    decisions = row.events.filter(kind__in=["call.allowed", "call.denied"]).count()
    assert decisions == 1
    if winner == "allow":
        assert not outcome["result"].is_error and len(b.upstream_calls()) == 1
    else:
        assert outcome["result"].is_error and b.upstream_calls() == []


async def test_server_down_at_start_denies_the_call(team: TeamSetup, tmp_path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    async with bridge(
        tmp_path, url=closed, token=team.raw_token, bridge_args=("--connect-timeout", "1")
    ) as b:
        result = await b.session.call_tool("echo", {"text": "x"})
    assert result.is_error
    assert "not run" in text_of(result) and "unreachable" in text_of(result)
    assert b.upstream_calls() == []


@pytest.mark.parametrize("token", ["sgo_deadbeef_forged", "not-a-token"])
async def test_unknown_token_is_refused_and_the_call_denied(
    signoff: SignoffServer, tmp_path, token: str
) -> None:
    async with bridge(tmp_path, url=signoff.url, token=token) as b:
        result = await b.session.call_tool("echo", {"text": "x"})
    assert result.is_error and "refused the token" in text_of(result)
    assert b.upstream_calls() == []


async def test_oversized_arguments_are_refused_and_the_bridge_stays_usable(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    Rule.objects.create(team=team.team, effect="allow", server="test", tool="*")
    async with bridge(tmp_path, url=signoff.url, token=team.raw_token) as b:
        huge = await b.session.call_tool("write_file", {"path": "big", "content": "x" * 300_000})
        small = await b.session.call_tool("echo", {"text": "still fine"})
    assert huge.is_error and "more than Signoff accepts" in text_of(huge)
    assert text_of(small) == "still fine"
    assert [c["tool"] for c in b.upstream_calls()] == ["echo"]


async def test_arguments_that_break_the_tools_schema_are_denied_before_any_rule(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    Rule.objects.create(team=team.team, effect="allow", server="test", tool="*")
    async with bridge(tmp_path, url=signoff.url, token=team.raw_token) as b:
        wrong_type = await b.session.call_tool("echo", {"text": 42})
        missing = await b.session.call_tool("write_file", {"path": "only/a/path"})
        fine = await b.session.call_tool("echo", {"text": "a string"})
    assert wrong_type.is_error and "invalid input at /text" in text_of(wrong_type)
    assert missing.is_error and "invalid input" in text_of(missing) and "content" in text_of(missing)
    assert text_of(fine) == "a string"
    assert [c["arguments"] for c in b.upstream_calls()] == [{"text": "a string"}]

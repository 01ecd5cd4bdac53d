"""Several web processes behind one Redis and one database (DESIGN §7; issue 6).

With ``REDIS_URL`` set, ``signoff`` ("A") and ``admin_server`` ("B") are two real Daphne processes on the same
channels-redis layer and the same PostgreSQL database: the bridge connects to A, a reviewer's page to B, and a
second reviewer's page to A. What one process does must reach the others: the held call appears on B's queue
as it is made on A, B's decision releases it on A (it runs once), B's Always-Allow rule applies to A's next
call (each process caches its compiled rules per team and rebuilds them when the team's ``rules_version`` in
the database moved), and the call leaves A's queue when B decides it.

On the embedded default (in-memory channel layer, one process) A and B are the same Daphne: the same tests
then check the same guarantees within that process.
"""

from __future__ import annotations

import anyio

from approvals.models import Rule, ToolCall
from tests.e2e.conftest import (
    SignoffServer,
    TeamSetup,
    bridge,
    left_queue,
    reported,
    reviewer_socket,
    start_call,
    text_of,
)


async def test_a_call_held_on_one_process_is_decided_on_another_and_runs_once(
    signoff: SignoffServer, admin_server: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    slug = team.team.slug
    async with (
        reviewer_socket(admin_server, team.reviewer, slug) as on_b,
        reviewer_socket(signoff, team.reviewer2, slug) as on_a,
        bridge(tmp_path, url=signoff.url, token=team.raw_token) as b,
        anyio.create_task_group() as tasks,
    ):
        # Both queues were empty when the call was made: it reaches B live, through the channel layer.
        assert (await on_b.next(lambda m: m["type"] == "snapshot"))["calls"] == []
        assert (await on_a.next(lambda m: m["type"] == "snapshot"))["calls"] == []
        outcome = start_call(tasks, b, "echo", {"text": "across processes"})
        held = await on_b.pending_call("echo")
        assert (await on_a.pending_call("echo"))["id"] == held["id"]
        assert ToolCall.objects.get(pk=held["id"]).state == ToolCall.State.PENDING
        assert b.upstream_calls() == []

        assert (await on_b.decide(held["id"], "allow", "fine from B"))["state"] == "allowed"
        # The second reviewer, on A, sees the call leave the queue.
        gone = await on_a.next(left_queue(held["id"]), timeout=20)
        assert (
            gone["call"]["state"] == "allowed" and gone["call"]["decided_by"] == team.reviewer.get_username()
        )
        result = await outcome.wait()
    assert not result.is_error and text_of(result) == "across processes"
    assert [c["arguments"] for c in b.upstream_calls()] == [{"text": "across processes"}]
    row = await reported(held["id"])
    assert row.state == ToolCall.State.COMPLETED
    assert row.decided_by_id == team.reviewer.pk and row.decided_via == ToolCall.DecidedVia.HUMAN


async def test_a_deny_on_one_process_blocks_the_call_on_another(
    signoff: SignoffServer, admin_server: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    slug = team.team.slug
    async with (
        reviewer_socket(admin_server, team.reviewer, slug) as on_b,
        reviewer_socket(signoff, team.reviewer2, slug) as on_a,
        bridge(tmp_path, url=signoff.url, token=team.raw_token) as b,
        anyio.create_task_group() as tasks,
    ):
        outcome = start_call(tasks, b, "write_file", {"path": "/etc/passwd", "content": "x"})
        held = await on_b.pending_call("write_file")
        assert (await on_b.decide(held["id"], "deny", "not that file"))["state"] == "denied"
        assert (await on_a.next(left_queue(held["id"]), timeout=20))["call"]["state"] == "denied"
        result = await outcome.wait()
    assert result.is_error and "not run" in text_of(result) and "not that file" in text_of(result)
    assert b.upstream_calls() == []
    row = ToolCall.objects.get(pk=held["id"])
    assert row.state == ToolCall.State.DENIED and row.started_at is None


async def test_always_allow_made_on_one_process_applies_to_the_next_call_on_another(
    signoff: SignoffServer, admin_server: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    slug = team.team.slug
    async with (
        reviewer_socket(admin_server, team.reviewer, slug) as on_b,
        bridge(tmp_path, url=signoff.url, token=team.raw_token) as b,
        anyio.create_task_group() as tasks,
    ):
        # A evaluates the team's rules for this call (none match) and caches them, compiled.
        first = start_call(tasks, b, "write_file", {"path": "notes/1.txt", "content": "one"})
        held = await on_b.pending_call("write_file")
        assert (await on_b.decide(held["id"], "always_allow"))["state"] == "allowed"
        assert text_of(await first.wait()) == "wrote 3 bytes to notes/1.txt"
        rule = Rule.objects.get(team=team.team, created_from_call_id=held["id"])
        # The rule was made on B; A's next call of the tool must see it without anyone deciding.
        with anyio.fail_after(30):
            second = await b.session.call_tool("write_file", {"path": "notes/2.txt", "content": "two"})
    assert not second.is_error and text_of(second) == "wrote 3 bytes to notes/2.txt"
    assert [c["arguments"]["path"] for c in b.upstream_calls()] == ["notes/1.txt", "notes/2.txt"]
    row = ToolCall.objects.get(team=team.team, arguments__path="notes/2.txt")
    assert row.decided_via == ToolCall.DecidedVia.RULE and row.rule_id == rule.pk
    assert (await reported(str(row.pk))).state == ToolCall.State.COMPLETED

"""The audit log: one hash chain, appended under a lock, refused to UPDATE and DELETE, verified by a
command that names the first broken link (docs/audit.md). Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import itertools
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from approvals.models import AuditEvent, Team, ToolCall
from approvals.services.audit import (
    GENESIS_HASH,
    audit_guard_missing,
    audit_record,
    audit_verify,
    hash_of,
)
from approvals.services.calls import call_decide
from approvals.services.tokens import token_issue, token_revoke

from .conftest import Issued

pytestmark = pytest.mark.django_db

TABLE = AuditEvent._meta.db_table
DOCS = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


# --- helpers --------------------------------------------------------------------------------------
def chain() -> list[AuditEvent]:
    return list(AuditEvent.objects.order_by("seq"))


def verify(*args: str) -> str:
    out = StringIO()
    call_command("verify_audit", *args, stdout=out)
    return out.getvalue()


def verify_fails(*args: str) -> CommandError:
    with pytest.raises(CommandError) as failure:
        verify(*args)
    return failure.value


def record_some(team: Any, count: int) -> list[AuditEvent]:
    return [audit_record(kind="test.event", team=team, n=i) for i in range(count)]


def sql(statement: str, params: list[Any] | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])


@contextlib.contextmanager
def guard_taken_away() -> Iterator[None]:
    """Tamper as someone who may run DDL would: take the triggers away (and put them back after)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")
            yield
            cursor.execute(f"ALTER TABLE {TABLE} ENABLE TRIGGER USER")
        else:
            cursor.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s", [TABLE]
            )
            triggers = cursor.fetchall()
            for name, _ in triggers:
                cursor.execute(f"DROP TRIGGER {name}")
            yield
            for _, create in triggers:
                cursor.execute(create)


# --- the chain ------------------------------------------------------------------------------------
def test_every_event_the_services_write_joins_one_chain(
    member_token: Issued, submit, reviewer, admin
) -> None:
    held = submit(member_token.token).call
    call_decide(call_id=str(held.pk), reviewer=reviewer, allow=False, reason="not today")
    token_revoke(token=member_token.token, by=admin)
    events = chain()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == before.hash
        assert after.id > before.id and after.created_at >= before.created_at
    assert all(hash_of(e) == e.hash and re.fullmatch("[0-9a-f]{64}", e.hash) for e in events)
    assert {
        "team.created",
        "member.added",
        "token.issued",
        "call.pending",
        "call.denied",
        "token.revoked",
    } <= {e.kind for e in events}


def test_the_hash_is_sha256_of_the_documented_canonical_form(team_a: Team) -> None:
    event = audit_record(kind="test.format", team=team_a, zeta="é ☃", alpha=[1, None, True])
    created = event.created_at.astimezone(datetime.UTC)
    form = (
        f'["signoff-audit/1",{event.seq},"{event.prev_hash}","{created:%Y-%m-%dT%H:%M:%S.%f}Z",'
        f'"test.format",{team_a.pk},null,null,null,{{"alpha":[1,null,true],"zeta":"\\u00e9 \\u2603"}}]'
    )
    assert event.hash == hashlib.sha256(form.encode("ascii")).hexdigest()


def test_what_is_read_back_hashes_like_what_was_written(team_a: Team) -> None:
    """Data is stored in a form both databases give back unchanged (jsonb rewrites 1e20 as an integer,
    and refuses NUL and lone surrogates)."""
    when = datetime.datetime(2025, 1, 31, 9, 5, tzinfo=datetime.UTC)
    event = audit_record(
        kind="test.roundtrip",
        team=team_a,
        floats=[1e20, 2.0, 0.5, 1.5e-7, -0.0, 123456.789],
        big=10**30,
        text="é ☃ 😀 a\x00b \ud800 ?",
        nested={"b": {"y": [], "x": {}}, "a": None},
        keys={1: "int key"},
        when=when,
        ref=UUID(int=7),
    )
    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.data == event.data
    assert stored.data["floats"] == [100000000000000000000, 2, 0.5, 1.5e-7, 0, 123456.789]
    assert stored.data["text"] == "é ☃ 😀 a\ufffdb \ufffd ?"
    assert stored.data["keys"] == {"1": "int key"} and stored.data["when"] == "2025-01-31T09:05:00Z"
    assert hash_of(stored) == stored.hash == event.hash
    assert audit_verify().intact


def test_data_that_json_cannot_hold_is_refused_before_anything_is_written(team_a: Team) -> None:
    before = AuditEvent.objects.count()
    with pytest.raises(ValueError):
        audit_record(kind="test.nan", team=team_a, ratio=float("nan"))
    assert AuditEvent.objects.count() == before


def test_a_rolled_back_event_leaves_no_gap(team_a: Team) -> None:
    head = audit_record(kind="test.kept", team=team_a)
    with contextlib.suppress(RuntimeError), transaction.atomic():
        audit_record(kind="test.rolled_back", team=team_a)
        raise RuntimeError("the change is abandoned")
    after = audit_record(kind="test.kept", team=team_a)
    assert after.seq == head.seq + 1 and after.prev_hash == head.hash
    assert not AuditEvent.objects.filter(kind="test.rolled_back").exists()


def test_the_actors_name_stays_in_the_record(team_a: Team, admin: Any, member: Any) -> None:
    token, _ = token_issue(team=team_a, user=member, name="laptop", by=admin)
    event = AuditEvent.objects.get(kind="token.issued", token=token)
    assert event.actor_id == admin.pk
    assert event.data["actor"] == {"username": "ada@example.com", "email": "ada@example.com"}
    system = audit_record(kind="test.system", team=team_a)
    assert "actor" not in system.data


def test_appending_costs_one_extra_statement_the_locked_read_of_the_head(team_a: Team) -> None:
    audit_record(kind="test.warm", team=team_a)
    with CaptureQueriesContext(connection) as queries:
        audit_record(kind="test.cost", team=team_a, n=1)
    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) == 2, statements
    if connection.vendor == "postgresql":
        assert "signoff_audit_lock_head()" in statements[0]
    else:
        assert "ORDER BY seq DESC LIMIT 1" in statements[0]
    assert statements[1].startswith("INSERT")


def test_an_actor_costs_one_more_read_by_primary_key(team_a: Team, admin: Any) -> None:
    with CaptureQueriesContext(connection) as queries:
        audit_record(kind="test.cost", team=team_a, actor_id=admin.pk)
    assert len(queries.captured_queries) == 3


# --- concurrency ----------------------------------------------------------------------------------
@contextlib.contextmanager
def database_for_threads() -> Iterator[None]:
    """Where the threads' own connections go. PostgreSQL: the test database. SQLite: the test database
    lives in memory with a shared cache, where a second writer fails at once ("table is locked") instead
    of waiting its turn; so the threads get a file copy of it, opened with the production options (WAL,
    BEGIN IMMEDIATE, a 30 s busy timeout), which is copied back when they are done."""
    if connection.vendor != "sqlite" or not connection.is_in_memory_db():
        yield
        return
    connection.ensure_connection()
    memory = connection.connection
    original = connections.settings[DEFAULT_DB_ALIAS]
    with tempfile.TemporaryDirectory(prefix="signoff-audit-race-") as directory:
        path = os.path.join(directory, "race.sqlite3")
        with contextlib.closing(sqlite3.connect(path)) as file:
            memory.backup(file)
        connections.settings[DEFAULT_DB_ALIAS] = {**original, "NAME": path}
        try:
            yield
        finally:
            connections.settings[DEFAULT_DB_ALIAS] = original
        with contextlib.closing(sqlite3.connect(path)) as file:
            file.backup(memory)


@pytest.mark.django_db(transaction=True)
def test_appenders_racing_from_threads_never_fork_the_chain(team_a: Team) -> None:
    """Eight threads append at once, each event in its own transaction that lingers a moment after the
    append (the others queue behind its lock). On PostgreSQL they really race; on SQLite they share a
    database file as production processes do. Either way: one unbroken chain, every event in it once."""
    threads, appends = 8, 15
    start = threading.Barrier(threads)
    failures: list[str] = []
    existing = AuditEvent.objects.count()

    def append(thread: int) -> None:
        try:
            start.wait(timeout=10)
            for n in range(appends):
                with transaction.atomic():
                    audit_record(kind="test.race", team=team_a, thread=thread, n=n)
                    time.sleep(0.002)
        except BaseException as exc:
            failures.append(f"thread {thread}: {exc!r}")
        finally:
            connections.close_all()

    with database_for_threads():
        workers = [threading.Thread(target=append, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
    assert failures == []
    raced = AuditEvent.objects.filter(kind="test.race").values_list("data", flat=True)
    assert sorted((d["thread"], d["n"]) for d in raced) == [
        (t, n) for t in range(threads) for n in range(appends)
    ]
    result = audit_verify()
    assert result.intact, result.broken
    assert result.events == result.head_seq == existing + threads * appends


# --- append-only ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            lambda e: AuditEvent.objects.filter(pk=e.pk).update(kind="nothing.happened"), id="update"
        ),
        pytest.param(lambda e: AuditEvent.objects.filter(pk=e.pk).delete(), id="delete"),
        pytest.param(lambda e: AuditEvent.objects.all().delete(), id="delete-all"),
        pytest.param(lambda e: e.delete(), id="instance-delete"),
        pytest.param(lambda e: (setattr(e, "data", {}), e.save()), id="instance-save"),
        pytest.param(
            lambda e: sql(f"UPDATE {TABLE} SET data = %s WHERE id = %s", ["{}", e.pk]), id="raw-update"
        ),
        pytest.param(lambda e: sql(f"DELETE FROM {TABLE} WHERE id = %s", [e.pk]), id="raw-delete"),
    ],
)
def test_the_database_refuses_to_change_or_delete_an_event(team_a: Team, change: Any) -> None:
    event = audit_record(kind="test.kept", team=team_a, note="as it was")
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        change(event)
    assert AuditEvent.objects.get(pk=event.pk).data == {"note": "as it was"}
    assert audit_verify().intact


def test_wiping_the_table_is_refused(team_a: Team) -> None:
    record_some(team_a, 2)
    wipe = f"TRUNCATE {TABLE}" if connection.vendor == "postgresql" else f"DELETE FROM {TABLE}"
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        sql(wipe)
    assert AuditEvent.objects.count() >= 2


def test_deleting_a_user_or_a_team_leaves_their_audit_rows_untouched(
    member_token: Issued, submit, reviewer: Any
) -> None:
    team = member_token.token.team
    held = submit(member_token.token).call
    call_decide(call_id=str(held.pk), reviewer=reviewer, allow=True)
    before = {e.pk: (e.hash, e.actor_id, e.team_id, e.token_id, e.call_id) for e in chain()}
    decided = AuditEvent.objects.get(kind="call.allowed", call_id=held.pk)

    get_user_model().objects.filter(pk=reviewer.pk).delete()  # decided_by is cleared; the audit row is not
    ToolCall.objects.filter(pk=held.pk).delete()
    Team.objects.filter(pk=team.pk).delete()  # its tokens and memberships go with it

    assert not ToolCall.objects.filter(pk=held.pk).exists()
    after = {e.pk: (e.hash, e.actor_id, e.team_id, e.token_id, e.call_id) for e in chain()}
    assert after == before
    decided.refresh_from_db()
    assert decided.actor_id == reviewer.pk and decided.data["actor"]["email"] == "rita@example.com"
    assert audit_verify().intact


@pytest.mark.django_db(transaction=True)
def test_flush_still_empties_everything_and_puts_the_guard_back(team_a: Team) -> None:
    record_some(team_a, 3)
    call_command("flush", interactive=False, verbosity=0)
    assert AuditEvent.objects.count() == 0 and Team.objects.count() == 0
    assert audit_guard_missing() == []
    with pytest.raises(IntegrityError), transaction.atomic():
        AuditEvent.objects.filter(pk=audit_record(kind="test.after_flush", team=None).pk).delete()


# --- verify_audit ---------------------------------------------------------------------------------
def test_an_intact_chain_verifies(team_a: Team) -> None:
    events = record_some(team_a, 4)
    head = chain()[-1]
    out = verify()
    assert f"Audit chain intact: {len(chain())} event(s)" in out
    assert f"head {head.seq}:{head.hash}" in out and "Append-only guard: in place." in out
    assert events[-1].pk == head.pk


def test_an_empty_chain_verifies() -> None:
    assert "no events yet" in verify()


def test_a_changed_event_is_named(team_a: Team) -> None:
    events = record_some(team_a, 5)
    target = events[2]
    with guard_taken_away():
        sql(f"UPDATE {TABLE} SET data = %s WHERE id = %s", [json.dumps({"n": 99}), target.pk])
    failure = verify_fails()
    assert failure.returncode == 1
    assert f"BROKEN at seq {target.seq} (id {target.pk}): content does not match its hash" in str(failure)


def test_a_rewritten_event_with_a_recomputed_hash_breaks_the_next_link(team_a: Team) -> None:
    events = record_some(team_a, 5)
    target, following = events[1], events[2]
    forged = AuditEvent.objects.get(pk=target.pk)
    forged.data = {"n": "forged"}
    forged.hash = hash_of(forged)
    with guard_taken_away():
        sql(
            f"UPDATE {TABLE} SET data = %s, hash = %s WHERE id = %s",
            [json.dumps(forged.data), forged.hash, target.pk],
        )
    failure = verify_fails()
    assert (
        f"BROKEN at seq {following.seq} (id {following.pk}): prev_hash is not the hash of seq {target.seq} "
        f"(id {target.pk})" in str(failure)
    )


def test_a_deleted_event_is_named(team_a: Team) -> None:
    events = record_some(team_a, 5)
    gone, next_one = events[2], events[3]
    with guard_taken_away():
        sql(f"DELETE FROM {TABLE} WHERE id = %s", [gone.pk])
    failure = verify_fails()
    assert f"BROKEN at seq {next_one.seq} (id {next_one.pk}): seq {gone.seq} missing" in str(failure)
    assert f"{gone.seq - 1} event(s) before it verified" in str(failure)


def test_reordered_events_are_named(team_a: Team) -> None:
    events = record_some(team_a, 5)
    first, second = events[1], events[2]
    with guard_taken_away():  # swap their places in the chain
        sql(f"UPDATE {TABLE} SET seq = %s WHERE id = %s", [10**12, first.pk])
        sql(f"UPDATE {TABLE} SET seq = %s WHERE id = %s", [first.seq, second.pk])
        sql(f"UPDATE {TABLE} SET seq = %s WHERE id = %s", [second.seq, first.pk])
    failure = verify_fails()
    assert f"BROKEN at seq {first.seq} (id {second.pk}): content does not match its hash" in str(failure)


def test_an_event_deleted_and_inserted_again_is_named(team_a: Team) -> None:
    events = record_some(team_a, 5)
    moved, next_one = events[1], events[2]
    columns = [
        "seq",
        "prev_hash",
        "hash",
        "created_at",
        "kind",
        "team_id",
        "actor_id",
        "token_id",
        "call_id",
        "data",
    ]
    with guard_taken_away():
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {', '.join(columns)} FROM {TABLE} WHERE id = %s", [moved.pk])
            row = cursor.fetchone()
        sql(f"DELETE FROM {TABLE} WHERE id = %s", [moved.pk])
        sql(
            f"INSERT INTO {TABLE} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
            list(row),
        )
    assert AuditEvent.objects.get(seq=moved.seq).pk > next_one.pk  # same content, new place in the table
    failure = verify_fails()
    assert f"BROKEN at seq {next_one.seq} (id {next_one.pk}): id is below the id of seq {moved.seq}" in str(
        failure
    )


def test_a_cut_off_end_needs_an_anchor_to_be_caught(team_a: Team) -> None:
    record_some(team_a, 5)
    head = chain()[-1]
    anchor = f"{head.seq}:{head.hash}"
    assert f"Anchor {anchor} found" in verify("--anchor", anchor)
    with guard_taken_away():
        sql(f"DELETE FROM {TABLE} WHERE seq >= %s", [head.seq - 1])
    verify()  # the shorter chain is a valid chain: that is the limit of a chain alone
    failure = verify_fails("--anchor", anchor)
    assert (
        f"BROKEN at seq {head.seq} (not in the chain): the anchored event is gone: the chain ends at seq "
        f"{head.seq - 2}" in str(failure)
    )


def test_a_rewritten_chain_does_not_match_its_anchor(team_a: Team) -> None:
    record_some(team_a, 3)
    head = chain()[-1]
    with guard_taken_away():
        forged = AuditEvent.objects.get(pk=head.pk)
        forged.data = {"n": "forged"}
        forged.hash = hash_of(forged)
        sql(
            f"UPDATE {TABLE} SET data = %s, hash = %s WHERE id = %s",
            [json.dumps(forged.data), forged.hash, head.pk],
        )
    verify()
    failure = verify_fails("--anchor", f"{head.seq}:{head.hash}")
    assert f"BROKEN at seq {head.seq} (id {head.pk}): hash differs from the anchor" in str(failure)


def test_a_malformed_anchor_is_refused() -> None:
    assert "--anchor wants SEQ:HASH" in str(verify_fails("--anchor", "12:nothex"))


def test_a_missing_guard_is_reported_with_its_own_status(team_a: Team) -> None:
    record_some(team_a, 2)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER signoff_audit_append_only")
            missing = "signoff_audit_append_only"
        else:
            cursor.execute("DROP TRIGGER signoff_audit_no_delete")
            missing = "signoff_audit_no_delete"
    failure = verify_fails()
    assert failure.returncode == 2
    assert f"guard is missing or disabled: {missing}" in str(failure)


# --- the auditor's own script ---------------------------------------------------------------------
def _auditor_script(tmp_path: Path) -> Path:
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- auditor-script[^>]*-->\s*```python\n(.*?)```", text, re.DOTALL)
    assert match, "docs/audit.md lost its auditor script"
    script = tmp_path / "verify_chain.py"
    script.write_text(match[1], encoding="utf-8")
    return script


def _dump(tmp_path: Path) -> Path:
    """The rows as the commands in docs/audit.md dump them (psql's row_to_json; sqlite3 -json)."""
    columns = "id, seq, prev_hash, hash, created_at, kind, team_id, actor_id, token_id, call_id, data"
    dump = tmp_path / "audit.jsonl"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"SELECT row_to_json(e)::text FROM (SELECT {columns} FROM {TABLE} ORDER BY seq) e")
            dump.write_text("\n".join(line for (line,) in cursor.fetchall()), encoding="utf-8")
        else:  # as text, as the sqlite3 shell prints it (Django's connection would parse the time)
            as_text = columns.replace("created_at", "CAST(created_at AS TEXT)")
            cursor.execute(f"SELECT {as_text} FROM {TABLE} ORDER BY seq")
            names = [name.strip() for name in columns.split(",")]
            dump.write_text(json.dumps([dict(zip(names, row, strict=True)) for row in cursor.fetchall()]))
    return dump


def test_the_auditors_script_in_the_docs_verifies_the_chain_without_signoff(
    tmp_path: Path, member_token: Issued, submit, reviewer: Any
) -> None:
    held = submit(member_token.token, arguments={"path": "/srv/ü", "n": 2.5}).call
    call_decide(call_id=str(held.pk), reviewer=reviewer, allow=True, reason="ok ✓")
    script = _auditor_script(tmp_path)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": ""}
    run = subprocess.run(  # an interpreter that cannot import Signoff: -I ignores the environment
        [sys.executable, "-I", str(script), str(_dump(tmp_path))], capture_output=True, text=True, env=env
    )
    head = chain()[-1]
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"OK: {head.seq} events, head {head.seq}:{head.hash}"

    changed = AuditEvent.objects.get(kind="call.allowed")
    with guard_taken_away():
        sql(f"UPDATE {TABLE} SET kind = %s WHERE id = %s", ["call.denied", changed.pk])
    run = subprocess.run(
        [sys.executable, "-I", str(script), str(_dump(tmp_path))], capture_output=True, text=True, env=env
    )
    assert run.returncode == 1
    assert f"BROKEN at seq {changed.seq} (id {changed.pk}): content does not match its hash" in run.stderr

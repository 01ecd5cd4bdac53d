"""The audit log: append-only events in one hash chain (see docs/audit.md).

``audit_record`` is called inside the transaction of the change it records. It takes the chain's lock,
so that two transactions appending at once cannot fork the chain: call it after the transaction's other
row locks and writes where you can (a transaction holding the chain lock and then waiting for a row lock
can deadlock with one holding that row and waiting for the chain).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from django.contrib.auth import get_user_model
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DEFAULT_DB_ALIAS, connections, router, transaction
from django.utils import timezone

from approvals.models import AuditEvent, BridgeToken, Team, ToolCall
from approvals.services.rows import row_insert

FORMAT = "signoff-audit/1"
"""First element of every event's canonical form; a new format gets a new name."""
GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first event."""
CHAIN_LOCK_KEY = 0x5349474E4F464631
"""PostgreSQL advisory lock held while appending ("SIGNOFF1"; its use is in migration 0003)."""
PG_ROW_GUARD = "signoff_audit_append_only"
PG_TRUNCATE_GUARD = "signoff_audit_no_truncate"
GUARD_TRIGGERS = {
    "postgresql": (PG_ROW_GUARD, PG_TRUNCATE_GUARD),
    "sqlite": ("signoff_audit_no_update", "signoff_audit_no_delete"),
}
"""The triggers, per database, that make the table append-only (created by migration 0003)."""


# --- the chain's format -----------------------------------------------------------------------------
def canonical_json(value: Any) -> str:
    """The one JSON text of a value: sorted keys, no spaces, ASCII only (non-ASCII as ``\\uXXXX``)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def canonical_time(moment: datetime) -> str:
    """``2025-01-31T09:05:00.000000Z``: UTC, always six fractional digits."""
    if timezone.is_naive(moment):
        raise ValueError("audit times must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(
    *,
    seq: int,
    prev_hash: str,
    created_at: datetime,
    kind: str,
    team_id: int | None,
    actor_id: int | None,
    token_id: int | None,
    call_id: UUID | str | None,
    data: Any,
) -> str:
    """SHA-256 (hex) of the event's canonical form: the canonical JSON of the array
    ``[FORMAT, seq, prev_hash, created_at, kind, team_id, actor_id, token_id, call_id, data]``."""
    payload = [
        FORMAT,
        seq,
        prev_hash,
        canonical_time(created_at),
        kind,
        team_id,
        actor_id,
        token_id,
        None if call_id is None else str(UUID(str(call_id))),
        data,
    ]
    return hashlib.sha256(canonical_json(payload).encode("ascii")).hexdigest()


def hash_of(event: AuditEvent) -> str:
    """The hash an event must carry, computed from its fields."""
    return event_hash(
        seq=event.seq,
        prev_hash=event.prev_hash,
        created_at=event.created_at,
        kind=event.kind,
        team_id=event.team_id,
        actor_id=event.actor_id,
        token_id=event.token_id,
        call_id=event.call_id,
        data=event.data,
    )


def _stored_form(value: Any) -> Any:
    """The value as both databases give it back, so that the hash of what is read equals the hash of
    what was written: JSON types only, integral floats as integers (PostgreSQL's jsonb prints 1e+20 as
    100000000000000000000), no NUL and no lone surrogate in strings (jsonb refuses them)."""
    if isinstance(value, dict):
        return {key: _stored_form(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_stored_form(item) for item in value]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        value = value.replace("\x00", "\ufffd")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            value = "".join("\ufffd" if 0xD800 <= ord(char) <= 0xDFFF else char for char in value)
    return value


def normalise_data(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` in its stored form (dates, UUIDs and decimals become strings, as Django's JSON encoder
    writes them). Raises ValueError for NaN or infinity, which JSON cannot hold."""
    plain = json.loads(json.dumps(data, cls=DjangoJSONEncoder, allow_nan=False))
    stored: dict[str, Any] = _stored_form(plain)
    return stored


# --- appending --------------------------------------------------------------------------------------
def audit_record(
    *,
    kind: str,
    team: Team | None,
    actor_id: int | None = None,
    token: BridgeToken | None = None,
    call: ToolCall | None = None,
    **data: Any,
) -> AuditEvent:
    """Append one audit event to the chain. ``data`` must hold no secret.

    The actor's username and email are added to ``data["actor"]``, so that the record stays readable
    once the user is deleted.
    """
    record = normalise_data(data)
    if actor_id is not None and "actor" not in record:
        names = _actor_names(actor_id)
        if names is not None:
            record["actor"] = names
    using = router.db_for_write(AuditEvent)
    with transaction.atomic(using=using, savepoint=False):  # joins the caller's transaction
        seq, prev_hash = _lock_chain_head(using)
        event = AuditEvent(
            team=team,
            actor_id=actor_id,
            token=token,
            call=call,
            kind=kind,
            created_at=timezone.now(),  # read under the lock: times do not go back along the chain
            data=record,
            seq=seq + 1,
            prev_hash=prev_hash,
        )
        event.hash = hash_of(event)
        row_insert(event, using=using)  # every call writes one or two: without the ORM's compiling
    return event


def _actor_names(actor_id: int) -> dict[str, str] | None:
    user_model = get_user_model()
    names = (
        user_model._default_manager.filter(pk=actor_id)
        .values_list(user_model.USERNAME_FIELD, user_model.get_email_field_name())
        .first()
    )
    return None if names is None else {"username": str(names[0]), "email": str(names[1] or "")}


def _lock_chain_head(using: str) -> tuple[int, str]:
    """The chain's last ``(seq, hash)``, read under a lock held until the transaction ends.

    PostgreSQL: ``signoff_audit_lock_head()`` (migration 0003) takes a transaction-level advisory lock,
    then reads the head with a fresh snapshot (a VOLATILE function under READ COMMITTED), so it sees
    what the lock's previous holder committed; one round trip. SQLite: every write transaction begins
    with ``BEGIN IMMEDIATE`` (settings), so writers already take turns. Either way the unique ``seq``
    turns an appender that still raced (another isolation level, a foreign writer) into an error, never
    into a fork.
    """
    connection = connections[using]
    with connection.cursor() as cursor:  # plain SQL: this is on every call's path, the ORM costs ~0.1 ms
        if connection.vendor == "postgresql":
            cursor.execute("SELECT head_seq, head_hash FROM signoff_audit_lock_head()")
        else:
            table = connection.ops.quote_name(AuditEvent._meta.db_table)
            cursor.execute(f"SELECT seq, hash FROM {table} ORDER BY seq DESC LIMIT 1")  # noqa: S608
        head = cursor.fetchone()
    return (int(head[0]), str(head[1])) if head is not None else (0, GENESIS_HASH)


# --- verifying --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Break:
    """The first broken link of the chain."""

    seq: int
    id: int | None
    """The row's id; None when the event is not there at all."""
    problem: str

    def __str__(self) -> str:
        where = "not in the chain" if self.id is None else f"id {self.id}"
        return f"seq {self.seq} ({where}): {self.problem}"


@dataclass(frozen=True)
class Verification:
    """What walking the chain found."""

    events: int
    """Events verified (up to the break, if any)."""
    head_seq: int
    head_hash: str
    broken: Break | None
    missing_guards: list[str]

    @property
    def intact(self) -> bool:
        return self.broken is None


def audit_verify(*, anchor: tuple[int, str] | None = None, using: str = DEFAULT_DB_ALIAS) -> Verification:
    """Walk the chain in ``seq`` order and stop at the first broken link.

    Checks, per event: ``seq`` follows the previous one without a gap; the stored hash is the hash of
    the event's content; ``prev_hash`` is the previous event's hash; ids grow with ``seq`` (a row deleted
    and inserted again gets a new, higher id). With ``anchor`` (a ``(seq, hash)`` recorded earlier,
    e.g. by a previous run), also that this event is still in the chain with this hash, which catches a
    chain cut short or rewritten from there on.
    """
    fields = ("id", "seq", "prev_hash", "hash", "created_at", "kind", "team_id", "actor_id", "token_id")
    rows = (
        AuditEvent.objects.using(using)
        .order_by("seq")
        .values_list(*fields, "call_id", "data")
        .iterator(chunk_size=2000)
    )
    count, last_seq, last_id, last_hash = 0, 0, 0, GENESIS_HASH
    broken: Break | None = None
    anchor_seen = False
    for (
        row_id,
        seq,
        prev_hash,
        stored_hash,
        created_at,
        kind,
        team_id,
        actor_id,
        token_id,
        call_id,
        data,
    ) in rows:
        if seq != last_seq + 1:
            gap = f"seq {last_seq + 1}" if seq == last_seq + 2 else f"seqs {last_seq + 1} to {seq - 1}"
            broken = Break(seq, row_id, f"{gap} missing: the chain jumps from seq {last_seq} to {seq}")
            break
        computed = event_hash(
            seq=seq,
            prev_hash=prev_hash,
            created_at=created_at,
            kind=kind,
            team_id=team_id,
            actor_id=actor_id,
            token_id=token_id,
            call_id=call_id,
            data=data,
        )
        if computed != stored_hash:
            broken = Break(
                seq, row_id, "content does not match its hash: the event was changed after it was written"
            )
            break
        if prev_hash != last_hash:
            what = "the genesis hash" if seq == 1 else f"the hash of seq {last_seq} (id {last_id})"
            broken = Break(
                seq,
                row_id,
                f"prev_hash is not {what}: the event before it, or this one, was replaced or rewritten",
            )
            break
        if row_id <= last_id:
            broken = Break(
                seq,
                row_id,
                f"id is below the id of seq {last_seq} (id {last_id}), written before it: "
                f"seq {last_seq} was deleted and inserted again, or the rows were reordered",
            )
            break
        if anchor is not None and seq == anchor[0]:
            anchor_seen = True
            if stored_hash != anchor[1]:
                broken = Break(
                    seq, row_id, "hash differs from the anchor: the chain was rewritten up to here"
                )
                break
        count, last_seq, last_id, last_hash = count + 1, seq, row_id, stored_hash
    if broken is None and anchor is not None and not anchor_seen:
        broken = Break(
            anchor[0],
            None,
            f"the anchored event is gone: the chain ends at seq {last_seq} (its end was removed)",
        )
    return Verification(
        events=count,
        head_seq=last_seq,
        head_hash=last_hash,
        broken=broken,
        missing_guards=audit_guard_missing(using=using),
    )


# --- the append-only guard --------------------------------------------------------------------------
def audit_guard_missing(*, using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """The guard triggers that are not installed (or disabled) on the audit table."""
    connection = connections[using]
    expected = GUARD_TRIGGERS.get(connection.vendor, ())
    table = AuditEvent._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal"
                " AND tgenabled <> 'D'",
                [table],
            )
        elif connection.vendor == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s", [table])
        else:
            return [f"no append-only guard for {connection.vendor}"]
        present = {name for (name,) in cursor.fetchall()}
    return [name for name in expected if name not in present]


@contextmanager
def audit_guard_lifted_for_flush(*, using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Let ``manage.py flush`` empty the audit table, inside the flush's own transaction.

    PostgreSQL flushes with TRUNCATE, which the row triggers do not see: only the TRUNCATE guard is
    disabled. SQLite flushes with DELETE, and has no way to disable a trigger: its guard triggers are
    dropped and created again. DDL is transactional on both, so no other connection ever sees the
    table unguarded, and a failed flush leaves the guard as it was.
    """
    connection = connections[using]
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    with transaction.atomic(using=using), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            guard = connection.ops.quote_name(PG_TRUNCATE_GUARD)
            lifted = PG_TRUNCATE_GUARD not in audit_guard_missing(using=using)
            if lifted:
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {guard}")
            yield
            if lifted:
                cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER {guard}")
        elif connection.vendor == "sqlite":
            cursor.execute(
                "SELECT name, sql FROM sqlite_master"
                " WHERE type = 'trigger' AND tbl_name = %s AND name IN (%s, %s)",
                [AuditEvent._meta.db_table, *GUARD_TRIGGERS["sqlite"]],
            )
            dropped = cursor.fetchall()
            for name, _sql in dropped:
                cursor.execute(f"DROP TRIGGER {connection.ops.quote_name(name)}")
            yield
            for _name, sql in dropped:
                cursor.execute(sql)
        else:
            yield

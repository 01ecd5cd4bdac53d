"""The audit log becomes an append-only hash chain (docs/audit.md).

1. The references of an audit event to its team, actor, token and call lose their database constraint and
   are never cleared (DO_NOTHING): deleting a user or a team must not UPDATE audit rows.
2. Each event gets ``seq``, ``prev_hash`` and ``hash``; the events already there are chained in id order.
3. The database refuses UPDATE and DELETE of audit rows (and TRUNCATE, on PostgreSQL): triggers.
4. PostgreSQL: a function that takes the chain's lock and reads its head, for appending.

The chain's format is copied here, frozen, rather than imported: this migration must keep producing the
hashes of format ``signoff-audit/1`` whatever the application code becomes.
"""

import hashlib
import json
import math
from datetime import timezone as dt_timezone
from uuid import UUID

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

FORMAT = "signoff-audit/1"
GENESIS_HASH = "0" * 64
TABLE = "approvals_auditevent"
CHAIN_LOCK_KEY = 0x5349474E4F464631  # "SIGNOFF1"

GUARD = {
    "postgresql": [
        # The chain's head, read under the chain's lock, in one round trip. VOLATILE: under READ COMMITTED
        # the SELECT takes a fresh snapshot after the lock is granted, so it sees the previous holder's event.
        f"""
        CREATE FUNCTION signoff_audit_lock_head() RETURNS TABLE (head_seq bigint, head_hash varchar)
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock({CHAIN_LOCK_KEY});
            RETURN QUERY SELECT e.seq, e.hash FROM {TABLE} e ORDER BY e.seq DESC LIMIT 1;
        END
        $$
        """,
        """
        CREATE FUNCTION signoff_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit events are append-only: % on % refused', TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'restrict_violation';
        END
        $$
        """,
        f"""
        CREATE TRIGGER signoff_audit_append_only BEFORE UPDATE OR DELETE ON {TABLE}
        FOR EACH ROW EXECUTE FUNCTION signoff_audit_refuse()
        """,
        f"""
        CREATE TRIGGER signoff_audit_no_truncate BEFORE TRUNCATE ON {TABLE}
        FOR EACH STATEMENT EXECUTE FUNCTION signoff_audit_refuse()
        """,
    ],
    "sqlite": [
        f"""
        CREATE TRIGGER signoff_audit_no_update BEFORE UPDATE ON {TABLE}
        BEGIN SELECT RAISE(ABORT, 'audit events are append-only: UPDATE refused'); END
        """,
        f"""
        CREATE TRIGGER signoff_audit_no_delete BEFORE DELETE ON {TABLE}
        BEGIN SELECT RAISE(ABORT, 'audit events are append-only: DELETE refused'); END
        """,
    ],
}
UNGUARD = {
    "postgresql": [
        f"DROP TRIGGER IF EXISTS signoff_audit_no_truncate ON {TABLE}",
        f"DROP TRIGGER IF EXISTS signoff_audit_append_only ON {TABLE}",
        "DROP FUNCTION IF EXISTS signoff_audit_refuse()",
        "DROP FUNCTION IF EXISTS signoff_audit_lock_head()",
    ],
    "sqlite": [
        "DROP TRIGGER IF EXISTS signoff_audit_no_delete",
        "DROP TRIGGER IF EXISTS signoff_audit_no_update",
    ],
}


def run_sql_for_vendor(statements):
    """A RunPython function running the statements written for this database (RunSQL cannot choose)."""

    def run(apps, schema_editor):
        vendor = schema_editor.connection.vendor
        if vendor not in statements:
            raise NotImplementedError(f"Signoff's audit guard supports PostgreSQL and SQLite, not {vendor}")
        for sql in statements[vendor]:
            schema_editor.execute(sql, params=None)  # no placeholders: RAISE uses % itself

    return run


def _stored_form(value):
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
        except UnicodeEncodeError:
            value = "".join("\ufffd" if 0xD800 <= ord(char) <= 0xDFFF else char for char in value)
    return value


def _canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _event_hash(event):
    payload = [
        FORMAT,
        event.seq,
        event.prev_hash,
        event.created_at.astimezone(dt_timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        event.kind,
        event.team_id,
        event.actor_id,
        event.token_id,
        None if event.call_id is None else str(UUID(str(event.call_id))),
        event.data,
    ]
    return hashlib.sha256(_canonical_json(payload).encode("ascii")).hexdigest()


def chain_existing_events(apps, schema_editor):
    """Chain the events recorded before this migration, in the order they were written (id)."""
    AuditEvent = apps.get_model("approvals", "AuditEvent")
    db = schema_editor.connection.alias
    prev_hash, batch = GENESIS_HASH, []
    for seq, event in enumerate(AuditEvent.objects.using(db).order_by("id").iterator(chunk_size=1000), start=1):
        event.data = _stored_form(json.loads(json.dumps(event.data)))
        event.seq, event.prev_hash = seq, prev_hash
        event.hash = prev_hash = _event_hash(event)
        batch.append(event)
        if len(batch) == 1000:
            AuditEvent.objects.using(db).bulk_update(batch, ["data", "seq", "prev_hash", "hash"])
            batch = []
    AuditEvent.objects.using(db).bulk_update(batch, ["data", "seq", "prev_hash", "hash"])


class Migration(migrations.Migration):

    dependencies = [
        ('approvals', '0002_rule_constraints'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='auditevent',
            name='actor',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AlterField(
            model_name='auditevent',
            name='call',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='events', to='approvals.toolcall'),
        ),
        migrations.AlterField(
            model_name='auditevent',
            name='team',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='approvals.team'),
        ),
        migrations.AlterField(
            model_name='auditevent',
            name='token',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='approvals.bridgetoken'),
        ),
        migrations.AddField(
            model_name='auditevent',
            name='seq',
            field=models.PositiveBigIntegerField(null=True),
        ),
        migrations.AddField(
            model_name='auditevent',
            name='prev_hash',
            field=models.CharField(default='', max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name='auditevent',
            name='hash',
            field=models.CharField(default='', max_length=64),
            preserve_default=False,
        ),
        migrations.RunPython(chain_existing_events, migrations.RunPython.noop, elidable=False),
        migrations.AlterField(
            model_name='auditevent',
            name='seq',
            field=models.PositiveBigIntegerField(unique=True),
        ),
        migrations.RunPython(run_sql_for_vendor(GUARD), run_sql_for_vendor(UNGUARD), elidable=False),
    ]

"""Inserting a row without the ORM's compiling, for the few inserts on every call's path.

``Model.save()`` compiles its INSERT anew each time: ~0.3 ms of Python for a call or an audit event, on the
one database thread every decision of a process waits for (docs/performance.md). ``row_insert`` writes the
statement once per model and database, and converts the values with the fields' own ``pre_save`` and
``get_db_prep_save``, as the ORM's insert does, so the row is the same.
"""

from __future__ import annotations

from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Field, Model

_PREPARED: dict[tuple[str, type[Model]], tuple[str, list[Field[Any, Any]], bool]] = {}
"""Per database alias and model: the statement, the fields it sends in order, whether the database makes
the primary key (an auto-incremented id, read back)."""


def row_insert(obj: Model, *, using: str = DEFAULT_DB_ALIAS) -> None:
    """Insert ``obj`` as ``obj.save(force_insert=True, using=using)`` would, and set its primary key when the
    database makes it. Sends no ``pre_save``/``post_save`` signal: only for models nothing listens to."""
    model = type(obj)
    prepared = _PREPARED.get((using, model))
    connection = connections[using]
    if prepared is None:
        meta = model._meta
        auto = bool(meta.pk is not None and meta.pk.db_returning)
        fields = [field for field in meta.local_concrete_fields if not (field.primary_key and auto)]
        quote = connection.ops.quote_name
        sql = (
            f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(str(field.column)) for field in fields)})"  # noqa: S608
            f" VALUES ({', '.join(['%s'] * len(fields))})"
        )
        returning = auto and connection.features.can_return_columns_from_insert
        if returning:
            assert meta.pk is not None
            sql += f" RETURNING {quote(str(meta.pk.column))}"
        prepared = _PREPARED[(using, model)] = (sql, fields, auto)
    sql, fields, auto = prepared
    params = [field.get_db_prep_save(field.pre_save(obj, True), connection) for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if auto:
            obj.pk = (
                cursor.fetchone()[0]
                if connection.features.can_return_columns_from_insert
                else cursor.lastrowid
            )
    obj._state.adding = False
    obj._state.db = using

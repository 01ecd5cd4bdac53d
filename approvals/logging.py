"""Structured logs: who and what a log line is about, and a JSON formatter for log collectors.

Every line can carry four fields besides its message: ``request_id`` (one per HTTP request, or per websocket
message), ``call_id``, ``team`` (slug) and ``user`` (username). They live in context variables, so that a
line written deep inside a service knows the request it serves without being handed it:

* ``RequestIdMiddleware`` gives each HTTP request its id (the caller's ``X-Request-ID`` when it is a safe
  token, else a new one), echoes it in the response's ``X-Request-ID`` header and binds it;
* the websocket consumers call ``log_bind`` for each message they receive (a fresh id, the team, the user
  and the call when the message names one);
* ``LogContextFilter`` (installed on the handler in ``config/settings.py``) copies them onto every record.

``SIGNOFF_LOG_FORMAT=json`` selects ``JsonFormatter`` (one JSON object per line); ``text`` (the default)
keeps a line for humans, with the known fields appended. Secrets are masked before either formatter runs
(``approvals.masking.SecretMaskingFilter``, the handler's first filter).

This module must stay importable from settings (no Django models). Its name shadows the standard
library's ``logging`` only for ``approvals.logging``: absolute imports elsewhere are unaffected.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

__all__ = [
    "CONTEXT_FIELDS",
    "JsonFormatter",
    "LogContextFilter",
    "RequestIdMiddleware",
    "TextFormatter",
    "log_bind",
    "log_context",
    "log_fields",
    "new_request_id",
    "safe_request_id",
]

CONTEXT_FIELDS = ("request_id", "call_id", "team", "user")
"""The fields every log line may carry, in the order the text format appends them."""

REQUEST_ID_HEADER = "X-Request-ID"

_fields: ContextVar[dict[str, str] | None] = ContextVar("signoff_log_fields", default=None)
_request: ContextVar[Any] = ContextVar("signoff_log_request", default=None)

# Letters, digits and ``._:-``, at most 128: UUIDs, W3C trace ids and load balancers' ids pass; anything
# that could forge a log line or a header (newlines, quotes, spaces) does not.
_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def new_request_id() -> str:
    """A fresh request id: 32 hex digits."""
    return uuid.uuid4().hex


def safe_request_id(candidate: str | None) -> str:
    """``candidate`` if it is a safe token (letters, digits, ``._:-``, 1 to 128 of them), else a new id."""
    if candidate and _SAFE_ID.fullmatch(candidate):
        return candidate
    return new_request_id()


def log_fields() -> dict[str, str]:
    """The context fields bound in this context (a copy)."""
    return dict(_fields.get() or {})


def log_bind(**fields: object) -> None:
    """Bind context fields for the rest of this context (a websocket message's handling, say).

    A field given as None (or empty) is unbound. Values are turned into strings, at most 128 characters,
    control characters replaced: a value from a client (a call id in a reviewer's message) cannot forge a
    line. Each asyncio task (one per websocket connection under Channels) has its own context, so one
    connection's fields never reach another's lines.
    """
    current = dict(_fields.get() or {})
    for name, value in fields.items():
        if name not in CONTEXT_FIELDS:
            raise ValueError(f"unknown log field {name!r}")
        text = "" if value is None else _CONTROL.sub("?", str(value))[:128]
        if text:
            current[name] = text
        else:
            current.pop(name, None)
    _fields.set(current)


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Bind context fields inside the ``with`` block only (see ``log_bind``)."""
    token = _fields.set(dict(_fields.get() or {}))
    try:
        log_bind(**fields)
        yield
    finally:
        _fields.reset(token)


def _user_of_request(request: Any) -> str | None:
    """The request's user, if authentication already loaded it. Never loads it: that could query the
    database from inside a log call (or from async code, where Django forbids it). Django's
    ``AuthenticationMiddleware`` caches the loaded user on ``request._cached_user``."""
    user = getattr(request, "_cached_user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return str(user.get_username())


class LogContextFilter(logging.Filter):
    """Copies the context fields onto each record (``record.request_id``…; None when unknown).

    Fields passed explicitly with ``extra={...}`` win over the context. Never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _fields.get() or {}
        for name in CONTEXT_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, bound.get(name))
        if getattr(record, "user", None) is None:
            request = _request.get()
            if request is not None:
                record.user = _user_of_request(request)
        return True


def _time(record: logging.LogRecord) -> str:
    return (
        datetime.fromtimestamp(record.created, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, then the
    context fields that are known, then ``exception`` / ``stack`` when the record has them.

    The message is the masked one (the masking filter runs first on the handler).
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: a collector never meets an encoding problem, and U+2028 cannot split a line.
        return json.dumps(entry, ensure_ascii=True, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger message`` for people, with the known context fields appended as
    ``[request_id=… call_id=… team=… user=…]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        known = [f"{name}={value}" for name in CONTEXT_FIELDS if (value := getattr(record, name, None))]
        if not known:
            return line
        first, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{first} [{' '.join(known)}]{newline}{rest}"


def log_formatter(kind: str) -> logging.Formatter:
    """The formatter for ``SIGNOFF_LOG_FORMAT``: ``json`` or ``text``. Used by ``LOGGING``'s ``()``."""
    if kind == "json":
        return JsonFormatter()
    if kind == "text":
        return TextFormatter()
    raise ValueError(f"SIGNOFF_LOG_FORMAT must be json or text, got {kind!r}")


# --- HTTP ----------------------------------------------------------------------------------------------
class RequestIdMiddleware:
    """First in ``MIDDLEWARE``: gives every request an id (``request.request_id``), binds it to the log
    context for the request's duration, and echoes it in the response's ``X-Request-ID`` header.

    An incoming ``X-Request-ID`` (from a load balancer or a client) is kept when it is a safe token, so
    that one id follows a request through every hop; anything else is replaced by a new id.
    Sync and async capable, so that Django does not add a thread hop for it.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        tokens = self._bind(request)
        try:
            response = self.get_response(request)
        finally:
            self._unbind(tokens)
        response[REQUEST_ID_HEADER] = request.request_id
        return response

    async def __acall__(self, request: Any) -> Any:
        tokens = self._bind(request)
        try:
            response = await self._await(request)
        finally:
            self._unbind(tokens)
        response[REQUEST_ID_HEADER] = request.request_id
        return response

    def _await(self, request: Any) -> Awaitable[Any]:
        result: Awaitable[Any] = self.get_response(request)
        return result

    @staticmethod
    def _bind(request: Any) -> tuple[Token[dict[str, str] | None], Token[Any]]:
        request.request_id = safe_request_id(request.headers.get(REQUEST_ID_HEADER))
        fields = {"request_id": request.request_id}
        return _fields.set(fields), _request.set(request)

    @staticmethod
    def _unbind(tokens: tuple[Token[dict[str, str] | None], Token[Any]]) -> None:
        _fields.reset(tokens[0])
        _request.reset(tokens[1])

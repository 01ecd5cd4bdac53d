"""Issue 8, points 2, 3 and 5: least-privilege warnings, the security checklist sign-off, and a team that
uses only approved servers (every call to another is denied, with whom to ask)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals.models import AuditEvent, Rule, ServerReview, Team, ToolCall, Upstream, UpstreamChange
from approvals.services import least_privilege as lp
from approvals.services import server_review as sr
from approvals.services.inventory import sighting_of, upstream_seen
from mcpbridge import protocol

from .conftest import SERVER, Issued

NOW = timezone.now()


# --- the warnings, one check at a time ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "command",
    [
        ["npx", "@modelcontextprotocol/server-filesystem", "/"],
        ["npx", "server-filesystem", "~"],
        ["npx", "server-filesystem", "/home/ana"],
        ["npx", "server-filesystem", "/Users/ana/"],
        ["srv.exe", "C:\\"],
        ["srv.exe", "--root=D:/"],
        ["srv", "--allowed-dir", "$HOME"],
    ],
)
def test_a_disk_or_home_root_is_too_broad(command: list[str]) -> None:
    warning = lp.broad_root(command)
    assert warning is not None and warning.key == "broad_root"
    assert warning.why and warning.fix


@pytest.mark.parametrize(
    "command",
    [
        ["npx", "server-filesystem", "/srv/projects/app"],
        ["npx", "server-filesystem", "/home/ana/project"],
        ["uvx", "mcp-server-time", "--local-timezone", "UTC"],
        ["/", "--version"],  # the program itself is not an argument
    ],
)
def test_a_project_directory_is_not_too_broad(command: list[str]) -> None:
    assert lp.broad_root(command) is None


def keys(warnings: list[lp.PrivilegeWarning]) -> list[str]:
    return [warning.key for warning in warnings]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["mcp-postgres", "postgresql://postgres:[masked]@db/app"], ["db_admin_user", "db_not_read_only"]),
        (["mcp-mysql", "mysql://root@db/app?readonly=true"], ["db_admin_user"]),
        (["mcp-postgres", "postgresql://app:[masked]@db/app"], ["db_not_read_only"]),
        (["mcp-postgres", "postgresql://app_ro@db/app"], []),
        (["mcp-postgres", "postgresql://reader@db/app"], []),
        (["mcp-postgres", "--read-only", "postgresql://app@db/app"], []),
        (["mcp-postgres", "postgresql://app@db/app?options=-c%20default_transaction_read_only%3Don"], []),
        (["mcp-sqlite", "--db", "/srv/app.db"], []),  # no URL: nothing to judge
        (["srv", "https://api.example.com/"], []),  # not a database
    ],
)
def test_database_urls_with_an_administrator_or_no_read_only_hint(
    command: list[str], expected: list[str]
) -> None:
    assert keys(lp.database_warnings(command, "")) == expected


def test_a_database_url_as_the_http_upstream_is_judged_too() -> None:
    assert keys(lp.database_warnings([], "postgres://sa@db/app")) == ["db_admin_user", "db_not_read_only"]


@pytest.mark.parametrize(
    ("transport", "url", "warned"),
    [
        ("http", "http://mcp.internal.example:8080/mcp", True),
        ("http", "http://10.0.0.5/mcp", True),
        ("http", "http://127.0.0.1:9000/mcp", False),
        ("http", "http://localhost:9000/mcp", False),
        ("http", "http://[::1]:9000/mcp", False),
        ("http", "https://mcp.example.com/mcp", False),
        ("stdio", "", False),
    ],
)
def test_plain_http_to_another_host(transport: str, url: str, warned: bool) -> None:
    assert (lp.plain_http(transport, url) is not None) is warned


def test_a_masked_secret_on_the_command_line_or_in_the_url() -> None:
    on_command = lp.secret_in_arguments(["srv", "--api-key", "[masked]"], "")
    assert on_command is not None and "command line" in on_command.title
    in_url = lp.secret_in_arguments([], "https://h/mcp?token=[masked]")
    assert in_url is not None and "URL" in in_url.title
    assert lp.secret_in_arguments(["srv", "--port", "8080"], "https://h/mcp") is None


def rule(effect: str, server: str, tool: str, constraints: list[Any] | None = None, **extra: Any) -> Rule:
    return Rule(pk=7, effect=effect, server=server, tool=tool, constraints=constraints or [], **extra)


DESTRUCTIVE = {"delete_file": {"annotations": {"destructiveHint": True}}, "read_file": {"annotations": {}}}


@pytest.mark.parametrize(
    ("rules", "warned"),
    [
        ([], False),  # a reviewer decides each call
        ([rule("allow", "files", "read_file")], False),
        ([rule("allow", "files", "*")], True),
        ([rule("allow", "*", "delete_file")], True),
        ([rule("allow", "files", "delete_file", [{"path": "path", "prefix": "/srv/"}])], False),
        ([rule("allow", "files", "*"), rule("deny", "files", "delete_file")], False),
        ([rule("allow", "files", "*", enabled=False)], False),
        ([rule("allow", "files", "*", expires_at=NOW - timedelta(days=1))], False),
        ([rule("allow", "other", "*")], False),
    ],
)
def test_destructive_tools_that_run_without_review(rules: list[Rule], warned: bool) -> None:
    warning = lp.destructive_unguarded(server="files", tools=DESTRUCTIVE, rules=rules, now=NOW)
    assert (warning is not None) is warned
    if warning is not None:
        assert "delete_file" in warning.detail and "read_file" not in warning.detail


def test_a_version_unchanged_for_long_while_calls_continue() -> None:
    old = NOW - lp.STALE_AFTER - timedelta(days=1)
    assert lp.stale_version(version="1.0", version_since=old, last_call_at=NOW, now=NOW) is not None
    assert lp.stale_version(version="1.0", version_since=NOW, last_call_at=NOW, now=NOW) is None
    unused = NOW - lp.RECENT_CALLS - timedelta(days=1)
    assert lp.stale_version(version="1.0", version_since=old, last_call_at=unused, now=NOW) is None
    assert lp.stale_version(version="1.0", version_since=old, last_call_at=None, now=NOW) is None
    assert lp.stale_version(version="", version_since=old, last_call_at=NOW, now=NOW) is None


# --- the warnings of a recorded server ---------------------------------------------------------------------
def see(token: Any, *, command: list[str], version: str = "1.0.0", name: str = SERVER) -> Upstream:
    return upstream_seen(
        token=token,
        info=sighting_of(
            upstream=protocol.UpstreamInfo(name=name, transport="stdio", server_version=version),
            report=protocol.UpstreamReport(
                transport="stdio", command=command, server_name="fs", server_version=version
            ),
        ),
    )


@pytest.mark.django_db
def test_a_recorded_server_has_its_warnings_and_the_stale_one_counts_from_its_last_version_change(
    member_token: Issued, submit: Any
) -> None:
    token = member_token.token
    upstream = see(token, command=["npx", "server-filesystem", "/", "--token", "[masked]"])
    assert set(keys(lp.upstream_warnings(upstream))) == {"broad_root", "secret_in_arguments"}
    long_ago = timezone.now() - lp.STALE_AFTER - timedelta(days=5)
    Upstream.objects.filter(pk=upstream.pk).update(first_seen_at=long_ago)
    upstream.refresh_from_db()
    assert "stale_version" not in keys(lp.upstream_warnings(upstream))  # not called lately
    submit(token)
    assert "stale_version" in keys(lp.upstream_warnings(upstream))
    see(token, command=["npx", "server-filesystem", "/", "--token", "[masked]"], version="1.1.0")
    UpstreamChange.objects.filter(upstream=upstream).update(at=timezone.now() - timedelta(days=3))
    upstream.refresh_from_db()
    assert "stale_version" not in keys(lp.upstream_warnings(upstream))  # updated three days ago


# --- the checklist -----------------------------------------------------------------------------------------
def all_answered(answer: str = "yes", **overrides: dict[str, str]) -> dict[str, dict[str, str]]:
    answers = {question.key: {"answer": answer, "note": ""} for question in sr.CHECKLIST}
    answers.update(overrides)
    return answers


def test_the_checklist_covers_the_five_areas_with_unique_keys() -> None:
    assert {question.section for question in sr.CHECKLIST} == {
        "Permissions",
        "Inputs",
        "Communications",
        "Monitoring",
        "Human approval",
    }
    assert len({question.key for question in sr.CHECKLIST}) == len(sr.CHECKLIST)


def test_every_question_needs_an_answer_of_yes_no_or_not_applicable() -> None:
    assert sr.checklist_answers(all_answered("n/a"))["audited"] == {"answer": "n/a", "note": ""}
    missing = all_answered()
    del missing["audited"]
    with pytest.raises(sr.ReviewError) as refused:
        sr.checklist_answers(missing)
    assert refused.value.field == "audited"
    with pytest.raises(sr.ReviewError):
        sr.checklist_answers(all_answered("maybe"))
    with pytest.raises(sr.ReviewError):
        sr.checklist_answers(all_answered(audited={"answer": "yes", "note": "x" * (sr.MAX_NOTE + 1)}))


@pytest.mark.django_db
def test_a_review_is_recorded_with_its_author_and_audited(member_token: Issued, admin: Any) -> None:
    upstream = see(member_token.token, command=["npx", "server-filesystem", "/srv/app"])
    with pytest.raises(sr.ReviewError) as refused:
        sr.review_submit(
            upstream=upstream,
            author=admin,
            answers=all_answered(limited_egress={"answer": "no", "note": ""}),
            approved=True,
        )
    assert refused.value.field == "limited_egress"  # approving a "no" needs a reason
    review = sr.review_submit(
        upstream=upstream,
        author=admin,
        answers=all_answered(limited_egress={"answer": "no", "note": "egress firewall next quarter"}),
        approved=True,
        note="ok for the pilot",
    )
    assert review.reviewed == {
        "transport": "stdio",
        "command": ["npx", "server-filesystem", "/srv/app"],
        "server_version": "1.0.0",
    }
    event = AuditEvent.objects.get(kind="upstream.reviewed")
    assert event.actor_id == admin.pk and event.team_id == upstream.team_id
    assert event.data["approved"] is True and event.data["no"] == ["limited_egress"]
    assert event.data["server"] == SERVER and event.data["note"] == "ok for the pilot"


@pytest.mark.django_db
def test_the_status_follows_the_newest_review_and_what_is_run_now(member_token: Issued, admin: Any) -> None:
    token = member_token.token
    upstream = see(token, command=["npx", "server-filesystem", "/srv/app"])
    target = sr.reviewed_target(upstream)
    assert sr.status_of(None, target) == sr.UNREVIEWED
    approved = sr.review_submit(upstream=upstream, author=admin, answers=all_answered(), approved=True)
    assert sr.status_of(approved, target) == sr.APPROVED
    see(token, command=["npx", "server-filesystem", "/srv/app"], version="2.0.0")
    upstream.refresh_from_db()
    assert sr.status_of(approved, sr.reviewed_target(upstream)) == sr.APPROVED  # an update is welcome
    see(token, command=["npx", "server-filesystem", "/"], version="2.0.0")
    upstream.refresh_from_db()
    assert sr.status_of(approved, sr.reviewed_target(upstream)) == sr.NEEDS_REREVIEW
    rejected = sr.review_submit(upstream=upstream, author=admin, answers=all_answered(), approved=False)
    assert sr.status_of(rejected, sr.reviewed_target(upstream)) == sr.NOT_APPROVED


# --- only approved servers ---------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_team_that_requires_reviews_denies_calls_to_a_server_until_an_admin_approves_it(
    member_token: Issued, admin: Any, submit: Any, audit_kinds: Any
) -> None:
    token = member_token.token
    Team.objects.filter(pk=token.team_id).update(require_reviewed_servers=True)
    Rule.objects.create(team_id=token.team_id, effect="allow", server=SERVER, tool="*")
    denied = submit(token).call  # not even in the inventory yet
    assert denied.state == ToolCall.State.DENIED
    assert f"the server '{SERVER}' is not approved" in denied.reason
    assert "ada@example.com" in denied.reason and "Inventory" in denied.reason
    assert audit_kinds(denied) == ["call.denied"]

    upstream = see(token, command=["npx", "server-filesystem", "/srv/app"])
    assert "checklist has not been signed off" in submit(token).call.reason
    sr.review_submit(upstream=upstream, author=admin, answers=all_answered(), approved=False)
    assert "did not approve it" in submit(token).call.reason
    sr.review_submit(upstream=upstream, author=admin, answers=all_answered(), approved=True)
    assert submit(token).call.state == ToolCall.State.ALLOWED
    see(token, command=["npx", "server-filesystem", "/"])  # this token's bridge now runs it otherwise
    changed = submit(token, arguments={"path": "/etc/passwd"}).call
    assert changed.state == ToolCall.State.DENIED and "another command line" in changed.reason


@pytest.mark.django_db
def test_without_the_setting_an_unreviewed_server_is_used_as_before(
    member_token: Issued, submit: Any
) -> None:
    see(member_token.token, command=["npx", "server-filesystem", "/"])
    assert submit(member_token.token).call.state == ToolCall.State.PENDING


@pytest.mark.django_db
def test_a_held_call_is_not_re_attached_once_its_server_is_no_longer_approved(
    member_token: Issued, admin: Any, submit: Any
) -> None:
    token = member_token.token
    upstream = see(token, command=["srv"])
    sr.review_submit(upstream=upstream, author=admin, answers=all_answered(), approved=True)
    Team.objects.filter(pk=token.team_id).update(require_reviewed_servers=True)
    held = submit(token).call
    assert held.state == ToolCall.State.PENDING
    sr.review_submit(upstream=upstream, author=admin, answers=all_answered(), approved=False)
    again = submit(token)
    assert not again.reattached and again.call.state == ToolCall.State.DENIED


# --- the pages ---------------------------------------------------------------------------------------------
def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def posted(answer: str = "yes", verdict: str = "approve", **fields: str) -> dict[str, str]:
    data = {f"answer-{question.key}": answer for question in sr.CHECKLIST}
    data.update(verdict=verdict, **fields)
    return data


@pytest.mark.django_db
def test_an_admin_signs_the_checklist_off_on_the_server_page(member_token: Issued, admin: Any) -> None:
    upstream = see(member_token.token, command=["npx", "server-filesystem", "/", "--api-key", "[masked]"])
    url = reverse("approvals:inventory_server", args=[upstream.pk])
    client = client_for(admin)
    page = client.get(url).content.decode()
    assert 'data-warning="broad_root"' in page and 'data-warning="secret_in_arguments"' in page
    assert "Not reviewed" in page and 'name="answer-least_privilege"' in page

    incomplete = posted()
    del incomplete["answer-audited"]
    refused = client.post(url, incomplete)
    assert refused.status_code == 400 and not ServerReview.objects.exists()
    assert 'data-question="audited" class="has-error"' in refused.content.decode()
    assert 'value="yes" checked' in refused.content.decode()  # what was given is kept

    response = client.post(url, posted(note="reviewed with the team"), follow=True)
    assert response.redirect_chain[-1][0] == url
    review = ServerReview.objects.get()
    assert review.approved and review.author == admin and review.note == "reviewed with the team"
    html = response.content.decode()
    assert "is approved" in html and "review-approved" in html
    assert 'value="yes" checked' in html  # the next review starts from this one


@pytest.mark.django_db
def test_only_admins_sign_off_and_auditors_read(member_token: Issued, admin: Any, reviewer: Any) -> None:
    from approvals.services.teams import member_add, user_get_or_create

    upstream = see(member_token.token, command=["srv"])
    url = reverse("approvals:inventory_server", args=[upstream.pk])
    auditor = user_get_or_create(email="aude@example.com", password="correct horse battery staple")
    member_add(team=upstream.team, user=auditor, role="auditor")
    page = client_for(auditor).get(url)
    assert page.status_code == 200 and 'name="answer-audited"' not in page.content.decode()
    assert client_for(auditor).post(url, posted()).status_code == 403
    assert client_for(reviewer).post(url, posted()).status_code == 403
    assert not ServerReview.objects.exists()


@pytest.mark.django_db
def test_the_inventory_shows_status_and_warnings_and_filters_by_them(
    member_token: Issued, admin: Any
) -> None:
    token = member_token.token
    broad = see(token, command=["npx", "server-filesystem", "/"], name="files")
    see(token, command=["uvx", "mcp-server-time"], name="time")
    sr.review_submit(upstream=broad, author=admin, answers=all_answered(), approved=True)
    client = client_for(admin)
    response = client.get(reverse("approvals:inventory"), {"team": "alpha"})
    rows = {row.upstream.name: row for row in response.context["rows"]}
    assert (rows["files"].status, keys(rows["files"].warnings)) == (sr.APPROVED, ["broad_root"])
    assert (rows["time"].status, rows["time"].warnings) == (sr.UNREVIEWED, [])
    html = response.content.decode()
    assert "1 warning" in html and "Not reviewed" in html
    warned = client.get(reverse("approvals:inventory"), {"team": "alpha", "warned": "1"})
    assert [row.upstream.name for row in warned.context["rows"]] == ["files"]
    unreviewed = client.get(reverse("approvals:inventory"), {"team": "alpha", "status": "unreviewed"})
    assert [row.upstream.name for row in unreviewed.context["rows"]] == ["time"]
    bogus = client.get(reverse("approvals:inventory"), {"team": "alpha", "status": "<script>"})
    assert len(bogus.context["rows"]) == 2

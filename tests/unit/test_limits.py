"""Rate limits (issue 5, point 1): validation, the audited services, counting per token, team and tool in
fixed minute/hour/day windows, the deny reason, alerts, failing closed without the cache, the Limits pages
and the policy file's ``limits`` section."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from django.test import Client, override_settings
from django.urls import reverse

from approvals import metrics
from approvals.models import Alert, AuditEvent, RateLimit, Rule, Team, ToolCall
from approvals.policyfile import PolicyFileError, export_text, import_text
from approvals.services import limits
from approvals.services.calls import call_submit
from approvals.services.limits import (
    LimitInvalid,
    limit_create,
    limit_delete,
    limit_set_enabled,
    limit_update,
    limits_check,
    team_limits,
)
from approvals.services.rules import rule_create
from approvals.services.tokens import token_issue

from .conftest import SERVER, TOOL_HASH, Issued

CLOSED_PORT_CACHE = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        # Port 1 on the loopback: nothing listens, every command fails with "connection refused".
        "LOCATION": "redis://127.0.0.1:1/0",
    }
}
# 18:20:37 UTC: the minute resets at 18:21:00 (in 23 s), the hour at 19:00:00, the day at midnight.
NOW = datetime(2030, 5, 6, 18, 20, 37, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fresh_counters(settings: Any) -> None:
    """Counters live in the cache, which outlives each test's database: every test counts under a key prefix
    of its own (the configured backend, LocMem or Redis, without flushing what others keep there)."""
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "KEY_PREFIX": f"test-limits-{uuid.uuid4().hex[:12]}"}
    }


def version_of(team: Team) -> int:
    return Team.objects.filter(pk=team.pk).values_list("rules_version", flat=True).get()


def check(
    team: Team, token: Any, *, server: str = SERVER, tool: str = "read_file", now: datetime = NOW
) -> Any:
    return limits_check(team=team, token=token, server=server, tool=tool, now=now, version=version_of(team))


def audit(kind: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(kind=kind).order_by("pk"))


# --- validation -------------------------------------------------------------------------------------------


def test_every_problem_of_a_limit_is_reported_at_once(team_a, admin) -> None:
    with pytest.raises(LimitInvalid) as refused:
        limit_create(
            team=team_a,
            by=admin,
            scope="user",
            server=" files",
            tool="",
            window="week",
            max_calls=0,
            note="x" * 501,
        )
    assert set(refused.value.errors) == {"scope", "server", "tool", "window", "max_calls", "note"}
    assert "between 1 and" in refused.value.errors["max_calls"]
    assert RateLimit.objects.count() == 0 and not audit("limit.created")


@pytest.mark.parametrize("max_calls", [True, 1.5, "10", None, -1, limits.MAX_CALLS + 1])
def test_max_calls_is_a_whole_number_of_at_least_one(team_a, admin, max_calls) -> None:
    with pytest.raises(LimitInvalid) as refused:
        limit_create(team=team_a, by=admin, scope="token", window="minute", max_calls=max_calls)
    assert list(refused.value.errors) == ["max_calls"]


def test_globs_are_checked_as_rules_check_server_and_tool_names(team_a, admin) -> None:
    for bad in ("", " ", "a\x00b", "x" * 129, "trailing "):
        with pytest.raises(LimitInvalid):
            limit_create(team=team_a, by=admin, scope="tool", server=bad, window="hour", max_calls=5)
    limit = limit_create(
        team=team_a, by=admin, scope="tool", server="fil[ae]s", tool="read_*", window="hour", max_calls=5
    )
    assert (limit.server, limit.tool) == ("fil[ae]s", "read_*")


def test_a_team_has_at_most_a_hundred_limits(team_a, team_b, admin) -> None:
    RateLimit.objects.bulk_create(
        [RateLimit(team=team_a, scope="team", window="day", max_calls=n + 1) for n in range(100)]
    )
    with pytest.raises(LimitInvalid, match="at most 100"):
        limit_create(team=team_a, by=admin, scope="team", window="day", max_calls=5)
    limit_create(team=team_b, by=None, scope="team", window="day", max_calls=5)  # another team's own 100


# --- the services: audited, and every process rebuilds its compiled limits --------------------------------


def test_create_update_switch_and_delete_are_audited_and_move_the_version(team_a, admin) -> None:
    v0 = version_of(team_a)
    limit = limit_create(team=team_a, by=admin, scope="token", server="files", window="minute", max_calls=10)
    v1 = version_of(team_a)
    assert v1 != v0
    created = audit("limit.created")[-1]
    assert (created.actor_id, created.team_id) == (admin.pk, team_a.pk)
    assert created.data["max_calls"] == 10 and created.data["scope"] == "token"

    same = limit_update(limit=limit, by=admin, scope="token", server="files", window="minute", max_calls=10)
    assert same.pk == limit.pk and not audit("limit.updated") and version_of(team_a) == v1

    limit_update(limit=limit, by=admin, scope="token", server="files", window="hour", max_calls=20, note="n")
    updated = audit("limit.updated")[-1]
    assert updated.data["changed"] == ["window", "max_calls", "note"]
    assert updated.data["before"] == {"window": "minute", "max_calls": 10, "note": ""}
    assert updated.data["after"] == {"window": "hour", "max_calls": 20, "note": "n"}
    assert version_of(team_a) != v1

    assert limit_set_enabled(limit=limit, by=admin, enabled=False) is True
    assert limit_set_enabled(limit=limit, by=admin, enabled=False) is False
    assert limit_set_enabled(limit=limit, by=admin, enabled=True) is True
    assert [e.kind for e in AuditEvent.objects.filter(kind__in=["limit.enabled", "limit.disabled"])] == [
        "limit.disabled",
        "limit.enabled",
    ]
    limit_delete(limit=limit, by=admin)
    limit_delete(limit=limit, by=admin)  # already gone: nothing more
    assert len(audit("limit.deleted")) == 1 and not RateLimit.objects.exists()


def test_compiled_limits_follow_the_version(team_a, admin) -> None:
    assert team_limits(team_a.pk, version=version_of(team_a)) == ()
    limit = limit_create(team=team_a, by=admin, scope="team", window="hour", max_calls=3)
    assert [c.id for c in team_limits(team_a.pk, version=version_of(team_a))] == [limit.pk]
    limit_set_enabled(limit=limit, by=admin, enabled=False)
    assert team_limits(team_a.pk, version=version_of(team_a)) == ()  # a disabled limit counts nothing


# --- counting: scopes, windows, reset ---------------------------------------------------------------------


def second_token(team: Team, user: Any) -> Any:
    token, _ = token_issue(team=team, user=user, name="second")
    return token


def test_per_token_limits_count_each_token_apart(team_a, admin, member_token: Issued) -> None:
    limit_create(team=team_a, by=admin, scope="token", server="files", window="minute", max_calls=2)
    other = second_token(team_a, admin)
    assert [check(team_a, member_token.token) for _ in range(2)] == [None, None]
    hit = check(team_a, member_token.token)
    assert hit is not None and hit.subject == str(member_token.token.pk)
    assert check(team_a, other) is None  # its own count
    assert check(team_a, member_token.token, server="mail") is None  # the limit is for files only


def test_a_per_team_limit_is_shared_by_the_teams_tokens(
    team_a, team_b, admin, member_token, outsider_token
) -> None:
    limit_create(team=team_a, by=admin, scope="team", window="hour", max_calls=2)
    other = second_token(team_a, admin)
    assert check(team_a, member_token.token) is None
    assert check(team_a, other) is None
    assert check(team_a, member_token.token) is not None
    assert check(team_a, other) is not None
    assert check(team_b, outsider_token.token) is None  # another team: no limit of its own


def test_a_per_tool_limit_counts_each_server_and_tool_apart(team_a, admin, member_token) -> None:
    limit_create(team=team_a, by=admin, scope="tool", server="files", tool="*", window="day", max_calls=1)
    token = member_token.token
    assert check(team_a, token, tool="read_file") is None
    assert check(team_a, token, tool="write_file") is None
    hit = check(team_a, token, tool="read_file")
    assert hit is not None and hit.subject == "files/read_file"
    assert "reached for files/read_file" in hit.reason


@pytest.mark.parametrize(
    ("window", "reset", "within", "next_window"),
    [
        ("minute", "resets at 18:21:00 UTC (in 23 s)", timedelta(seconds=22), timedelta(seconds=23)),
        (
            "hour",
            "resets at 19:00:00 UTC (in 40 min)",
            timedelta(minutes=39, seconds=22),
            timedelta(minutes=39, seconds=23),
        ),
        (
            "day",
            "resets at 2030-05-07 00:00:00 UTC (in 5 h 40 min)",
            timedelta(hours=5, minutes=39),
            timedelta(hours=5, minutes=40),
        ),
    ],
)
def test_fixed_windows_deny_until_their_aligned_end_then_start_from_zero(
    team_a, admin, member_token, window, reset, within, next_window
) -> None:
    limit = limit_create(team=team_a, by=admin, scope="token", server="files", window=window, max_calls=2)
    token = member_token.token
    assert check(team_a, token) is None
    assert check(team_a, token) is None
    hit = check(team_a, token)
    assert hit is not None
    assert hit.reason == (
        f"rate limit #{limit.pk}: 2 calls per {window} per token on files/* reached; {reset}"
    )
    assert check(team_a, token, now=NOW + within) is not None  # the same window
    assert check(team_a, token, now=NOW + next_window) is None  # the next one, from 0
    assert check(team_a, token, now=NOW + next_window) is None
    assert check(team_a, token, now=NOW + next_window) is not None


def test_counting_is_atomic_across_threads(team_a, admin, member_token) -> None:
    limit_create(team=team_a, by=admin, scope="team", window="minute", max_calls=25)
    version = version_of(team_a)
    team_limits(team_a.pk, version=version)  # compiled here: the threads then touch only the cache
    token = member_token.token
    results: list[Any] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def worker() -> None:
        start.wait()
        for _ in range(10):
            hit = limits_check(
                team=team_a, token=token, server=SERVER, tool="read_file", now=NOW, version=version
            )
            with lock:
                results.append(hit)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 160
    assert sum(hit is None for hit in results) == 25  # exactly the limit, never one more
    assert all(hit is None or hit.limit is not None for hit in results)


def test_a_call_a_limit_denies_counts_against_no_limit(team_a, admin, member_token) -> None:
    """The token's limit denies its third call; that call does not eat the team's budget."""
    token_limit = limit_create(team=team_a, by=admin, scope="token", window="day", max_calls=2)
    team_limit = limit_create(team=team_a, by=admin, scope="team", window="day", max_calls=3)
    token, other = member_token.token, second_token(team_a, admin)
    assert [check(team_a, token) is None for _ in range(5)] == [True, True, False, False, False]
    assert check(team_a, other) is None  # the team's third call: 2 + 1, the denied ones not counted
    hit = check(team_a, other)
    assert hit is not None and hit.limit is not None and hit.limit.id == team_limit.pk
    usage = limits.limits_usage(team=team_a, limits=RateLimit.objects.filter(team=team_a), now=NOW)
    assert usage is not None
    assert {pk: u.count for pk, u in usage.items()} == {token_limit.pk: 2, team_limit.pk: 3}


# --- through call_submit: denied at once, audited, alerted ------------------------------------------------


def test_the_call_over_the_limit_is_denied_by_the_system_and_audited(
    team_a, admin, member_token, submit, audit_kinds, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    hits: list[dict[str, str]] = []
    monkeypatch.setattr(metrics, "count_rate_limit_hit", lambda **labels: hits.append(labels))
    limit = limit_create(team=team_a, by=admin, scope="token", server="files", window="day", max_calls=2)
    token = member_token.token
    first = submit(token, arguments={"path": "/srv/a"}).call
    second = submit(token, arguments={"path": "/srv/b"}).call
    assert (first.state, second.state) == ("pending", "pending")
    with django_capture_on_commit_callbacks(execute=True):
        denied = submit(token, arguments={"path": "/srv/c"})
    call = denied.call
    assert not denied.run and call.state == ToolCall.State.DENIED
    assert call.decided_via == ToolCall.DecidedVia.SYSTEM and call.decided_at is not None
    assert call.reason.startswith(
        f"rate limit #{limit.pk}: 2 calls per day per token on files/* reached; resets at "
    )
    assert audit_kinds(call) == ["call.denied"]
    event = AuditEvent.objects.get(call_id=call.pk)
    assert event.data["rate_limit"] == limit.pk and event.data["reason"] == call.reason
    assert hits == [{"team_slug": "alpha", "scope": "token"}]


def test_limits_apply_before_the_rules_so_an_allowed_call_is_still_limited(
    team_a, admin, member_token, submit
) -> None:
    rule_create(team=team_a, by=admin, effect="allow", server="files", tool="*")
    limit_create(
        team=team_a, by=admin, scope="tool", server="files", tool="read_file", window="day", max_calls=1
    )
    assert submit(member_token.token, arguments={"path": "/srv/a"}).call.state == "allowed"
    assert submit(member_token.token, arguments={"path": "/srv/b"}).call.state == "denied"
    assert submit(member_token.token, tool="list_dir", arguments={"path": "/srv"}).call.state == "allowed"


def test_guard_refusals_and_reattached_calls_are_not_counted(team_a, admin, member_token, submit) -> None:
    limit_create(team=team_a, by=admin, scope="token", window="day", max_calls=2)
    token = member_token.token
    schema = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
    refused = call_submit(
        token=token, server=SERVER, tool="read_file", arguments={}, tool_hash=TOOL_HASH, input_schema=schema
    )
    assert refused.call.state == "denied" and "invalid input" in refused.call.reason
    held = submit(token, arguments={"path": "/srv/a"})
    again = submit(token, arguments={"path": "/srv/a"})  # the client repeats the held call: the same call
    assert again.reattached and again.call.pk == held.call.pk
    assert submit(token, arguments={"path": "/srv/b"}).call.state == "pending"  # the second counted call
    assert submit(token, arguments={"path": "/srv/c"}).call.state == "denied"


def test_hits_raise_one_alert_per_limit_and_subject_with_a_count(team_a, admin, member_token, submit) -> None:
    limit = limit_create(team=team_a, by=admin, scope="token", window="day", max_calls=1)
    token = member_token.token
    submit(token, arguments={"n": 0})
    for n in range(1, 4):
        assert submit(token, arguments={"n": n}).call.state == "denied"
    alert = Alert.objects.get(team=team_a, kind="rate_limit")
    assert alert.key == f"{limit.pk}:{token.pk}" and alert.count == 3 and alert.state == "open"
    assert alert.token_id == token.pk
    assert f"Rate limit #{limit.pk} reached by token “laptop”" in alert.message
    assert len(audit("alert.raised")) == 1


# --- failing closed ---------------------------------------------------------------------------------------


def test_without_its_cache_a_limited_call_is_denied_never_let_through(
    team_a, admin, member_token, submit
) -> None:
    rule_create(team=team_a, by=admin, effect="allow", server="*", tool="*")
    limit_create(team=team_a, by=admin, scope="team", window="minute", max_calls=1000)
    with override_settings(CACHES=CLOSED_PORT_CACHE):
        result = submit(member_token.token)
    call = result.call
    assert not result.run and call.state == "denied" and call.decided_via == "system"
    assert call.reason.startswith("denied: rate limits unavailable")
    assert AuditEvent.objects.get(call_id=call.pk).data["rate_limit"] == "unavailable"
    assert not Alert.objects.exists()  # its notifications would need the same Redis: logged instead


def test_without_its_cache_a_team_without_limits_is_not_affected(team_a, admin, member_token, submit) -> None:
    rule_create(team=team_a, by=admin, effect="allow", server="*", tool="*")
    limit_create(team=team_a, by=admin, scope="team", server="mail", window="minute", max_calls=1)
    with override_settings(CACHES=CLOSED_PORT_CACHE):
        assert submit(member_token.token).call.state == "allowed"  # no limit matches files/read_file


def test_without_its_cache_the_limits_page_says_so(team_a, admin) -> None:
    limit_create(team=team_a, by=admin, scope="team", window="minute", max_calls=5)
    client = Client()
    client.force_login(admin)
    with override_settings(CACHES=CLOSED_PORT_CACHE):
        page = client.get(reverse("approvals:limits")).content.decode()
    assert "rate limit counters cannot be read" in page


# --- the pages --------------------------------------------------------------------------------------------


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_limits_page_shows_each_limit_with_its_current_count(team_a, admin, member_token, submit) -> None:
    limit_create(team=team_a, by=admin, scope="token", window="day", max_calls=5, note="bursts")
    for n in range(3):
        submit(member_token.token, arguments={"n": n})
    page = logged_in(admin).get(reverse("approvals:limits")).content.decode()
    assert "bursts" in page and "Per token" in page
    assert "<strong>3</strong> / 5" in page and "token “laptop”" in page
    assert reverse("approvals:limit_new") in page and "Disable" in page


def test_reviewers_and_auditors_read_the_limits_without_the_controls(team_a, admin, reviewer) -> None:
    limit_create(team=team_a, by=admin, scope="team", window="hour", max_calls=5)
    page = logged_in(reviewer).get(reverse("approvals:limits")).content.decode()
    assert "5</strong> calls per hour" in page
    assert reverse("approvals:limit_new") not in page and "Disable" not in page
    assert reverse("approvals:limits") in logged_in(reviewer).get(reverse("approvals:rules")).content.decode()


def test_an_admin_creates_edits_switches_and_deletes_a_limit(team_a, admin) -> None:
    client = logged_in(admin)
    data = {
        "max_calls": "10",
        "window": "minute",
        "scope": "token",
        "server": "files",
        "tool": "*",
        "enabled": "on",
    }
    response = client.post(reverse("approvals:limit_new"), data)
    assert response.status_code == 302
    limit = RateLimit.objects.get(team=team_a)
    assert (limit.max_calls, limit.window, limit.scope, limit.server, limit.created_by_id) == (
        10,
        "minute",
        "token",
        "files",
        admin.pk,
    )
    edit = reverse("approvals:limit_edit", args=[limit.pk])
    assert 'value="files"' in client.get(edit).content.decode()
    assert client.post(edit, {**data, "max_calls": "20", "note": "more"}).status_code == 302
    limit.refresh_from_db()
    assert (limit.max_calls, limit.note) == (20, "more")
    client.post(reverse("approvals:limit_enabled", args=[limit.pk]), {"enabled": "0"})
    limit.refresh_from_db()
    assert not limit.enabled
    client.post(reverse("approvals:limit_delete", args=[limit.pk]))
    assert not RateLimit.objects.exists()
    assert [e.kind for e in AuditEvent.objects.filter(kind__startswith="limit.")] == [
        "limit.created",
        "limit.updated",
        "limit.disabled",
        "limit.deleted",
    ]


def test_the_form_shows_what_is_wrong(team_a, admin) -> None:
    data = {"max_calls": "0", "window": "minute", "scope": "token", "server": "bad name ", "tool": "*"}
    response = logged_in(admin).post(reverse("approvals:limit_new"), data)
    page = response.content.decode()
    assert response.status_code == 200 and not RateLimit.objects.exists()
    assert "greater than or equal to 1" in page


# --- the policy file --------------------------------------------------------------------------------------


def seed_limits(team: Team, by: Any) -> None:
    limit_create(
        team=team, by=by, scope="token", server="files", window="minute", max_calls=10, note="bursts"
    )
    limit_create(team=team, by=by, scope="team", window="day", max_calls=5000)
    limit_create(
        team=team, by=by, scope="tool", server="*", tool="write_*", window="hour", max_calls=3, enabled=False
    )


def limit_rows(team: Team) -> list[tuple[Any, ...]]:
    return list(
        RateLimit.objects.filter(team=team)
        .order_by("id")
        .values_list("scope", "server", "tool", "window", "max_calls", "note", "enabled")
    )


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_limits_round_trip_through_the_policy_file(team_a, team_b, admin, fmt) -> None:
    seed_limits(team_a, admin)
    text = export_text(team_a, fmt=fmt)
    document = yaml.safe_load(text)
    assert document["limits"][0] == {
        "scope": "token",
        "server": "files",
        "tool": "*",
        "window": "minute",
        "max_calls": 10,
        "note": "bursts",
        "enabled": True,
    }
    result = import_text(team=team_b, text=text, by=admin, fmt=fmt)
    assert (result.limits_added, result.limits_removed, result.limits_kept) == (3, 0, 0)
    assert limit_rows(team_b) == limit_rows(team_a)
    assert export_text(team_b, fmt=fmt) == text.replace("alpha", "bravo")
    again = import_text(team=team_b, text=text, by=admin, fmt=fmt)
    assert not again.changed and again.limits_kept == 3
    assert str(again) == "0 rules added, 0 removed, 0 unchanged; 0 rate limits added, 0 removed, 3 unchanged"
    imported = audit("rules.imported")[-1]
    assert imported.data["limits_kept"] == 3 and imported.data["limits_added"] == []


def test_an_import_makes_the_limits_exactly_the_files_and_moves_the_version(team_a, admin) -> None:
    seed_limits(team_a, admin)
    kept = RateLimit.objects.filter(team=team_a).order_by("id").first()
    before = version_of(team_a)
    text = (
        "version: 1\nrules: []\nlimits:\n"
        "  - {scope: token, server: files, tool: '*', window: minute, max_calls: 10, note: bursts}\n"
        "  - {scope: team, window: hour, max_calls: 7}\n"
    )
    result = import_text(team=team_a, text=text, by=admin)
    assert (result.limits_added, result.limits_removed, result.limits_kept) == (1, 2, 1)
    assert limit_rows(team_a) == [
        ("token", "files", "*", "minute", 10, "bursts", True),
        ("team", "*", "*", "hour", 7, "", True),
    ]
    assert RateLimit.objects.filter(pk=kept.pk).exists()  # equal: kept, its counters go on
    assert version_of(team_a) != before


def test_a_file_without_a_limits_section_leaves_the_limits_alone(team_a, admin) -> None:
    seed_limits(team_a, admin)
    import_text(team=team_a, text="version: 1\nrules: []\n", by=admin)
    assert len(limit_rows(team_a)) == 3
    import_text(team=team_a, text="version: 1\nrules: []\nlimits: []\n", by=admin)
    assert limit_rows(team_a) == []


def test_a_broken_limit_refuses_the_whole_file_with_lines(team_a, admin) -> None:
    rule_create(team=team_a, by=admin, effect="allow", server="files", tool="read_file")
    seed_limits(team_a, admin)
    text = (
        "version: 1\n"  # 1
        "rules: []\n"  # 2
        "limits:\n"  # 3
        "  - scope: token\n"  # 4
        "    window: fortnight\n"  # 5
        "    max_calls: 0\n"  # 6
        "  - scope: team\n"  # 7
        "    colour: red\n"  # 8
        "  - 5\n"  # 9
    )
    with pytest.raises(PolicyFileError) as refused:
        import_text(team=team_a, text=text, by=admin)
    assert [str(p) for p in refused.value.problems] == [
        "line 5: limits[0].window: must be one of: minute, hour, day",
        "line 6: limits[0].max_calls: must be between 1 and 1,000,000,000 "
        "(disable the limit to stop counting)",
        "line 7: limits[1]: window is missing",
        "line 7: limits[1]: max_calls is missing",
        "line 8: limits[1].colour: unknown key "
        "(expected: scope, server, tool, window, max_calls, note, enabled)",
        "line 9: limits[2]: a rate limit must be a mapping with scope, window and max_calls",
    ]
    assert Rule.objects.filter(team=team_a).count() == 1 and len(limit_rows(team_a)) == 3  # nothing changed


def test_more_limits_than_a_team_may_have_are_refused(team_a, admin) -> None:
    entries = "".join(f"  - {{scope: team, window: day, max_calls: {n + 1}}}\n" for n in range(101))
    with pytest.raises(PolicyFileError, match="101 rate limits: a team has at most 100"):
        import_text(team=team_a, text=f"version: 1\nrules: []\nlimits:\n{entries}", by=admin)


def test_usage_is_none_when_the_counters_cannot_be_read(team_a, admin) -> None:
    limit_create(team=team_a, by=admin, scope="team", window="minute", max_calls=5)
    with override_settings(CACHES=CLOSED_PORT_CACHE):
        assert limits.limits_usage(team=team_a, limits=RateLimit.objects.all(), now=NOW) is None

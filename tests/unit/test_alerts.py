"""Alerts to a team's admins (issue 5, point 4): the detectors, their thresholds, dedup, acknowledging, the
Alerts page and its nav badge, and delivery through the team's notification channels.

The detectors run once the change they react to commits: tests that drive them through the services wrap
the change in ``django_capture_on_commit_callbacks(execute=True)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

from approvals.models import Alert, AuditEvent, BridgeToken, NotificationChannel, Team
from approvals.services import alerts as alert_services
from approvals.services.alerts import (
    MAX_SEEN_ADDRESSES,
    alert_acknowledge,
    alert_check_denials,
    alert_check_volume,
    alert_raise,
    alerts_acknowledge_all,
    window_count,
)
from approvals.services.calls import call_decide
from approvals.services.teams import member_add, user_get_or_create
from approvals.services.tokens import token_issue, token_touch
from approvals.services.tools import tools_seen
from mcpbridge import protocol

from .conftest import OTHER_TOOL_HASH, SERVER, TOOL_HASH, Issued

pytestmark = pytest.mark.django_db
ALERTS = reverse("approvals:alerts")
SETTINGS = reverse("approvals:team_settings")
Commits = Callable[..., AbstractContextManager[Any]]


@pytest.fixture
def commits(django_capture_on_commit_callbacks: Commits) -> Callable[[], AbstractContextManager[Any]]:
    """Run what was registered on commit (the detectors, the notifications) when the block ends."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture
def auditor(team_a: Team) -> Any:
    user = user_get_or_create(email="audrey@example.com", password="correct horse battery staple")
    member_add(team=team_a, user=user, role="auditor")
    return user


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def thresholds(team: Team, *, calls: int = 300, denials: int = 20) -> None:
    Team.objects.filter(pk=team.pk).update(
        alert_calls_per_token_hour=calls, alert_denials_per_10_minutes=denials
    )


def alerts_of(team: Team, kind: str) -> list[Alert]:
    return list(Alert.objects.filter(team=team, kind=kind).order_by("pk"))


def raised(kind: str) -> int:
    return AuditEvent.objects.filter(kind="alert.raised", data__alert_kind=kind).count()


def submit_distinct(submit: Callable[..., Any], token: BridgeToken, count: int, start: int = 0) -> list[Any]:
    """``count`` calls with distinct arguments (identical ones would re-attach to the same held call)."""
    return [submit(token, arguments={"path": f"/srv/{start + n}.txt"}).call for n in range(count)]


# --- unusual call volume ----------------------------------------------------------------------------------
def test_volume_alerts_at_threshold_plus_one_and_not_at_the_threshold(
    team_a: Team, member_token: Issued, submit: Callable[..., Any], commits: Any
) -> None:
    thresholds(team_a, calls=3)
    with commits():
        submit_distinct(submit, member_token.token, 3)
    assert alerts_of(team_a, "volume") == []
    with commits():
        submit_distinct(submit, member_token.token, 1, start=3)
    [alert] = alerts_of(team_a, "volume")
    assert (alert.state, alert.count, alert.token_id) == ("open", 1, member_token.token.pk)
    assert "laptop" in alert.message and "more than this team's threshold of 3" in alert.message
    assert alert.data["calls"] == 4 and raised("volume") == 1


def test_volume_counts_every_outcome_but_not_a_reattached_call(
    team_a: Team, member_token: Issued, submit: Callable[..., Any], commits: Any
) -> None:
    thresholds(team_a, calls=2)
    with commits():
        for _ in range(5):  # the same held call, re-attached: one call
            submit(member_token.token)
        submit(member_token.token, tool_hash=None)  # denied: no such tool; still a call
    assert alerts_of(team_a, "volume") == []
    with commits():
        submit(member_token.token, arguments={"path": "/srv/other"})
    assert len(alerts_of(team_a, "volume")) == 1


def test_volume_zero_is_off(
    team_a: Team, member_token: Issued, submit: Callable[..., Any], commits: Any
) -> None:
    thresholds(team_a, calls=0)
    with commits():
        submit_distinct(submit, member_token.token, 12)
    assert alerts_of(team_a, "volume") == []


def test_volume_is_per_token(
    team_a: Team, member: Any, member_token: Issued, submit: Callable[..., Any], commits: Any
) -> None:
    thresholds(team_a, calls=2)
    other, _ = token_issue(team=team_a, user=member, name="desktop")
    with commits():
        submit_distinct(submit, member_token.token, 2)
        submit_distinct(submit, other, 2, start=10)
    assert alerts_of(team_a, "volume") == []


def test_an_exceeded_volume_counts_up_its_open_alert_at_most_once_a_minute(
    team_a: Team, member_token: Issued
) -> None:
    token = member_token.token
    start = datetime(2030, 1, 1, 10, 0, 5, tzinfo=UTC)
    results = [alert_check_volume(token=token, team=team_a, threshold=2, now=start) for _ in range(6)]
    assert [result is not None for result in results] == [False, False, True, False, False, False]
    again = alert_check_volume(token=token, team=team_a, threshold=2, now=start + timedelta(seconds=61))
    assert again is not None and again.pk == results[2].pk  # type: ignore[union-attr]
    [alert] = alerts_of(team_a, "volume")
    assert alert.count == 2 and raised("volume") == 1  # repeats are counted, not audited again


def test_the_volume_window_slides_over_the_previous_hour(team_a: Team, member_token: Issued) -> None:
    token = member_token.token
    late = datetime(2030, 1, 1, 10, 45, tzinfo=UTC)  # 3/4 of the way through the 10:00 bucket
    for _ in range(4):
        assert alert_check_volume(token=token, team=team_a, threshold=5, now=late) is None
    # At 11:15 a quarter of the last hour lies in the 10:00 bucket: 3 of its 4 calls count.
    early = datetime(2030, 1, 1, 11, 15, tzinfo=UTC)
    assert alert_check_volume(token=token, team=team_a, threshold=5, now=early) is None  # 1 + 3
    assert alert_check_volume(token=token, team=team_a, threshold=5, now=early) is None  # 2 + 3
    assert alert_check_volume(token=token, team=team_a, threshold=5, now=early) is not None  # 3 + 3


def test_window_count_is_exact_within_one_bucket() -> None:
    now = datetime(2030, 1, 1, 12, 0, 1, tzinfo=UTC)
    assert [window_count("test:exact", window=600, now=now) for _ in range(3)] == [1, 2, 3]


# --- bursts of denials ------------------------------------------------------------------------------------
def test_denials_alert_at_threshold_plus_one_and_not_at_the_threshold(
    team_a: Team, member_token: Issued, submit: Callable[..., Any], commits: Any
) -> None:
    thresholds(team_a, denials=2)
    Team.objects.filter(pk=team_a.pk).update(mode="whitelist")  # no rule matches: denied
    with commits():
        calls = submit_distinct(submit, member_token.token, 2)
    assert {call.state for call in calls} == {"denied"}
    assert alerts_of(team_a, "denials") == []
    with commits():
        submit_distinct(submit, member_token.token, 1, start=2)
    [alert] = alerts_of(team_a, "denials")
    assert alert.key == "team" and alert.token is None
    assert "About 3 calls were denied in the last 10 minutes" in alert.message
    assert "files/read_file" in alert.message and raised("denials") == 1


def test_a_reviewers_denials_count_too(
    team_a: Team, reviewer: Any, member_token: Issued, submit: Callable[..., Any], commits: Any
) -> None:
    thresholds(team_a, denials=1)
    held = submit_distinct(submit, member_token.token, 2)
    with commits():
        call_decide(call_id=str(held[0].pk), reviewer=reviewer, allow=False)
    assert alerts_of(team_a, "denials") == []
    with commits():
        call_decide(call_id=str(held[1].pk), reviewer=reviewer, allow=False, reason="no")
    assert len(alerts_of(team_a, "denials")) == 1


def test_denials_zero_is_off_and_allowed_calls_do_not_count(
    team_a: Team, member_token: Issued, submit: Callable[..., Any], commits: Any
) -> None:
    thresholds(team_a, denials=0)
    Team.objects.filter(pk=team_a.pk).update(mode="whitelist")
    with commits():
        submit_distinct(submit, member_token.token, 5)
    assert alerts_of(team_a, "denials") == []
    now = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
    assert alert_check_denials(team=team_a, threshold=0, now=now) is None


def test_a_denial_reason_is_masked_in_the_alert(
    team_a: Team, member_token: Issued, submit: Callable[..., Any]
) -> None:
    call = submit(member_token.token, tool_hash=None).call
    call.reason = "denied: api_key=sk-live-abcdefghijklmnop1234"
    now = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
    assert alert_check_denials(team=team_a, threshold=1, latest=call, now=now) is None
    alert = alert_check_denials(team=team_a, threshold=1, latest=call, now=now)
    assert alert is not None and "sk-live-abcdefghijklmnop1234" not in alert.message


# --- changed tool definitions -----------------------------------------------------------------------------
def tool(name: str = "read_file", tool_hash: str = TOOL_HASH) -> protocol.ToolInfo:
    return protocol.ToolInfo(name=name, hash=tool_hash)


def test_a_changed_tool_definition_alerts_but_the_first_sighting_does_not(team_a: Team, commits: Any) -> None:
    with commits():
        tools_seen(team=team_a, server=SERVER, tools=[tool()])
        tools_seen(team=team_a, server=SERVER, tools=[tool()])  # the same again
    assert alerts_of(team_a, "tool_changed") == []
    with commits():
        tools_seen(team=team_a, server=SERVER, tools=[tool(tool_hash=OTHER_TOOL_HASH)])
    [alert] = alerts_of(team_a, "tool_changed")
    assert alert.key == "files/read_file" and "changed its definition" in alert.message
    assert alert.data == {"server": SERVER, "tool": "read_file", "hash": OTHER_TOOL_HASH, "added": False}


def test_accepting_the_new_definition_acknowledges_its_alert(team_a: Team, admin: Any, commits: Any) -> None:
    from approvals.services.tools import tool_pin_accept

    with commits():
        tools_seen(team=team_a, server=SERVER, tools=[tool()])
        tools_seen(team=team_a, server=SERVER, tools=[tool(tool_hash=OTHER_TOOL_HASH)])
    [alert] = alerts_of(team_a, "tool_changed")
    assert alert.state == "open"
    assert tool_pin_accept(team=team_a, server=SERVER, tool="read_file", tool_hash=OTHER_TOOL_HASH, by=admin)
    alert.refresh_from_db()
    assert (alert.state, alert.acknowledged_by) == ("acknowledged", admin)
    assert AuditEvent.objects.filter(kind="alert.acknowledged", actor_id=admin.pk).count() == 1


def test_a_new_tool_on_a_known_server_alerts(team_a: Team, commits: Any) -> None:
    with commits():
        tools_seen(team=team_a, server=SERVER, tools=[tool()])
        tools_seen(team=team_a, server="git", tools=[tool("log")])  # a new server: trusted on first use
        tools_seen(team=team_a, server=SERVER, tools=[tool(), tool("delete_file", "c" * 64)])
    [alert] = alerts_of(team_a, "tool_changed")
    assert alert.key == "files/delete_file" and alert.data["added"] is True
    assert "A new tool “delete_file” appeared on the known server “files”" in alert.message


def test_an_open_alert_counts_repeats_and_a_new_one_opens_after_acknowledging(
    team_a: Team, admin: Any, commits: Any
) -> None:
    with commits():
        tools_seen(team=team_a, server=SERVER, tools=[tool()])
        tools_seen(team=team_a, server=SERVER, tools=[tool(tool_hash=OTHER_TOOL_HASH)])
        tools_seen(team=team_a, server=SERVER, tools=[tool(tool_hash="d" * 64)])
    [alert] = alerts_of(team_a, "tool_changed")
    assert alert.count == 2 and raised("tool_changed") == 1
    assert alert_acknowledge(alert=alert, by=admin)
    with commits():
        tools_seen(team=team_a, server=SERVER, tools=[tool(tool_hash="e" * 64)])
    first, second = alerts_of(team_a, "tool_changed")
    assert (first.state, second.state, second.count) == ("acknowledged", "open", 1)
    assert raised("tool_changed") == 2


# --- a token used from a new address ----------------------------------------------------------------------
def seen(token: BridgeToken) -> list[str]:
    return list(BridgeToken.objects.get(pk=token.pk).seen_addresses)


def test_a_tokens_first_address_does_not_alert_and_a_new_one_does(
    team_a: Team, member_token: Issued, commits: Any
) -> None:
    token = member_token.token
    with commits():
        token_touch(token=token, address="192.0.2.7")
        token_touch(token=token, address="192.0.2.7")
    assert alerts_of(team_a, "new_address") == [] and seen(token) == ["192.0.2.7"]
    with commits():
        token_touch(token=token, address="198.51.100.4")
    [alert] = alerts_of(team_a, "new_address")
    assert alert.token == token and alert.key == f"token:{token.pk}:198.51.100.4"
    assert "used from a new address, 198.51.100.4 (before: 192.0.2.7)" in alert.message
    assert seen(token) == ["192.0.2.7", "198.51.100.4"]
    with commits():  # known now: both of them
        token_touch(token=token, address="192.0.2.7")
        token_touch(token=token, address="198.51.100.4")
    assert len(alerts_of(team_a, "new_address")) == 1
    row = BridgeToken.objects.get(pk=token.pk)
    assert row.last_used_ip == "198.51.100.4" and row.last_used_at is not None


def test_seen_addresses_keep_the_latest_twenty(team_a: Team, member_token: Issued, commits: Any) -> None:
    token = member_token.token
    with commits():
        for n in range(MAX_SEEN_ADDRESSES + 5):
            token_touch(token=token, address=f"10.0.0.{n}")
        token_touch(token=token, address="10.0.0.6")  # seen again: the most recent now
    addresses = seen(token)
    assert len(addresses) == MAX_SEEN_ADDRESSES
    assert addresses[-1] == "10.0.0.6" and "10.0.0.0" not in addresses and "10.0.0.24" in addresses
    assert len(alerts_of(team_a, "new_address")) == MAX_SEEN_ADDRESSES + 4  # every one but the first
    with commits():  # forgotten: new again
        token_touch(token=token, address="10.0.0.0")
    assert len(alerts_of(team_a, "new_address")) == MAX_SEEN_ADDRESSES + 5


def test_a_token_used_before_addresses_were_remembered_knows_its_last_one(
    team_a: Team, member_token: Issued, commits: Any
) -> None:
    token = member_token.token
    BridgeToken.objects.filter(pk=token.pk).update(last_used_ip="192.0.2.7", seen_addresses=[])
    with commits():
        token_touch(token=token, address="192.0.2.7")
    assert alerts_of(team_a, "new_address") == []
    with commits():
        token_touch(token=token, address="203.0.113.9")
    assert len(alerts_of(team_a, "new_address")) == 1


def test_no_address_is_nothing_to_alert(team_a: Team, member_token: Issued, commits: Any) -> None:
    with commits():
        token_touch(token=member_token.token, address=None)
    assert seen(member_token.token) == [] and alerts_of(team_a, "new_address") == []


# --- raising, acknowledging -------------------------------------------------------------------------------
def test_alert_raise_refuses_an_unknown_kind(team_a: Team) -> None:
    with pytest.raises(ValueError, match="Unknown alert kind"):
        alert_raise(team=team_a, kind="nonsense", key="k", message="m")


def test_a_long_key_still_deduplicates(team_a: Team) -> None:
    key = "x" * 300
    first, new = alert_raise(team=team_a, kind="rate_limit", key=key, message="m")
    again, new_again = alert_raise(team=team_a, kind="rate_limit", key=key, message="m")
    assert (new, new_again, again.pk, Alert.objects.get(pk=first.pk).count) == (True, False, first.pk, 2)


def test_acknowledging_is_audited_once(team_a: Team, admin: Any, member_token: Issued) -> None:
    alert, _ = alert_raise(
        team=team_a, kind="rate_limit", key="1:token", message="limit", token=member_token.token
    )
    assert alert_acknowledge(alert=alert, by=admin) is True
    assert alert_acknowledge(alert=alert, by=admin) is False
    alert.refresh_from_db()
    assert (alert.state, alert.acknowledged_by) == ("acknowledged", admin)
    [event] = AuditEvent.objects.filter(kind="alert.acknowledged")
    assert (event.actor_id, event.token_id, event.data["alert"], event.data["all"]) == (
        admin.pk,
        member_token.token.pk,
        alert.pk,
        False,
    )


def test_acknowledge_all_closes_only_this_teams_open_alerts(team_a: Team, team_b: Team, admin: Any) -> None:
    for key in ("a", "b"):
        alert_raise(team=team_a, kind="rate_limit", key=key, message=key)
    done, _ = alert_raise(team=team_a, kind="rate_limit", key="c", message="c")
    alert_acknowledge(alert=done, by=admin)
    alert_raise(team=team_b, kind="rate_limit", key="a", message="bravo's")
    assert alerts_acknowledge_all(team=team_a, by=admin) == 2
    assert not Alert.objects.filter(team=team_a, state="open").exists()
    assert Alert.objects.filter(team=team_b, state="open").count() == 1
    assert AuditEvent.objects.filter(kind="alert.acknowledged", data__all=True).count() == 2


# --- delivery -----------------------------------------------------------------------------------------------
@pytest.fixture
def eager_deliveries(settings: Any) -> Iterator[None]:
    """Deliveries in-process (as in the embedded default) also when the suite runs with Redis."""
    from approvals.services.notifications import wait_for_eager_deliveries

    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    mail.outbox = []
    yield
    wait_for_eager_deliveries()


@pytest.mark.django_db(transaction=True)
def test_a_new_alert_is_sent_to_the_channels_that_subscribe_to_alerts_once(
    team_a: Team, member_token: Issued, eager_deliveries: None
) -> None:
    from approvals.services.notifications import wait_for_eager_deliveries

    for events, target in ((["alert"], "admins@example.com"), (["call.held"], "reviewers@example.com")):
        NotificationChannel.objects.create(
            team=team_a, kind="email", name=target, target=target, events=events
        )
    token = member_token.token
    token_touch(token=token, address="192.0.2.7")
    token_touch(token=token, address="198.51.100.4")  # on commit: the alert, then its notification
    # The test database is in-memory SQLite with a shared cache, which has no busy wait: a write here while
    # the delivery thread records its success fails one of them with "table is locked".
    wait_for_eager_deliveries()
    token_touch(token=token, address="192.0.2.7")
    alert_raise(team=team_a, kind="new_address", key=f"token:{token.pk}:198.51.100.4", message="again")
    wait_for_eager_deliveries()
    [message] = mail.outbox  # one new alert; its repeat is not sent
    assert message.to == ["admins@example.com"]
    assert "Token used from a new address" in message.subject and "198.51.100.4" in message.body
    assert f"{ALERTS}?team=alpha" in message.body
    assert NotificationChannel.objects.get(target="admins@example.com").last_sent_at is not None


def test_the_payload_names_the_token_without_a_secret_key(team_a: Team, member_token: Issued) -> None:
    alert, _ = alert_raise(team=team_a, kind="volume", key="k", message="m", token=member_token.token)
    payload = alert_services.alert_payload(alert)
    assert payload["token_prefix"] == member_token.token.prefix and payload["link"].endswith(
        "/alerts/?team=alpha"
    )
    assert member_token.raw not in repr(payload)


# --- the Alerts page ----------------------------------------------------------------------------------------
def test_the_page_shows_open_alerts_first_and_escapes_untrusted_text(
    team_a: Team, admin: Any, member_token: Issued
) -> None:
    old, _ = alert_raise(team=team_a, kind="rate_limit", key="old", message="an old one")
    alert_acknowledge(alert=old, by=admin)
    alert_raise(
        team=team_a,
        kind="tool_changed",
        key="files/x",
        message="The tool “<script>alert(1)</script>” changed",
        token=member_token.token,
    )
    page = logged_in(admin).get(ALERTS).content.decode()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.index('data-state="open"') < page.index('data-state="acknowledged"')
    assert "Acknowledge all" in page and f"sgo_{member_token.token.prefix}_" in page
    assert 'data-open-alerts="1"' in page  # the nav's badge


def test_the_filter_shows_one_state(team_a: Team, admin: Any) -> None:
    done, _ = alert_raise(team=team_a, kind="rate_limit", key="done", message="acknowledged one")
    alert_acknowledge(alert=done, by=admin)
    alert_raise(team=team_a, kind="rate_limit", key="open", message="open one")
    client = logged_in(admin)
    open_page = client.get(ALERTS, {"state": "open"}).content.decode()
    acknowledged_page = client.get(ALERTS, {"state": "acknowledged"}).content.decode()
    assert "open one" in open_page and "acknowledged one" not in open_page
    assert "acknowledged one" in acknowledged_page and "open one" not in acknowledged_page


def test_an_admin_acknowledges_from_the_page(team_a: Team, admin: Any) -> None:
    alert, _ = alert_raise(team=team_a, kind="rate_limit", key="k", message="m")
    response = logged_in(admin).post(
        reverse("approvals:alert_acknowledge", args=[alert.pk]), {"state": "open"}
    )
    assert response.status_code == 302 and response["Location"] == f"{ALERTS}?team=alpha&state=open"
    assert Alert.objects.get(pk=alert.pk).state == "acknowledged"
    page = logged_in(admin).get(ALERTS, {"state": "open"}).content.decode()
    assert "No open alerts." in page and "data-open-alerts" not in page


def test_an_auditor_reads_but_cannot_acknowledge(team_a: Team, auditor: Any) -> None:
    alert, _ = alert_raise(team=team_a, kind="rate_limit", key="k", message="limit reached")
    client = logged_in(auditor)
    page = client.get(ALERTS).content.decode()
    assert "limit reached" in page and "data-open-alerts" not in page
    assert "/acknowledge/" not in page and "acknowledge-all" not in page  # no forms to acknowledge
    assert client.post(reverse("approvals:alert_acknowledge", args=[alert.pk])).status_code == 403
    assert client.post(reverse("approvals:alerts_acknowledge_all")).status_code == 403
    assert Alert.objects.get(pk=alert.pk).state == "open"


def test_another_teams_alert_cannot_be_acknowledged(team_b: Team, admin: Any) -> None:
    theirs, _ = alert_raise(team=team_b, kind="rate_limit", key="k", message="bravo's")
    assert logged_in(admin).post(reverse("approvals:alert_acknowledge", args=[theirs.pk])).status_code == 403
    assert Alert.objects.get(pk=theirs.pk).state == "open"


# --- thresholds in the team's settings ---------------------------------------------------------------------
def settings_form(**changes: Any) -> dict[str, Any]:
    values = {"name": "Alpha", "mode": "review", "default_deadline_seconds": 600}
    values.update(changes)
    return values


def test_thresholds_are_saved_and_audited(admin: Any, team_a: Team) -> None:
    form = settings_form(alert_calls_per_token_hour=50, alert_denials_per_10_minutes=0)
    assert logged_in(admin).post(SETTINGS, form).status_code == 302
    team_a.refresh_from_db()
    assert (team_a.alert_calls_per_token_hour, team_a.alert_denials_per_10_minutes) == (50, 0)
    event = AuditEvent.objects.get(kind="team.settings_changed")
    assert event.data["changed"] == {"alert_calls_per_token_hour": 50, "alert_denials_per_10_minutes": 0}


def test_thresholds_left_out_keep_their_values(admin: Any, team_a: Team) -> None:
    thresholds(team_a, calls=7, denials=8)
    assert logged_in(admin).post(SETTINGS, settings_form(mode="whitelist")).status_code == 302
    team_a.refresh_from_db()
    assert (team_a.mode, team_a.alert_calls_per_token_hour, team_a.alert_denials_per_10_minutes) == (
        "whitelist",
        7,
        8,
    )


@pytest.mark.parametrize("value", [-1, 1_000_001, "many"])
def test_a_threshold_out_of_range_is_refused(admin: Any, team_a: Team, value: Any) -> None:
    response = logged_in(admin).post(SETTINGS, settings_form(alert_calls_per_token_hour=value))
    assert response.status_code == 200
    assert Team.objects.get(pk=team_a.pk).alert_calls_per_token_hour == 300
    assert not AuditEvent.objects.filter(kind="team.settings_changed").exists()


def test_the_settings_page_shows_the_thresholds(admin: Any, team_a: Team) -> None:
    page = logged_in(admin).get(SETTINGS).content.decode()
    assert 'name="alert_calls_per_token_hour"' in page and 'value="300"' in page
    assert 'name="alert_denials_per_10_minutes"' in page and 'value="20"' in page


def test_a_new_threshold_applies_to_the_next_call_of_a_connected_bridge(
    admin: Any, team_a: Team, member_token: Issued, submit: Callable[..., Any], commits: Any
) -> None:
    token = BridgeToken.objects.select_related("team", "user").get(pk=member_token.token.pk)  # as at connect
    with commits():
        submit_distinct(submit, token, 2)
    logged_in(admin).post(SETTINGS, settings_form(alert_calls_per_token_hour=2))
    with commits():
        submit_distinct(submit, token, 1, start=2)
    assert len(alerts_of(team_a, "volume")) == 1

"""The reviewers' pages with Django's test client: login, team access, the decide fallback, escaping."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from approvals.models import Rule, ToolCall
from approvals.services.calls import call_decide

from .conftest import Issued

pytestmark = pytest.mark.django_db

QUEUE = reverse("approvals:queue")
HISTORY = reverse("approvals:history")


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def decide_url(call: ToolCall | str) -> str:
    return reverse("approvals:decide", args=[str(call.pk) if isinstance(call, ToolCall) else call])


@pytest.mark.parametrize("url", [QUEUE, HISTORY, f"{QUEUE}?team=alpha"])
def test_pages_require_login(client: Client, team_a: Any, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


def test_the_queue_page_is_wired_to_the_teams_socket(reviewer: Any) -> None:
    response = logged_in(reviewer).get(QUEUE)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-team="alpha"' in html
    assert 'data-socket-path="/ws/review/?team=alpha"' in html


@pytest.mark.parametrize("url", [QUEUE, HISTORY])
def test_an_outsider_asking_for_another_team_gets_403(outsider: Any, team_a: Any, url: str) -> None:
    assert logged_in(outsider).get(f"{url}?team=alpha").status_code == 403


# History is no review page any more: a member sees their own calls there (test_audit_views.py).
@pytest.mark.parametrize("url", [f"{QUEUE}?team=alpha"])
def test_a_plain_member_may_not_see_the_review_pages(member: Any, url: str) -> None:
    assert logged_in(member).get(url).status_code == 403


def test_a_plain_member_lands_on_their_tokens(member: Any) -> None:
    response = logged_in(member).get(QUEUE)
    assert response.status_code == 302 and response["Location"] == "/tokens/"


def test_the_outsider_sees_their_own_team_by_default(outsider: Any) -> None:
    response = logged_in(outsider).get(QUEUE)
    assert response.status_code == 200
    assert 'data-team="bravo"' in response.content.decode()


def test_someone_in_no_team_is_told_so(django_user_model: Any) -> None:
    lonely = django_user_model.objects.create_user(username="lonely@example.com", email="lonely@example.com")
    response = logged_in(lonely).get(QUEUE)
    assert response.status_code == 200
    assert "not in a team yet" in response.content.decode()


def test_a_user_in_two_teams_switches_with_the_team_parameter(reviewer: Any, team_b: Any) -> None:
    from approvals.services.teams import member_add

    member_add(team=team_b, user=reviewer, role="reviewer")
    client = logged_in(reviewer)
    assert 'data-team="bravo"' in client.get(f"{QUEUE}?team=bravo").content.decode()
    assert 'data-team="bravo"' in client.get(QUEUE).content.decode()  # remembered in the session
    assert 'data-team="alpha"' in client.get(f"{QUEUE}?team=alpha").content.decode()


# --- the decide fallback ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("decision", "state"), [("allow", "allowed"), ("deny", "denied"), ("always_allow", "allowed")]
)
def test_a_reviewer_decides_with_the_form_fallback(
    reviewer: Any, member_token: Issued, submit, decision: str, state: str
) -> None:
    held = submit(member_token.token).call
    response = logged_in(reviewer).post(decide_url(held), {"decision": decision, "reason": "by form"})
    assert response.status_code == 302 and response["Location"] == QUEUE
    call = ToolCall.objects.get(pk=held.pk)
    assert (call.state, call.decided_by) == (state, reviewer)
    assert call.reason.endswith("by form")
    assert Rule.objects.exists() == (decision == "always_allow")


def test_the_form_fallback_is_403_for_a_reviewer_of_another_team(
    outsider: Any, member_token: Issued, submit
) -> None:
    held = submit(member_token.token).call
    response = logged_in(outsider).post(decide_url(held), {"decision": "allow"})
    assert response.status_code == 403
    assert ToolCall.objects.get(pk=held.pk).state == ToolCall.State.PENDING


def test_the_form_fallback_is_403_for_a_plain_member(member: Any, member_token: Issued, submit) -> None:
    held = submit(member_token.token).call
    assert logged_in(member).post(decide_url(held), {"decision": "allow"}).status_code == 403
    assert ToolCall.objects.get(pk=held.pk).state == ToolCall.State.PENDING


@pytest.mark.parametrize("call_id", ["not-a-uuid", "6f1c1f0e-0000-4000-8000-000000000000"])
def test_the_form_fallback_is_403_for_a_forged_call_id(reviewer: Any, call_id: str) -> None:
    assert logged_in(reviewer).post(decide_url(call_id), {"decision": "allow"}).status_code == 403


def test_the_form_fallback_needs_login_and_post(
    client: Client, reviewer: Any, member_token: Issued, submit
) -> None:
    held = submit(member_token.token).call
    response = client.post(decide_url(held), {"decision": "allow"})
    assert response.status_code == 302 and response["Location"].startswith(reverse("account_login"))
    assert logged_in(reviewer).get(decide_url(held)).status_code == 405
    assert ToolCall.objects.get(pk=held.pk).state == ToolCall.State.PENDING


def test_the_form_fallback_enforces_csrf(reviewer: Any, member_token: Issued, submit) -> None:
    held = submit(member_token.token).call
    client = Client(enforce_csrf_checks=True)
    client.force_login(reviewer)
    assert client.post(decide_url(held), {"decision": "allow"}).status_code == 403
    assert ToolCall.objects.get(pk=held.pk).state == ToolCall.State.PENDING


def test_a_second_decision_by_form_is_refused_with_a_message(
    reviewer: Any, admin: Any, member_token: Issued, submit
) -> None:
    held = submit(member_token.token).call
    logged_in(reviewer).post(decide_url(held), {"decision": "deny"})
    response = logged_in(admin).post(decide_url(held), {"decision": "allow"}, follow=True)
    assert "already denied" in response.content.decode()
    assert ToolCall.objects.get(pk=held.pk).state == ToolCall.State.DENIED


def test_an_unknown_decision_changes_nothing(reviewer: Any, member_token: Issued, submit) -> None:
    held = submit(member_token.token).call
    response = logged_in(reviewer).post(decide_url(held), {"decision": "maybe"}, follow=True)
    assert "Choose Allow, Deny or Always allow" in response.content.decode()
    assert ToolCall.objects.get(pk=held.pk).state == ToolCall.State.PENDING


def test_a_reason_with_a_nul_character_is_stored_without_it(
    reviewer: Any, member_token: Issued, submit
) -> None:
    held = submit(member_token.token).call
    response = logged_in(reviewer).post(decide_url(held), {"decision": "deny", "reason": "no\x00pe"})
    assert response.status_code == 302
    assert ToolCall.objects.get(pk=held.pk).reason == "denied by a reviewer: nope"


# --- history ----------------------------------------------------------------------------------------
def test_history_lists_the_teams_decided_calls_only(
    reviewer: Any, member_token: Issued, outsider_token: Issued, submit
) -> None:
    decided = submit(member_token.token, arguments={"path": "/srv/decided-one"}).call
    call_decide(call_id=str(decided.pk), reviewer=reviewer, allow=False, reason="nope")
    submit(member_token.token, arguments={"path": "/srv/still-held"})
    foreign = submit(outsider_token.token, tool="rm", tool_hash=None, arguments={"path": "/srv/foreign"}).call
    assert foreign.state == ToolCall.State.DENIED

    html = logged_in(reviewer).get(HISTORY).content.decode()
    assert "/srv/decided-one" in html and "denied by a reviewer: nope" in html
    assert "/srv/still-held" not in html
    assert "/srv/foreign" not in html


def test_tool_arguments_and_reasons_are_escaped_in_history(
    reviewer: Any, member_token: Issued, submit
) -> None:
    payload = "<script>alert('xss')</script>"
    held = submit(member_token.token, tool="run<b>", arguments={"cmd": payload, payload: 1}).call
    call_decide(call_id=str(held.pk), reviewer=reviewer, allow=False, reason='<img src=x onerror="alert(1)">')

    html = logged_in(reviewer).get(HISTORY).content.decode()
    assert "<script>alert" not in html
    assert "<img src=x" not in html
    assert "run<b>" not in html
    assert "&lt;script&gt;alert(&#x27;xss&#x27;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert "run&lt;b&gt;" in html

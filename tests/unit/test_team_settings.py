"""The team settings page: mode, deadline, who may create rules — admins only, applied to the next call."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from approvals.models import AuditEvent, Team, ToolCall

SETTINGS = reverse("approvals:team_settings")
pytestmark = pytest.mark.django_db


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def form(**changes: Any) -> dict[str, Any]:
    values = {"name": "Alpha", "mode": "review", "default_deadline_seconds": 600}
    values.update(changes)
    return values


@pytest.mark.parametrize("who", ["reviewer", "member", "outsider"])
def test_only_admins_see_the_settings(request, who: str) -> None:
    user = request.getfixturevalue(who)
    assert logged_in(user).get(SETTINGS + ("?team=alpha" if who == "outsider" else "")).status_code == 403


def test_anonymous_is_sent_to_log_in() -> None:
    assert Client().get(SETTINGS).status_code == 302


def test_whitelist_mode_denies_the_next_unmatched_call_and_is_audited(
    admin, team_a, member_token, submit
) -> None:
    response = logged_in(admin).post(SETTINGS, form(mode="whitelist", default_deadline_seconds=120))
    assert response.status_code == 302
    team_a.refresh_from_db()
    assert (team_a.mode, team_a.default_deadline_seconds) == ("whitelist", 120)
    assert submit(member_token.token).call.state == ToolCall.State.DENIED
    event = AuditEvent.objects.get(kind="team.settings_changed")
    assert event.data["changed"] == {"mode": "whitelist", "default_deadline_seconds": 120}


def test_a_shorter_deadline_applies_to_the_next_held_call(admin, team_a, member_token, submit) -> None:
    logged_in(admin).post(SETTINGS, form(default_deadline_seconds=30))
    call = submit(member_token.token).call
    assert 25 <= (call.deadline - call.created_at).total_seconds() <= 30


@pytest.mark.parametrize("seconds", [0, 5, 100000])
def test_a_deadline_out_of_range_is_refused(admin, team_a, seconds: int) -> None:
    response = logged_in(admin).post(SETTINGS, form(default_deadline_seconds=seconds))
    assert response.status_code == 200 and "Between 10 seconds and a day" in response.content.decode()
    assert Team.objects.get(pk=team_a.pk).default_deadline_seconds == 600


def test_saving_unchanged_settings_writes_no_audit_event(admin) -> None:
    logged_in(admin).post(SETTINGS, form())
    assert not AuditEvent.objects.filter(kind="team.settings_changed").exists()


def test_four_eyes_is_saved_and_audited(admin, team_a) -> None:
    assert logged_in(admin).post(SETTINGS, form(four_eyes="on")).status_code == 302
    team_a.refresh_from_db()
    assert team_a.four_eyes
    event = AuditEvent.objects.get(kind="team.settings_changed")
    assert event.data["changed"] == {"four_eyes": True}


def test_an_admin_without_an_app_cannot_require_two_factor_and_lock_themselves_out(admin, team_a) -> None:
    response = logged_in(admin).post(SETTINGS, form(require_mfa="on"))
    assert response.status_code == 200
    assert "Set up two-factor for yourself first" in response.content.decode()
    team_a.refresh_from_db()
    assert not team_a.require_mfa
    assert not AuditEvent.objects.filter(kind="team.settings_changed").exists()


def test_an_admin_with_an_app_may_require_two_factor(admin, team_a) -> None:
    from .test_mfa import activate_totp

    activate_totp(admin)
    assert logged_in(admin).post(SETTINGS, form(require_mfa="on")).status_code == 302
    team_a.refresh_from_db()
    assert team_a.require_mfa


def test_the_result_policy_is_saved_audited_and_sent_with_the_next_allowed_decision(
    admin, team_a, member_token, submit
) -> None:
    from approvals.models import Rule
    from approvals.realtime import decision_for

    page = logged_in(admin).get(SETTINGS).content.decode()
    assert "Instructions aimed at the model" in page and 'name="result_secrets"' in page
    response = logged_in(admin).post(SETTINGS, form(result_secrets="block", result_personal_data="mask"))
    assert response.status_code == 302
    event = AuditEvent.objects.get(kind="team.settings_changed")
    assert event.data["changed"] == {"result_secrets": "block", "result_personal_data": "mask"}
    Rule.objects.create(team=team_a, effect="allow", server="*", tool="*")
    allowed = submit(member_token.token).call
    assert decision_for(allowed, run=True).result_policy == {
        "instruction": "mask",
        "hidden_text": "mask",
        "secret": "block",
        "pii": "mask",
    }


def test_a_post_without_the_result_policy_keeps_it(admin, team_a) -> None:
    team_a.result_instructions = "block"
    team_a.save()
    logged_in(admin).post(SETTINGS, form())
    team_a.refresh_from_db()
    assert team_a.result_instructions == "block"
    response = logged_in(admin).post(SETTINGS, form(result_secrets="shred"))
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()


def test_a_new_team_gets_the_installations_default_deadline_however_it_is_created(settings: Any) -> None:
    from approvals.services.teams import team_create

    settings.SIGNOFF_DEFAULT_DEADLINE_SECONDS = 900
    assert team_create(name="Gamma").default_deadline_seconds == 900
    assert Team.objects.create(name="Delta", slug="delta").default_deadline_seconds == 900  # admin, shell

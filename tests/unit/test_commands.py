"""The operator's management commands, run through ``call_command`` as ``manage.py`` would."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from approvals.models import AuditEvent, BridgeToken, Membership, Team, ToolCall
from approvals.services.calls import call_decide
from approvals.services.tokens import token_authenticate

from .conftest import Issued

pytestmark = pytest.mark.django_db


def run(*args: Any, **options: Any) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


# --- create_team ----------------------------------------------------------------------------------
def test_create_team_prints_the_slug_made_from_the_name() -> None:
    out, _ = run("create_team", "Platform Team")
    assert out.strip() == "platform-team"
    team = Team.objects.get(slug="platform-team")
    assert (team.name, team.mode) == ("Platform Team", "review")
    assert AuditEvent.objects.filter(kind="team.created", team=team).exists()


def test_create_team_takes_an_explicit_slug() -> None:
    out, _ = run("create_team", "Platform", "--slug", "plat")
    assert out.strip() == "plat"


@pytest.mark.parametrize("slug", [[], ["--slug", "platform"]], ids=["from-name", "explicit"])
def test_create_team_refuses_a_slug_in_use(slug: list[str]) -> None:
    run("create_team", "Platform")
    with pytest.raises(CommandError, match="exists already"):
        run("create_team", "Platform", *slug)
    assert Team.objects.count() == 1


def test_create_team_refuses_a_name_without_letters() -> None:
    with pytest.raises(CommandError, match="letters or digits"):
        run("create_team", "!!!")


# --- add_member -----------------------------------------------------------------------------------
def test_add_member_creates_a_verified_account_with_the_role(team_a: Team) -> None:
    out, _ = run("add_member", "alpha", "New.Person@Example.com", "--role", "reviewer")
    assert out.strip() == "new.person@example.com is reviewer in alpha"
    user = get_user_model().objects.get(username="new.person@example.com")
    assert not user.has_usable_password()
    assert Membership.objects.get(team=team_a, user=user).role == "reviewer"
    assert EmailAddress.objects.get(user=user).verified is True
    assert AuditEvent.objects.filter(kind="member.added", team=team_a).exists()


def test_add_member_defaults_to_member_and_changes_a_role(team_a: Team) -> None:
    run("add_member", "alpha", "p@example.com")
    run("add_member", "alpha", "p@example.com", "--role", "admin")
    assert list(Membership.objects.filter(team=team_a).values_list("role", flat=True)) == ["admin"]
    assert AuditEvent.objects.filter(kind="member.role_changed").count() == 1


def test_add_member_sets_the_password_from_the_environment(team_a: Team, monkeypatch) -> None:
    monkeypatch.setenv("NEW_PASSWORD", "a long enough passphrase")
    run("add_member", "alpha", "p@example.com", "--password-env", "NEW_PASSWORD")
    assert get_user_model().objects.get(username="p@example.com").check_password("a long enough passphrase")


def test_add_member_refuses_an_empty_password_variable(team_a: Team, monkeypatch) -> None:
    monkeypatch.delenv("NO_SUCH_VARIABLE", raising=False)
    with pytest.raises(CommandError, match="NO_SUCH_VARIABLE"):
        run("add_member", "alpha", "p@example.com", "--password-env", "NO_SUCH_VARIABLE")
    assert not get_user_model().objects.filter(username="p@example.com").exists()


def test_add_member_refuses_an_unknown_team(db: None) -> None:
    with pytest.raises(CommandError, match="No team"):
        run("add_member", "nope", "p@example.com")


def test_add_member_refuses_an_unknown_role(team_a: Team) -> None:
    with pytest.raises(CommandError):
        run("add_member", "alpha", "p@example.com", "--role", "owner")


# --- issue_token ----------------------------------------------------------------------------------
def test_issue_token_prints_a_token_that_authenticates(member: Any) -> None:
    out, err = run("issue_token", "alpha", "max@example.com", "--name", "ci")
    raw = out.strip()
    assert raw.startswith("sgo_") and "\n" not in raw
    token = token_authenticate(raw)
    assert token is not None and (token.name, token.user, token.expires_at) == ("ci", member, None)
    assert raw not in err and "Shown once" in err
    assert raw not in json.dumps(list(AuditEvent.objects.values("data")))


def test_issue_token_json_names_the_token(member: Any) -> None:
    out, _ = run("issue_token", "alpha", "MAX@example.com", "--json", "--days", "7")
    printed = json.loads(out)
    token = BridgeToken.objects.get(pk=printed["id"])
    assert printed["prefix"] == token.prefix
    assert token_authenticate(printed["token"]) == token
    assert token.expires_at is not None


def test_issue_token_refuses_someone_outside_the_team(outsider: Any, team_a: Team) -> None:
    with pytest.raises(CommandError, match="not a member"):
        run("issue_token", "alpha", "otto@example.com")
    assert not BridgeToken.objects.exists()


# --- revoke_token ---------------------------------------------------------------------------------
def test_revoke_token_revokes_by_prefix_and_denies_held_calls(member_token: Issued, submit) -> None:
    held = submit(member_token.token).call
    out, _ = run("revoke_token", member_token.token.prefix, "--reason", "offboarding")
    assert out.startswith(f"revoked {member_token.token.prefix}")
    assert token_authenticate(member_token.raw) is None
    call = ToolCall.objects.get(pk=held.pk)
    assert (call.state, call.reason) == ("denied", "denied: offboarding")


def test_revoke_token_accepts_the_whole_token_and_says_when_already_revoked(member_token: Issued) -> None:
    run("revoke_token", member_token.raw)
    out, _ = run("revoke_token", member_token.raw)
    assert "already revoked" in out
    assert member_token.raw not in out


def test_revoke_token_refuses_an_unknown_prefix(db: None) -> None:
    with pytest.raises(CommandError, match="No token"):
        run("revoke_token", "deadbeef")


# --- pending_calls --------------------------------------------------------------------------------
def test_pending_calls_lists_only_the_teams_held_calls(
    member_token: Issued, outsider_token: Issued, submit, reviewer: Any
) -> None:
    first = submit(member_token.token, arguments={"path": "/srv/first"}).call
    second = submit(member_token.token, tool="write_file", arguments={"path": "/srv/second"}).call
    decided = submit(member_token.token, arguments={"path": "/srv/decided"}).call
    call_decide(call_id=str(decided.pk), reviewer=reviewer, allow=False)
    submit(outsider_token.token, arguments={"path": "/srv/foreign"})

    out, err = run("pending_calls", "alpha")
    lines = out.strip().splitlines()
    assert len(lines) == 2 and not err
    assert lines[0].startswith(f"{first.pk}  files/read_file  by max@example.com")
    assert "/srv/first" in lines[0]
    assert lines[1].startswith(f"{second.pk}  files/write_file")

    out, _ = run("pending_calls", "alpha", "--json")
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [row["id"] for row in rows] == [str(first.pk), str(second.pk)]
    assert rows[0]["arguments"] == {"path": "/srv/first"}
    assert rows[0]["requester"] == "max@example.com"


def test_pending_calls_says_when_nothing_is_held(team_a: Team) -> None:
    out, err = run("pending_calls", "alpha")
    assert out == "" and "No held calls" in err


def test_pending_calls_refuses_an_unknown_team(db: None) -> None:
    with pytest.raises(CommandError, match="No team"):
        run("pending_calls", "nope")

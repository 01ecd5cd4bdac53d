"""Bridge tokens: shown once, stored as a hash, accepted only while usable, revoked at once."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from approvals.models import AuditEvent, BridgeToken, ToolCall
from approvals.services.calls import call_claim, call_decide
from approvals.services.tokens import token_authenticate, token_issue, token_revoke, token_touch

from .conftest import Issued

pytestmark = pytest.mark.django_db

TOKEN_SHAPE = re.compile(r"^sgo_(?P<prefix>[0-9a-f]{8})_[A-Za-z0-9_-]{40,}$")


def test_issue_returns_a_recognisable_raw_token_once(member_token: Issued) -> None:
    match = TOKEN_SHAPE.match(member_token.raw)
    assert match, member_token.raw
    assert match["prefix"] == member_token.token.prefix


def test_only_a_hash_of_the_token_is_stored(member_token: Issued) -> None:
    stored = BridgeToken.objects.filter(pk=member_token.token.pk).values().get()
    secret = member_token.raw.split("_", 2)[2]
    assert stored["secret_hash"] == hashlib.sha256(member_token.raw.encode()).hexdigest()
    assert not any(secret in str(value) for value in stored.values())


def test_issuing_is_audited_without_the_secret(member_token: Issued) -> None:
    event = AuditEvent.objects.get(kind="token.issued", token=member_token.token)
    assert member_token.raw not in str(event.data)
    assert event.data["prefix"] == member_token.token.prefix


def test_two_tokens_never_share_a_prefix_or_a_value(member, team_a) -> None:
    issued = [token_issue(team=team_a, user=member, name=f"t{i}") for i in range(20)]
    assert len({token.prefix for token, _ in issued}) == 20
    assert len({raw for _, raw in issued}) == 20


def test_authenticate_accepts_the_raw_token(member_token: Issued) -> None:
    token = token_authenticate(member_token.raw)
    assert token == member_token.token
    assert token.team.slug == "alpha" and token.user.email == "max@example.com"


def test_authenticate_rejects_a_wrong_secret_with_the_right_prefix(member_token: Issued) -> None:
    raw = member_token.raw
    assert token_authenticate(raw[:-1] + ("A" if raw[-1] != "A" else "B")) is None
    assert token_authenticate(f"sgo_{member_token.token.prefix}_") is None
    assert token_authenticate(raw + "x") is None


def test_authenticate_rejects_a_revoked_token(member_token: Issued) -> None:
    token_revoke(token=member_token.token, by=None)
    assert token_authenticate(member_token.raw) is None


def test_authenticate_rejects_an_expired_token(member, team_a) -> None:
    _, raw = token_issue(
        team=team_a, user=member, name="short", expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert token_authenticate(raw) is None
    _, fresh = token_issue(
        team=team_a, user=member, name="long", expires_at=timezone.now() + timedelta(days=1)
    )
    assert token_authenticate(fresh) is not None


def test_authenticate_rejects_the_token_of_a_deactivated_user(member_token: Issued, member) -> None:
    member.is_active = False
    member.save(update_fields=["is_active"])
    assert token_authenticate(member_token.raw) is None


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "sgo_",
        "Bearer sgo_x",
        "not-a-token",
        "sgo_zzzzzzzz_abc",
        "sgo_" + "a" * 300,
        "sgo_😀😀😀😀_x",
        "\x00",
        "sgo_\x00\x00\x00\x00\x00\x00\x00\x00_x",
    ],
)
def test_authenticate_rejects_garbage(member_token: Issued, garbage: str) -> None:
    assert token_authenticate(garbage) is None


def test_a_token_with_another_tokens_prefix_is_rejected(member_token: Issued, outsider_token: Issued) -> None:
    # The outsider's secret under the member's prefix: the hash is of the whole token, so no match.
    secret = outsider_token.raw.split("_", 2)[2]
    assert token_authenticate(f"sgo_{member_token.token.prefix}_{secret}") is None


def test_touch_records_when_and_from_where(member_token: Issued) -> None:
    token_touch(token=member_token.token, address="192.0.2.7")
    stored = BridgeToken.objects.get(pk=member_token.token.pk)
    assert stored.last_used_ip == "192.0.2.7"
    assert stored.last_used_at is not None


def test_revoke_denies_the_tokens_held_calls_and_nothing_else(
    member_token: Issued, outsider_token: Issued, submit, reviewer, audit_kinds
) -> None:
    held = submit(member_token.token, arguments={"n": 1}).call
    allowed = submit(member_token.token, arguments={"n": 2}).call
    call_decide(call_id=str(allowed.pk), reviewer=reviewer, allow=True)
    running = submit(member_token.token, arguments={"n": 3}).call
    call_decide(call_id=str(running.pk), reviewer=reviewer, allow=True)
    call_claim(token=member_token.token, call_id=str(running.pk))
    foreign = submit(outsider_token.token).call

    assert token_revoke(token=member_token.token, by=reviewer, reason="laptop stolen") is True

    states = dict(ToolCall.objects.values_list("pk", "state"))
    assert states[held.pk] == states[allowed.pk] == ToolCall.State.DENIED
    assert states[running.pk] == ToolCall.State.ALLOWED  # already running upstream; its result still counts
    assert states[foreign.pk] == ToolCall.State.PENDING
    assert ToolCall.objects.get(pk=held.pk).reason == "denied: laptop stolen"
    assert audit_kinds(held) == ["call.pending", "call.denied"]
    revoked = AuditEvent.objects.get(kind="token.revoked")
    assert (revoked.token_id, revoked.actor) == (member_token.token.pk, reviewer)


def test_revoking_twice_reports_the_second_time(member_token: Issued) -> None:
    assert token_revoke(token=member_token.token, by=None) is True
    assert token_revoke(token=member_token.token, by=None) is False
    assert AuditEvent.objects.filter(kind="token.revoked").count() == 1

"""A team's queue update is rendered once and sent as is to each of its reviewers' pages (DESIGN §8, row 3).

The pages' frame is unchanged (``{"type": "call", "call": …}``); what changed is where it is rendered, and
that the consumer sends it without a hop to the database thread.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels import consumer as channels_consumer
from channels.layers import get_channel_layer

from approvals import realtime

from .sockets import receive
from .test_consumers import open_review, open_socket, reviewer_cookie  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_call_update_carries_the_pages_frame_rendered_once(
    member_token: Any, submit: Any, team_a: Any, team_b: Any, django_capture_on_commit_callbacks: Any
) -> None:
    layer = get_channel_layer()
    page, other_team = async_to_sync(layer.new_channel)(), async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(realtime.review_group(team_a.pk), page)
    async_to_sync(layer.group_add)(realtime.review_group(team_b.pk), other_team)
    with django_capture_on_commit_callbacks(execute=True):
        held = submit(member_token.token).call
    event = async_to_sync(layer.receive)(page)
    assert event == {
        "type": "call.update",
        "text": json.dumps({"type": "call", "call": realtime.call_payload(held)}),
    }
    assert json.loads(event["text"])["call"]["id"] == str(held.pk)
    with pytest.raises(TimeoutError):  # another team's pages are not told
        async_to_sync(_receive_within)(layer, other_team, 0.2)


async def _receive_within(layer: Any, channel: str, seconds: float) -> Any:
    import asyncio

    return await asyncio.wait_for(layer.receive(channel), seconds)


async def test_a_page_is_sent_the_update_as_is_without_a_database_hop(
    open_review: Any,  # noqa: F811  (the fixture imported above)
    reviewer_cookie: bytes,  # noqa: F811
    team_a: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    review = await open_review(reviewer_cookie)
    assert (await receive(review))["type"] == "snapshot"
    hops: list[str] = []

    async def counted() -> None:
        hops.append("close_old_connections")

    monkeypatch.setattr(channels_consumer, "aclose_old_connections", counted)
    frame = json.dumps({"type": "call", "call": {"id": "c1", "state": "pending"}})
    await get_channel_layer().group_send(
        realtime.review_group(team_a.pk), {"type": "call.update", "text": frame}
    )
    assert await review.receive_from(timeout=3) == frame
    assert hops == []
    # Other events still go through Channels' dispatch (and its hop), e.g. the end of the reviewer's access.
    await get_channel_layer().group_send(
        realtime.review_group(team_a.pk), {"type": "review.closed", "team": team_a.pk, "reason": "test"}
    )
    assert (await receive(review))["type"] == "error"
    assert hops == ["close_old_connections"]

"""Only members of a call's team see or decide it: over HTTP and over the reviewer socket."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import anyio
import pytest
import websockets

from approvals.models import ToolCall
from tests.e2e.conftest import SignoffServer, TeamSetup, bridge, make_team, reviewer_socket, session_cookie


def http(server: SignoffServer, path: str, *, cookie: str, data: dict | None = None) -> tuple[int, str]:
    """GET (or POST a form with the session's CSRF token) without following redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return None

    opener = urllib.request.build_opener(NoRedirect)
    headers = {"Cookie": cookie}
    body = None
    if data is not None:
        csrf = "x" * 32
        headers["Cookie"] = f"{cookie}; csrftoken={csrf}"
        headers["X-CSRFToken"] = csrf
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = "&".join(f"{k}={v}" for k, v in data.items()).encode()
    request = urllib.request.Request(server.url + path, data=body, headers=headers)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@pytest.fixture
def two_teams() -> tuple[TeamSetup, TeamSetup]:
    return make_team(), make_team()


async def hold_a_call(server: SignoffServer, setup: TeamSetup, tmp_path) -> str:
    """Make one pending call in the setup's team (the bridge answers early; the call stays held)."""
    async with bridge(
        tmp_path, url=server.url, token=setup.raw_token, bridge_args=("--client-timeout", "0.5")
    ) as b:
        await b.session.call_tool("write_file", {"path": "secret", "content": "s"})
    return str(ToolCall.objects.get(team=setup.team, state="pending").pk)


async def test_member_of_another_team_cannot_see_or_decide_over_http(
    signoff: SignoffServer, two_teams, tmp_path
) -> None:
    team_a, team_b = two_teams
    call_id = await hold_a_call(signoff, team_a, tmp_path)
    outsider = session_cookie(team_b.reviewer)
    insider = session_cookie(team_a.reviewer2)

    assert http(signoff, f"/?team={team_a.team.slug}", cookie=outsider)[0] == 403
    assert http(signoff, f"/history/?team={team_a.team.slug}", cookie=outsider)[0] == 403
    status, _ = http(signoff, f"/calls/{call_id}/decide/", cookie=outsider, data={"decision": "allow"})
    assert status == 403
    assert ToolCall.objects.get(pk=call_id).state == "pending"

    # The same request from the call's own team goes through: the 403 above was about the team.
    status, _ = http(signoff, f"/calls/{call_id}/decide/", cookie=insider, data={"decision": "deny"})
    assert status == 302
    assert ToolCall.objects.get(pk=call_id).state == "denied"


async def test_plain_member_and_anonymous_cannot_review(
    signoff: SignoffServer, team: TeamSetup, tmp_path
) -> None:
    call_id = await hold_a_call(signoff, team, tmp_path)
    member = session_cookie(team.member)
    assert http(signoff, f"/?team={team.team.slug}", cookie=member)[0] == 403
    assert http(signoff, "/history/", cookie=member)[0] == 200  # their own calls only (test_audit_views.py)
    assert http(signoff, f"/calls/{call_id}/decide/", cookie=member, data={"decision": "allow"})[0] == 403
    status, _ = http(signoff, "/", cookie="")
    assert status == 302  # to the login page
    assert ToolCall.objects.get(pk=call_id).state == "pending"


async def test_member_of_another_team_cannot_see_or_decide_over_the_socket(
    signoff: SignoffServer, two_teams, tmp_path
) -> None:
    team_a, team_b = two_teams
    cookie = session_cookie(team_b.reviewer)
    async with websockets.connect(
        f"ws://127.0.0.1:{signoff.port}/ws/review/?team={team_a.team.slug}",
        additional_headers={"Cookie": cookie},
        origin=signoff.url,  # type: ignore[arg-type]
    ) as foreign:
        refusal = json.loads(await foreign.recv())
        assert refusal["type"] == "error"
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await foreign.recv()
        assert closed.value.rcvd.code == 4403

    async with reviewer_socket(signoff, team_b.reviewer, team_b.team.slug) as own:
        snapshot = await own.next(lambda m: m["type"] == "snapshot")
        call_id = await hold_a_call(signoff, team_a, tmp_path)
        assert all(c["id"] != call_id for c in snapshot["calls"])
        answer = await own.decide(call_id, "allow")
        assert answer["type"] == "error" and answer["message"] == "no such call in your team"
        # Team A's call never reached team B's page.
        with anyio.move_on_after(1):
            leaked = await own.next(lambda m: m["type"] == "call")
            pytest.fail(f"team B saw team A's call: {leaked}")
    assert ToolCall.objects.get(pk=call_id).state == "pending"


@pytest.mark.parametrize(
    "forged", [str(uuid.uuid4()), "../../etc/passwd", "1 OR 1=1", ""], ids=["unknown", "path", "sql", "empty"]
)
async def test_forged_call_ids_are_refused(signoff: SignoffServer, team: TeamSetup, forged: str) -> None:
    async with reviewer_socket(signoff, team.reviewer, team.team.slug) as reviewer:
        answer = await reviewer.decide(forged, "allow")
    assert answer["type"] == "error"


async def test_reviewer_socket_refuses_a_foreign_origin(signoff: SignoffServer, team: TeamSetup) -> None:
    cookie = session_cookie(team.reviewer)
    with pytest.raises(websockets.exceptions.InvalidStatus):
        async with websockets.connect(
            f"ws://127.0.0.1:{signoff.port}/ws/review/?team={team.team.slug}",
            additional_headers={"Cookie": cookie},
            origin="https://evil.example.com",  # type: ignore[arg-type]
        ):
            pass


async def test_malformed_reviewer_frames_get_errors_and_the_socket_stays_usable(
    signoff: SignoffServer, team: TeamSetup
) -> None:
    async with reviewer_socket(signoff, team.reviewer, team.team.slug) as reviewer:
        await reviewer.next(lambda m: m["type"] == "snapshot")
        for frame in [
            "not json",
            "[]",
            json.dumps({"type": "explode"}),
            json.dumps({"type": "decide", "call_id": "x", "decision": "maybe"}),
        ]:
            await reviewer.connection.send(frame)
            answer = await reviewer.next(lambda m: m["type"] == "error")
            assert answer["message"]
        answer = await reviewer.decide(str(uuid.uuid4()), "deny")
        assert answer["type"] == "error"


async def test_an_oversized_reviewer_frame_is_answered_then_the_socket_closes(
    signoff: SignoffServer, team: TeamSetup
) -> None:
    """A page never sends 16 KiB: such a frame is not a reviewer's, so the socket says why and closes."""
    async with reviewer_socket(signoff, team.reviewer, team.team.slug) as reviewer:
        await reviewer.next(lambda m: m["type"] == "snapshot")
        await reviewer.connection.send("x" * 20000)
        answer = await reviewer.next(lambda m: m["type"] == "error")
        assert "frame too large" in answer["message"]
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await reviewer.connection.recv()
        assert reviewer.connection.close_code == 4413

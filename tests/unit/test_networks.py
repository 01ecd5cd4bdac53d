"""Network allowlists and trusted proxies (issue 8, point 4).

A token's networks (else its team's) decide where its bridges may connect from: a bridge from elsewhere is
refused at connect with ``network_refused`` and close 4407, audited and alerted. Behind a reverse proxy the
client's address comes from ``X-Forwarded-For``, believed only from ``SIGNOFF_TRUSTED_PROXIES``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.test import Client
from django.urls import reverse

from approvals.forms import TeamSettingsForm, TokenIssueForm
from approvals.models import Alert, AuditEvent, BridgeToken, Team
from approvals.proxies import TrustedProxyMiddleware, forwarded_client
from approvals.services.networks import (
    MAX_NETWORKS,
    NetworksInvalid,
    address_in,
    network_refusal,
    networks_parse,
    networks_validate,
    team_networks_change,
    token_network_refused,
    token_networks_change,
)
from approvals.services.tokens import token_issue
from mcpbridge import link, protocol

from .conftest import Issued
from .sockets import expect_close, receive

pytestmark = pytest.mark.django_db
sockets = pytest.mark.django_db(transaction=True)

TOKENS = reverse("approvals:tokens")
SETTINGS = reverse("approvals:team_settings")


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- parsing ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("", []),
        ("  \n ", []),
        ("10.0.0.0/8", ["10.0.0.0/8"]),
        ("192.0.2.7", ["192.0.2.7/32"]),
        ("2001:db8::1", ["2001:db8::1/128"]),
        ("2001:DB8::/32", ["2001:db8::/32"]),
        ("10.1.2.3/8", ["10.0.0.0/8"]),  # host bits dropped: an address of the range
        ("10.0.0.0/8\n192.168.1.0/24, 10.0.0.0/8  fd00::/8", ["10.0.0.0/8", "192.168.1.0/24", "fd00::/8"]),
    ],
)
def test_a_typed_list_is_split_normalised_and_deduplicated(typed: str, stored: list[str]) -> None:
    assert networks_parse(typed) == stored


@pytest.mark.parametrize(
    "typed", ["10.0.0.0/33", "10.0.0", "example.com", "10.0.0.0/8/8", "fe80::/129", "<script>", "10.0.0.0/-1"]
)
def test_an_entry_that_is_no_network_is_refused_by_name(typed: str) -> None:
    with pytest.raises(NetworksInvalid, match="is not a network: write an address range in CIDR form"):
        networks_parse(f"10.0.0.0/8 {typed}")


def test_a_list_has_at_most_fifty_networks() -> None:
    assert len(networks_validate(f"10.0.{i}.0/24" for i in range(MAX_NETWORKS))) == MAX_NETWORKS
    with pytest.raises(NetworksInvalid, match="At most 50 networks"):
        networks_validate(f"10.0.{i}.0/24" for i in range(MAX_NETWORKS + 1))


def test_a_stored_list_holds_only_strings() -> None:
    with pytest.raises(NetworksInvalid):
        networks_validate([10])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("address", "inside"),
    [
        ("10.9.8.7", True),
        ("11.0.0.1", False),
        ("::ffff:10.9.8.7", True),  # a dual-stack socket's IPv4 client
        ("2001:db8::5", True),
        ("2001:db9::5", False),
        (None, False),
        ("", False),
        ("not-an-address", False),
    ],
)
def test_an_address_is_in_the_list_or_not(address: str | None, inside: bool) -> None:
    assert address_in(address, ["10.0.0.0/8", "2001:db8::/32"]) is inside


# --- whose list applies ------------------------------------------------------------------------------
def test_no_list_anywhere_allows_any_address(member_token: Issued) -> None:
    assert network_refusal(member_token.token, "203.0.113.9") is None
    assert network_refusal(member_token.token, None) is None


def test_the_teams_list_applies_to_a_token_without_one(member_token: Issued, team_a: Team) -> None:
    team_a.allowed_networks = ["10.0.0.0/8"]
    team_a.save()
    token = BridgeToken.objects.select_related("team").get(pk=member_token.token.pk)
    assert network_refusal(token, "10.1.2.3") is None
    refusal = network_refusal(token, "192.0.2.7")
    assert refusal is not None
    assert "192.0.2.7" in refusal and "10.0.0.0/8" in refusal and "the team “Alpha”" in refusal
    assert "ask the admins of the team “Alpha”" in refusal


def test_a_tokens_own_list_replaces_the_teams(member_token: Issued, team_a: Team) -> None:
    team_a.allowed_networks = ["10.0.0.0/8"]
    team_a.save()
    token = BridgeToken.objects.select_related("team").get(pk=member_token.token.pk)
    token.allowed_networks = ["192.0.2.0/24"]
    assert network_refusal(token, "192.0.2.7") is None
    refusal = network_refusal(token, "10.1.2.3")
    assert refusal is not None and "this token" in refusal


def test_an_unknown_address_is_refused_when_a_list_applies(member_token: Issued) -> None:
    token = member_token.token
    token.allowed_networks = ["127.0.0.0/8"]
    refusal = network_refusal(token, None)
    assert refusal is not None and "an unknown address" in refusal


# --- changing the lists, audited ------------------------------------------------------------------------
def test_an_admin_sets_the_teams_networks_audited(admin: Any, team_a: Team) -> None:
    assert team_networks_change(team=team_a, networks=["10.1.2.3/8", "2001:db8::1"], by=admin)
    team_a.refresh_from_db()
    assert team_a.allowed_networks == ["10.0.0.0/8", "2001:db8::1/128"]
    event = AuditEvent.objects.get(kind="team.networks_changed")
    assert event.data["networks"] == ["10.0.0.0/8", "2001:db8::1/128"] and event.data["before"] == []
    assert event.actor_id == admin.pk
    assert not team_networks_change(team=team_a, networks=["10.0.0.0/8", "2001:db8::1/128"], by=admin)
    assert AuditEvent.objects.filter(kind="team.networks_changed").count() == 1


def test_a_tokens_owner_sets_its_networks_audited(member: Any, member_token: Issued) -> None:
    token = member_token.token
    assert token_networks_change(token=token, networks=["192.0.2.0/24"], by=member)
    token.refresh_from_db()
    assert token.allowed_networks == ["192.0.2.0/24"]
    event = AuditEvent.objects.get(kind="token.networks_changed")
    assert event.token_id == token.pk and event.data["networks"] == ["192.0.2.0/24"]
    assert token_networks_change(token=token, networks=[], by=member)  # back to the team's
    token.refresh_from_db()
    assert token.allowed_networks == []


def test_an_owner_may_narrow_the_teams_networks_but_not_widen_them(
    admin: Any, member: Any, member_token: Issued, team_a: Team
) -> None:
    team_networks_change(team=team_a, networks=["10.0.0.0/8"], by=admin)
    token = member_token.token
    assert token_networks_change(token=token, networks=["10.20.0.0/16"], by=member)
    with pytest.raises(NetworksInvalid, match="only a team admin may allow a token more than the team"):
        token_networks_change(token=token, networks=["10.20.0.0/16", "0.0.0.0/0"], by=member)
    token.refresh_from_db()
    assert token.allowed_networks == ["10.20.0.0/16"]
    # An admin may make an exception.
    assert token_networks_change(token=token, networks=["192.0.2.0/24"], by=admin)


def test_a_refused_connection_is_audited_and_alerted_once_per_address(
    member_token: Issued, django_capture_on_commit_callbacks: Any
) -> None:
    token = BridgeToken.objects.select_related("team", "user").get(pk=member_token.token.pk)
    token.allowed_networks = ["10.0.0.0/8"]
    assert token_network_refused(token=token, address="10.0.0.1") is None
    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            assert token_network_refused(token=token, address="192.0.2.7") is not None
    with django_capture_on_commit_callbacks(execute=True):
        token_network_refused(token=token, address="198.51.100.1")
    events = AuditEvent.objects.filter(kind="token.network_refused").order_by("pk")
    assert [e.data["address"] for e in events] == ["192.0.2.7"] * 3 + ["198.51.100.1"]
    alerts = {a.data["address"]: a for a in Alert.objects.filter(kind=Alert.Kind.NETWORK)}
    assert set(alerts) == {"192.0.2.7", "198.51.100.1"}
    assert alerts["192.0.2.7"].count == 3 and alerts["192.0.2.7"].token_id == token.pk
    assert "192.0.2.7" in alerts["192.0.2.7"].message and "“laptop”" in alerts["192.0.2.7"].message


# --- the bridge's socket ------------------------------------------------------------------------------
Open = Callable[..., Awaitable[WebsocketCommunicator]]


@pytest.fixture
async def open_bridge() -> AsyncIterator[Open]:
    """Bridge sockets on the real ASGI application from a given client address, each disconnected at the
    end."""
    from config.asgi import application

    opened: list[WebsocketCommunicator] = []

    async def _open(
        raw: str,
        client: str | None,
        headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
    ) -> WebsocketCommunicator:
        socket = WebsocketCommunicator(
            application, "/ws/bridge/", headers=[(b"authorization", f"Bearer {raw}".encode()), *headers]
        )
        if client is not None:
            socket.scope["client"] = (client, 50000)  # the communicator has no client; Daphne sets one
        opened.append(socket)
        connected, _ = await socket.connect(timeout=3)
        assert connected
        return socket

    yield _open
    for socket in opened:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await socket.disconnect(timeout=3)
    await database_sync_to_async(connections.close_all)()


issue = database_sync_to_async(token_issue)


def _limited(token: BridgeToken, networks: list[str]) -> None:
    BridgeToken.objects.filter(pk=token.pk).update(allowed_networks=networks)


def _network_records() -> tuple[list[str], list[tuple[str, int]]]:
    events = [
        e.data["address"] for e in AuditEvent.objects.filter(kind="token.network_refused").order_by("pk")
    ]
    alerts = [(a.data["address"], a.count) for a in Alert.objects.filter(kind=Alert.Kind.NETWORK)]
    return events, alerts


@sockets
async def test_a_bridge_from_outside_the_tokens_networks_is_refused_with_4407(
    open_bridge: Open, member: Any, team_a: Team
) -> None:
    token, raw = await issue(team=team_a, user=member, name="ci")
    await database_sync_to_async(_limited)(token, ["10.0.0.0/8"])
    socket = await open_bridge(raw, "192.0.2.7")
    error = await receive(socket)
    assert (error["type"], error["code"]) == ("error", "network_refused")
    assert "192.0.2.7" in error["message"] and "10.0.0.0/8" in error["message"]
    assert "ask the admins of the team “Alpha”" in error["message"]
    await expect_close(socket, protocol.CLOSE_NETWORK_REFUSED)
    events, alerts = await database_sync_to_async(_network_records)()
    assert events == ["192.0.2.7"] and alerts == [("192.0.2.7", 1)]
    # Not used: a refused connection is not the token's use (no last-used address, no new-address alert).
    refreshed = await database_sync_to_async(BridgeToken.objects.get)(pk=token.pk)
    assert refreshed.last_used_at is None and refreshed.seen_addresses == []


@sockets
async def test_a_bridge_from_inside_the_teams_networks_is_welcomed(
    open_bridge: Open, member: Any, team_a: Team
) -> None:
    await database_sync_to_async(Team.objects.filter(pk=team_a.pk).update)(allowed_networks=["10.0.0.0/8"])
    _, raw = await issue(team=team_a, user=member, name="ci")
    socket = await open_bridge(raw, "10.20.30.40")
    await socket.send_to(text_data=hello())
    assert (await receive(socket))["type"] == "welcome"


@sockets
async def test_a_bridge_without_a_known_address_is_refused_when_a_list_applies(
    open_bridge: Open, member: Any, team_a: Team
) -> None:
    await database_sync_to_async(Team.objects.filter(pk=team_a.pk).update)(allowed_networks=["10.0.0.0/8"])
    _, raw = await issue(team=team_a, user=member, name="ci")
    socket = await open_bridge(raw, None)
    error = await receive(socket)
    assert error["code"] == "network_refused" and "an unknown address" in error["message"]
    await expect_close(socket, protocol.CLOSE_NETWORK_REFUSED)


@sockets
async def test_a_forwarded_address_counts_only_from_a_trusted_proxy(
    open_bridge: Open, member: Any, team_a: Team, settings: Any
) -> None:
    token, raw = await issue(team=team_a, user=member, name="ci")
    await database_sync_to_async(_limited)(token, ["10.0.0.0/8"])
    forwarded = [(b"x-forwarded-for", b"10.1.2.3")]
    # No trusted proxy: the header is the client's own claim, ignored.
    socket = await open_bridge(raw, "127.0.0.1", forwarded)
    assert (await receive(socket))["code"] == "network_refused"
    await expect_close(socket, protocol.CLOSE_NETWORK_REFUSED)
    # From a trusted proxy: the forwarded address is the client's.
    settings.SIGNOFF_TRUSTED_PROXIES = ["127.0.0.1/32"]
    socket = await open_bridge(raw, "127.0.0.1", forwarded)
    await socket.send_to(text_data=hello())
    assert (await receive(socket))["type"] == "welcome"


def hello() -> str:
    return protocol.encode(
        protocol.Hello(
            protocol=protocol.PROTOCOL_VERSION,
            bridge_version="test",
            upstream=protocol.UpstreamInfo(name="files", transport="stdio"),
            tools=[],
        )
    )


def test_the_bridge_treats_the_refusal_as_final() -> None:
    """mcpbridge stops reconnecting and fails every call with the server's message, as for a bad token."""
    assert protocol.CLOSE_NETWORK_REFUSED == 4407
    assert protocol.CLOSE_NETWORK_REFUSED in protocol.FATAL_CLOSE_CODES
    assert "network_refused" in link.REFUSAL_CODES
    assert "ask your team's Signoff admins" in link.FATAL_TEXT[protocol.CLOSE_NETWORK_REFUSED]


# --- the trusted-proxy middleware, as the ASGI application it is ------------------------------------------
async def _seen(
    client: tuple[str, int] | None,
    headers: list[tuple[bytes, bytes]],
    *,
    trusted: list[str],
    kind: str = "http",
    trust_proto: bool = False,
) -> dict[str, Any]:
    """The scope the wrapped application receives."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)

    scope: dict[str, Any] = {"type": kind, "headers": headers, "scheme": "http" if kind == "http" else "ws"}
    if client is not None:
        scope["client"] = client
    await TrustedProxyMiddleware(app, trusted=trusted, trust_proto=trust_proto)(scope, None, None)  # type: ignore[arg-type]
    return seen


XFF = b"x-forwarded-for"
PROTO = b"x-forwarded-proto"
PROXIES = ["127.0.0.1/32", "172.16.0.0/12"]


@pytest.mark.parametrize("kind", ["http", "websocket"])
async def test_a_trusted_proxys_forwarded_address_becomes_the_client(kind: str) -> None:
    seen = await _seen(("172.18.0.1", 5555), [(XFF, b"203.0.113.9")], trusted=PROXIES, kind=kind)
    assert seen["client"] == ("203.0.113.9", 0)


async def test_the_right_most_address_that_is_no_trusted_proxy_counts() -> None:
    # The client claimed 10.0.0.1 itself; the outer proxy appended what it saw; the inner one its peer.
    headers = [(XFF, b"10.0.0.1, 198.51.100.4"), (XFF, b"172.20.0.5")]
    seen = await _seen(("127.0.0.1", 5555), headers, trusted=PROXIES)
    assert seen["client"] == ("198.51.100.4", 0)


@pytest.mark.parametrize(
    ("header", "client"),
    [
        (b"[2001:db8::7]:4711", "2001:db8::7"),
        (b"198.51.100.4:4711", "198.51.100.4"),
        (b"172.20.0.5, 172.20.0.6", "172.20.0.5"),  # every hop a trusted proxy: the left-most
        (b"198.51.100.4, unknown", None),  # a proxy wrote something else: the peer stays
        (b"", None),
    ],
)
def test_forwarded_entries_are_read_from_the_right(header: bytes, client: str | None) -> None:
    import ipaddress

    trusted = [ipaddress.ip_network(net) for net in PROXIES]
    assert forwarded_client([header], trusted) == client


@pytest.mark.parametrize("peer", [("198.51.100.4", 5555), None])
async def test_an_untrusted_peers_forwarding_headers_are_dropped(peer: tuple[str, int] | None) -> None:
    headers = [(XFF, b"127.0.0.1"), (PROTO, b"https"), (b"host", b"signoff.example.com")]
    seen = await _seen(peer, headers, trusted=PROXIES, trust_proto=True)
    assert seen.get("client") == peer
    assert seen["headers"] == [(b"host", b"signoff.example.com")]
    assert seen["scheme"] == "http"


async def test_without_trusted_proxies_nothing_changes() -> None:
    headers = [(XFF, b"10.1.2.3"), (PROTO, b"https")]
    seen = await _seen(("198.51.100.4", 5555), headers, trusted=[])
    assert seen["client"] == ("198.51.100.4", 5555) and seen["headers"] == headers


@pytest.mark.parametrize(
    ("kind", "trust_proto", "proto", "scheme"),
    [
        ("http", True, b"https", "https"),
        ("http", True, b"https, http", "https"),  # the first value, as Django reads it
        ("websocket", True, b"https", "wss"),
        ("websocket", True, b"http", "ws"),
        ("http", False, b"https", "http"),  # SIGNOFF_TRUST_PROXY_TLS_HEADER off
        ("http", True, b"gopher", "http"),
    ],
)
async def test_the_scheme_follows_a_trusted_proxys_proto_when_trusted(
    kind: str, trust_proto: bool, proto: bytes, scheme: str
) -> None:
    seen = await _seen(
        ("127.0.0.1", 5555), [(PROTO, proto)], trusted=PROXIES, kind=kind, trust_proto=trust_proto
    )
    assert seen["scheme"] == scheme


async def test_other_scopes_pass_untouched() -> None:
    seen = await _seen(None, [], trusted=PROXIES, kind="lifespan")
    assert seen == {"type": "lifespan", "headers": [], "scheme": "ws"}


async def test_django_sees_the_forwarded_address_only_from_a_trusted_proxy(settings: Any) -> None:
    """Through the real application: ``/metrics`` answers loopback clients only (no metrics token set)."""
    from channels.testing import HttpCommunicator

    from config.asgi import application

    settings.SIGNOFF_METRICS_TOKEN = ""

    async def get(forwarded: bytes | None) -> int:
        headers = [(b"host", b"testserver")] + ([(XFF, forwarded)] if forwarded else [])
        request = HttpCommunicator(application, "GET", "/metrics", headers=headers)
        request.scope["client"] = ("127.0.0.1", 5555)
        return int((await request.get_response(timeout=10))["status"])

    settings.SIGNOFF_TRUSTED_PROXIES = []
    assert await get(b"203.0.113.9") == 200  # the header is ignored: a loopback client
    settings.SIGNOFF_TRUSTED_PROXIES = ["127.0.0.1/32"]
    assert await get(b"203.0.113.9") != 200  # forwarded from elsewhere
    assert await get(None) == 200


# --- the pages ----------------------------------------------------------------------------------------
def test_a_token_is_issued_with_networks(member: Any, team_a: Team) -> None:
    response = logged_in(member).post(TOKENS, {"name": "ci", "networks": "10.1.2.3/8, 2001:db8::/32"})
    assert response.status_code == 200
    token = BridgeToken.objects.get(name="ci")
    assert token.allowed_networks == ["10.0.0.0/8", "2001:db8::/32"]
    assert AuditEvent.objects.filter(kind="token.networks_changed", token=token).exists()


def test_a_bad_network_is_refused_on_the_issue_form(member: Any, team_a: Team) -> None:
    response = logged_in(member).post(TOKENS, {"name": "ci", "networks": "10.0.0.0/33"})
    assert response.status_code == 200
    assert "is not a network: write an address range in CIDR form" in response.content.decode()
    assert not BridgeToken.objects.filter(name="ci").exists()


def test_a_member_cannot_issue_a_token_wider_than_the_team(admin: Any, member: Any, team_a: Team) -> None:
    team_networks_change(team=team_a, networks=["10.0.0.0/8"], by=admin)
    response = logged_in(member).post(TOKENS, {"name": "ci", "networks": "0.0.0.0/0"})
    assert "only a team admin may allow a token more than the team" in response.content.decode()
    assert not BridgeToken.objects.filter(name="ci").exists()  # not issued either


def test_the_tokens_list_shows_and_changes_a_tokens_networks(member: Any, member_token: Issued) -> None:
    client = logged_in(member)
    url = reverse("approvals:token_networks", args=[member_token.token.pk])
    response = client.post(url, {"networks": "192.0.2.0/24 198.51.100.7"}, follow=True)
    page = response.content.decode()
    assert "may now connect from 192.0.2.0/24, 198.51.100.7/32" in page
    assert "<code>192.0.2.0/24</code>, <code>198.51.100.7/32</code>" in page
    assert 'value="192.0.2.0/24 198.51.100.7/32"' in page
    member_token.token.refresh_from_db()
    assert member_token.token.allowed_networks == ["192.0.2.0/24", "198.51.100.7/32"]
    response = client.post(url, {"networks": "not<b>a</b>net"}, follow=True)
    page = response.content.decode()
    assert "nothing changed" in page and "<b>a</b>" not in page  # escaped
    member_token.token.refresh_from_db()
    assert member_token.token.allowed_networks == ["192.0.2.0/24", "198.51.100.7/32"]


def test_only_the_owner_or_an_admin_changes_a_tokens_networks(
    admin: Any, reviewer: Any, outsider: Any, member_token: Issued
) -> None:
    url = reverse("approvals:token_networks", args=[member_token.token.pk])
    assert logged_in(reviewer).post(url, {"networks": "0.0.0.0/0"}).status_code == 403
    assert logged_in(outsider).post(url, {"networks": "0.0.0.0/0"}).status_code == 403
    assert Client().post(url, {"networks": "0.0.0.0/0"}).status_code == 302  # to the login
    assert logged_in(admin).get(url).status_code == 405
    member_token.token.refresh_from_db()
    assert member_token.token.allowed_networks == []
    assert logged_in(admin).post(url, {"networks": "10.0.0.0/8"}).status_code == 302
    member_token.token.refresh_from_db()
    assert member_token.token.allowed_networks == ["10.0.0.0/8"]


def _settings_form(**changes: Any) -> dict[str, Any]:
    values = {"name": "Alpha", "mode": "review", "default_deadline_seconds": 600}
    values.update(changes)
    return values


def test_the_team_settings_set_the_allowed_networks_and_approved_servers_only(
    admin: Any, team_a: Team
) -> None:
    client = logged_in(admin)
    page = client.get(SETTINGS).content.decode()
    assert "Allowed networks" in page and "Only approved servers" in page
    response = client.post(
        SETTINGS,
        _settings_form(allowed_networks_text="10.0.0.0/8\r\n192.168.1.7\r\n", require_reviewed_servers="on"),
    )
    assert response.status_code == 302
    team_a.refresh_from_db()
    assert team_a.allowed_networks == ["10.0.0.0/8", "192.168.1.7/32"] and team_a.require_reviewed_servers
    assert AuditEvent.objects.get(kind="team.networks_changed").data["networks"] == team_a.allowed_networks
    changed = AuditEvent.objects.get(kind="team.settings_changed").data["changed"]
    assert changed == {"require_reviewed_servers": True}
    assert "10.0.0.0/8\n192.168.1.7/32" in client.get(SETTINGS).content.decode()
    # Emptied: from anywhere again.
    client.post(SETTINGS, _settings_form(allowed_networks_text=""))
    team_a.refresh_from_db()
    assert team_a.allowed_networks == [] and not team_a.require_reviewed_servers


def test_a_settings_post_without_the_networks_field_keeps_them(admin: Any, team_a: Team) -> None:
    team_networks_change(team=team_a, networks=["10.0.0.0/8"], by=admin)
    assert logged_in(admin).post(SETTINGS, _settings_form(mode="whitelist")).status_code == 302
    team_a.refresh_from_db()
    assert team_a.allowed_networks == ["10.0.0.0/8"] and team_a.mode == "whitelist"


def test_a_bad_network_on_the_settings_page_saves_nothing(admin: Any, team_a: Team) -> None:
    response = logged_in(admin).post(
        SETTINGS, _settings_form(mode="whitelist", allowed_networks_text="10.0.0.0/8\nfoo")
    )
    assert response.status_code == 200
    assert "&#x27;foo&#x27; is not a network" in response.content.decode()
    team_a.refresh_from_db()
    assert team_a.allowed_networks == [] and team_a.mode == "review"


def test_the_forms_validate_networks_on_their_own() -> None:
    form = TokenIssueForm({"name": "x", "networks": "10.0.0.0/8 fe80::1"})
    assert form.is_valid() and form.cleaned_data["networks"] == ["10.0.0.0/8", "fe80::1/128"]
    team_form = TeamSettingsForm(
        {**_settings_form(), "allowed_networks_text": "1.2.3.4/40"}, instance=Team(name="T", slug="t")
    )
    assert not team_form.is_valid() and "allowed_networks_text" in team_form.errors

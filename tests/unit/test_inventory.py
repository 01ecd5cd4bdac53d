"""The inventory (issue 8, points 1 and 5): what a bridge reports of its upstream, masked on the bridge and
again on the server; first sightings and changes, audited; the Inventory and server pages."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import mcp.types as types
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals.models import AuditEvent, ToolCall, Upstream, UpstreamChange, UpstreamUse
from approvals.services.inventory import sighting_of, upstream_seen
from approvals.services.tokens import token_issue
from mcpbridge import describe, protocol
from mcpbridge.proxy import Bridge, BridgeConfig

from .conftest import SERVER, TOOL_HASH, Issued
from .sockets import receive

OTHER = "c" * 64
SECRET = "sk-live-4f9a8b7c6d5e4f3a2b1c0d9e"


# --- masking on the bridge -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["npx", "-y", "@modelcontextprotocol/server-filesystem", "/srv/project"], None),
        (["uvx", "mcp-server-time", "--local-timezone", "UTC"], None),
        (["srv", "--api-key", SECRET, "--port", "8080"], ["srv", "--api-key", "[masked]", "--port", "8080"]),
        (["srv", "--password=hunter2", "--user=ana"], ["srv", "--password=[masked]", "--user=ana"]),
        (["srv", "--token", "plainword"], ["srv", "--token", "[masked]"]),
        (["docker", "run", "-e", "API_KEY=abc123"], ["docker", "run", "-e", "API_KEY=[masked]"]),
        (
            ["psql", "postgres://app:s3cr3t@db:5432/app"],
            ["psql", "postgres://app:[masked]@db:5432/app"],
        ),
        (["srv", SECRET], ["srv", "sk-live-…[masked]"]),
        (["srv", "ghp_" + "a" * 36], ["srv", "ghp_…[masked]"]),
        (["srv", '{"apiKey": "abc", "region": "eu"}'], ["srv", '{"apiKey": "[masked]", "region": "eu"}']),
        (["srv", "Zx8f0Q2kLm9Tq4Wv7Yb1Nc3Rd5Hs6Jg0"], ["srv", "[masked]"]),  # a random-looking password
    ],
)
def test_the_bridge_masks_secrets_in_the_command_line(argv: list[str], shown: list[str] | None) -> None:
    assert describe.mask_command(argv) == (argv if shown is None else shown)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://mcp.example.com/mcp", "https://mcp.example.com/mcp"),
        ("https://ana:pw@mcp.example.com/mcp", "https://ana:[masked]@mcp.example.com/mcp"),
        ("https://mcp.example.com/mcp?token=abc&x=1", "https://mcp.example.com/mcp?token=[masked]&x=1"),
        ("https://mcp.example.com/mcp?api_key=abc", "https://mcp.example.com/mcp?api_key=[masked]"),
        ("https://h/mcp#access_token=abc", "https://h/mcp#access_token=[masked]"),
        ("https://ghp_" + "b" * 36 + "@github.com/x", "https://[masked]@github.com/x"),
    ],
)
def test_the_bridge_masks_secrets_in_the_url(url: str, shown: str) -> None:
    assert describe.mask_url(url) == shown


def test_a_long_command_line_is_cut_and_says_so() -> None:
    shown = describe.mask_command(["srv", *[f"a{i}" for i in range(100)]])
    assert len(shown) == protocol.MAX_COMMAND_ARGS
    assert shown[-1] == "… (38 more arguments)"
    assert len(describe.mask_command(["x" * 5000])[0]) == protocol.MAX_ARG_LENGTH


def _initialized(**capabilities: Any) -> types.InitializeResult:
    return types.InitializeResult(
        protocol_version="2025-06-18",
        capabilities=types.ServerCapabilities(**capabilities),
        server_info=types.Implementation(name="fs", version="1.2.3"),
    )


def test_the_report_names_the_environment_but_never_its_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_valuevaluevaluevaluevaluevaluevalue")
    monkeypatch.setenv("SIGNOFF_TOKEN", "sgo_00000000_never")
    config = BridgeConfig(
        name="files",
        signoff_url="http://127.0.0.1:1",
        token="sgo_00000000_never",
        upstream_command=["srv", "--api-key", SECRET],
    )
    bridge = Bridge(config)
    bridge.init = _initialized(tools=types.ToolsCapability(list_changed=True))
    report = bridge.upstream_report()
    frame = protocol.encode(report)
    assert "GITHUB_TOKEN" in report.env_names
    assert "SIGNOFF_TOKEN" not in report.env_names  # Signoff's own, not handed to the upstream
    assert "valuevalue" not in frame and SECRET not in frame and "never" not in frame
    assert report.command == ["srv", "--api-key", "[masked]"]
    assert (report.server_name, report.server_version, report.protocol_version) == (
        "fs",
        "1.2.3",
        "2025-06-18",
    )
    assert report.capabilities == {"tools": {"listChanged": True}}
    assert protocol.parse_bridge_message(frame) == report


def test_an_http_upstream_reports_its_masked_url_and_no_environment() -> None:
    config = BridgeConfig(
        name="crm",
        signoff_url="http://127.0.0.1:1",
        token="t",
        upstream_command=[],
        upstream_url="https://u:p@crm.example.com/mcp?key=abc",
    )
    bridge = Bridge(config)
    bridge.init = _initialized()
    report = bridge.upstream_report()
    assert (report.transport, report.url) == ("http", "https://u:[masked]@crm.example.com/mcp?key=[masked]")
    assert report.command == [] and report.env_names == []


def test_oversized_capabilities_are_sent_as_names_only() -> None:
    config = BridgeConfig(name="x", signoff_url="http://127.0.0.1:1", token="t", upstream_command=["x"])
    bridge = Bridge(config)
    bridge.init = _initialized(experimental={"blob": {"data": "x" * 20000}})
    assert bridge.upstream_report().capabilities == {"experimental": {}}


# --- the wire ------------------------------------------------------------------------------------------
REPORT = protocol.UpstreamReport(
    transport="stdio",
    command=["npx", "-y", "server-filesystem", "/srv"],
    env_names=["HOME", "PATH"],
    server_name="fs",
    server_version="1.0.0",
    protocol_version="2025-06-18",
    capabilities={"tools": {"listChanged": True}},
)


def test_the_upstream_report_survives_a_round_trip() -> None:
    assert protocol.parse_bridge_message(protocol.encode(REPORT)) == REPORT
    bare = protocol.UpstreamReport(transport="http", url="https://h/mcp")
    assert protocol.parse_bridge_message(protocol.encode(bare)) == bare


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"env_names": ["API_KEY=leaked"]}, "env_names.0"),
        ({"env_names": [f"V{i}" for i in range(protocol.MAX_ENV_NAMES + 1)]}, "env_names"),
        ({"command": ["x"] * (protocol.MAX_COMMAND_ARGS + 1)}, "command"),
        ({"command": ["x" * (protocol.MAX_ARG_LENGTH + 1)]}, "command.0"),
        ({"url": "h" * (protocol.MAX_URL_LENGTH + 1)}, "url"),
        ({"capabilities": {"x": "y" * protocol.MAX_CAPABILITIES_BYTES}}, "capabilities"),
        ({"transport": "smoke-signals"}, "transport"),
    ],
)
def test_a_report_that_breaks_a_limit_is_refused(change: dict[str, Any], where: str) -> None:
    frame = json.loads(protocol.encode(REPORT)) | change
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.parse_bridge_message(json.dumps(frame))
    assert refused.value.code == "invalid_message"
    assert refused.value.message.startswith(f"upstream.{where}")


# --- recording -----------------------------------------------------------------------------------------
def hello_info(name: str = SERVER, **fields: Any) -> protocol.UpstreamInfo:
    return protocol.UpstreamInfo(name=name, transport="stdio", **fields)


def tool(name: str, hash: str = TOOL_HASH, **annotations: Any) -> protocol.ToolInfo:
    return protocol.ToolInfo(name=name, hash=hash, annotations=annotations)


def see(token: Any, report: protocol.UpstreamReport | None = REPORT, tools: Any = None) -> Upstream:
    tools = [tool("read_file", readOnlyHint=True)] if tools is None else tools
    return upstream_seen(token=token, info=sighting_of(upstream=hello_info(), report=report, tools=tools))


def kinds() -> list[str]:
    return list(AuditEvent.objects.filter(kind__startswith="upstream.").values_list("kind", flat=True))


@pytest.mark.django_db
def test_the_first_sighting_is_recorded_and_audited(member_token: Issued) -> None:
    upstream = see(member_token.token)
    assert (upstream.team, upstream.name, upstream.transport) == (member_token.token.team, SERVER, "stdio")
    assert upstream.command == ["npx", "-y", "server-filesystem", "/srv"]
    assert upstream.env_names == ["HOME", "PATH"]
    assert (upstream.server_name, upstream.server_version, upstream.protocol_version) == (
        "fs",
        "1.0.0",
        "2025-06-18",
    )
    assert upstream.tools == {"read_file": {"hash": TOOL_HASH, "annotations": {"readOnlyHint": True}}}
    use = UpstreamUse.objects.get()
    assert (use.token, use.user) == (member_token.token, member_token.token.user)
    event = AuditEvent.objects.get(kind="upstream.first_seen")
    assert (event.token, event.actor_id, event.data["server"]) == (member_token.token, use.user.pk, SERVER)
    assert not UpstreamChange.objects.exists()


@pytest.mark.django_db
def test_the_same_report_again_changes_nothing_but_last_seen(member_token: Issued) -> None:
    first = see(member_token.token)
    again = see(member_token.token)
    assert again.pk == first.pk and again.last_seen_at >= first.last_seen_at
    assert kinds() == ["upstream.first_seen"]
    assert not UpstreamChange.objects.exists()


@pytest.mark.django_db
def test_a_new_version_new_tools_and_a_changed_command_are_one_recorded_change(member_token: Issued) -> None:
    see(member_token.token)
    newer = REPORT.model_copy(
        update={"server_version": "1.1.0", "command": ["npx", "-y", "server-filesystem", "/"]}
    )
    upstream = see(
        member_token.token,
        newer,
        tools=[tool("read_file", OTHER, readOnlyHint=True), tool("delete_file", destructiveHint=True)],
    )
    assert upstream.server_version == "1.1.0"
    change = UpstreamChange.objects.get()
    assert (change.token, change.user) == (member_token.token, member_token.token.user)
    assert change.changes == [
        {"field": "command", "before": REPORT.command, "after": ["npx", "-y", "server-filesystem", "/"]},
        {"field": "server_version", "before": "1.0.0", "after": "1.1.0"},
        {"field": "tools", "added": ["delete_file"], "removed": [], "changed": ["read_file"]},
    ]
    assert kinds() == ["upstream.first_seen", "upstream.changed"]
    event = AuditEvent.objects.get(kind="upstream.changed")
    assert event.data["server"] == SERVER
    assert [c["field"] for c in event.data["changes"]] == ["command", "server_version", "tools"]


@pytest.mark.django_db
def test_environment_and_capability_changes_are_recorded(member_token: Issued) -> None:
    see(member_token.token)
    see(
        member_token.token,
        REPORT.model_copy(update={"env_names": ["AWS_SECRET_ACCESS_KEY", "PATH"], "capabilities": {}}),
    )
    changes = UpstreamChange.objects.get().changes
    assert changes[0] == {"field": "env_names", "added": ["AWS_SECRET_ACCESS_KEY"], "removed": ["HOME"]}
    assert changes[1] == {"field": "capabilities", "before": REPORT.capabilities, "after": {}}
    summary = AuditEvent.objects.get(kind="upstream.changed").data["changes"][1]
    assert summary == {"field": "capabilities", "before": ["tools"], "after": []}


@pytest.mark.django_db
def test_an_older_bridge_is_recorded_from_its_hello_alone(member_token: Issued) -> None:
    info = sighting_of(upstream=hello_info(server_name="fs", server_version="0.9"), tools=[tool("read_file")])
    upstream = upstream_seen(token=member_token.token, info=info)
    assert (upstream.server_version, upstream.command, upstream.reported) == (
        "0.9",
        [],
        ["transport", "server_name", "server_version", "tools"],
    )
    # Then a newer bridge reports the rest: what was not known before is not a change.
    see(member_token.token, REPORT.model_copy(update={"server_version": "0.9"}), tools=[tool("read_file")])
    assert not UpstreamChange.objects.exists()
    assert Upstream.objects.get().command == REPORT.command


@pytest.mark.django_db
def test_a_hello_before_initialize_does_not_erase_what_is_known(member_token: Issued) -> None:
    see(member_token.token)
    early = sighting_of(upstream=hello_info(), tools=None)  # no server name yet, tools unknown
    upstream = upstream_seen(token=member_token.token, info=early)
    assert (upstream.server_name, upstream.server_version) == ("fs", "1.0.0")
    assert upstream.tools and not UpstreamChange.objects.exists()


@pytest.mark.django_db
def test_two_people_on_different_versions_do_not_add_a_change_on_every_connection(
    member_token: Issued, admin: Any
) -> None:
    other, _ = token_issue(team=member_token.token.team, user=admin, name="ada-laptop")
    see(member_token.token)
    older = REPORT.model_copy(update={"server_version": "0.9.0"})
    see(other, older)  # a new user on another version: one change, compared with what the team knew
    for _ in range(3):
        see(member_token.token)
        see(other, older)
    assert UpstreamChange.objects.count() == 1
    assert UpstreamUse.objects.count() == 2


@pytest.mark.django_db
def test_a_secret_the_bridge_missed_is_masked_by_the_server(member_token: Issued) -> None:
    careless = REPORT.model_copy(update={"command": ["srv", f"--key={SECRET}", "postgres://a:pw@db/x"]})
    upstream = see(member_token.token, careless)
    stored = json.dumps(list(Upstream.objects.values_list("command", "url")))
    assert SECRET not in stored and ":pw@" not in stored
    assert upstream.command[2] == "postgres://a:[masked]@db/x"
    http = sighting_of(
        upstream=hello_info("crm"),
        report=protocol.UpstreamReport(transport="http", url=f"https://h/mcp?access_token={SECRET}"),
    )
    assert SECRET not in upstream_seen(token=member_token.token, info=http).url


@pytest.mark.django_db
def test_teams_keep_their_own_inventory(member_token: Issued, outsider_token: Issued) -> None:
    see(member_token.token)
    see(outsider_token.token)
    assert Upstream.objects.count() == 2
    assert {u.team.slug for u in Upstream.objects.all()} == {"alpha", "bravo"}


# --- through the bridge socket -------------------------------------------------------------------------
@pytest.fixture
async def bridge_socket() -> AsyncIterator[Any]:
    from config.asgi import application

    opened: list[WebsocketCommunicator] = []

    async def _open(raw: str) -> WebsocketCommunicator:
        socket = WebsocketCommunicator(
            application, "/ws/bridge/", headers=[(b"authorization", f"Bearer {raw}".encode())]
        )
        opened.append(socket)
        assert (await socket.connect(timeout=3))[0]
        return socket

    yield _open
    for socket in opened:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await socket.disconnect(timeout=3)
    await database_sync_to_async(connections.close_all)()


def _hello(**upstream: Any) -> str:
    return protocol.encode(
        protocol.Hello(
            protocol=protocol.PROTOCOL_VERSION,
            bridge_version="test",
            upstream=hello_info(**upstream),
            tools=[tool("read_file", readOnlyHint=True)] if upstream else [],
        )
    )


async def _settled(predicate: Any) -> Any:
    """The inventory is written after the welcome: wait (briefly) for it."""
    for _ in range(100):
        found = await database_sync_to_async(predicate)()
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError("the inventory was not written")


@pytest.mark.django_db(transaction=True)
async def test_a_bridge_reports_its_upstream_after_the_welcome(
    member_token: Issued, bridge_socket: Any
) -> None:
    socket = await bridge_socket(member_token.raw)
    await socket.send_to(text_data=_hello())  # before initialize: no server name, no tools yet
    assert (await receive(socket))["type"] == "welcome"
    await socket.send_to(text_data=protocol.encode(protocol.Tools(tools=[tool("read_file")])))
    await socket.send_to(text_data=protocol.encode(REPORT))
    upstream = await _settled(lambda: Upstream.objects.filter(server_version="1.0.0").first())
    assert upstream.command == REPORT.command and upstream.env_names == ["HOME", "PATH"]
    assert list(upstream.tools) == ["read_file"]
    assert await socket.receive_nothing(timeout=0.2)  # a report is not answered
    assert await database_sync_to_async(kinds)() == ["upstream.first_seen"]


@pytest.mark.django_db(transaction=True)
async def test_an_older_bridge_without_a_report_still_works(member_token: Issued, bridge_socket: Any) -> None:
    socket = await bridge_socket(member_token.raw)
    await socket.send_to(text_data=_hello(server_name="fs", server_version="0.9"))
    assert (await receive(socket))["type"] == "welcome"
    upstream = await _settled(lambda: Upstream.objects.first())
    assert (upstream.server_version, upstream.reported[-1]) == ("0.9", "tools")
    await socket.send_to(text_data=protocol.encode(protocol.Call(ref="r1", tool="read_file")))
    assert (await receive(socket))["ref"] == "r1"


@pytest.mark.django_db(transaction=True)
async def test_a_report_before_the_hello_is_refused(member_token: Issued, bridge_socket: Any) -> None:
    socket = await bridge_socket(member_token.raw)
    await socket.send_to(text_data=protocol.encode(REPORT))
    assert (await receive(socket))["code"] == "hello_required"
    assert not await database_sync_to_async(Upstream.objects.exists)()


# --- the pages -----------------------------------------------------------------------------------------
def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_the_inventory_lists_servers_with_their_calls_and_people(
    member_token: Issued, admin: Any, submit: Any
) -> None:
    see(member_token.token)
    upstream_seen(
        token=member_token.token,
        info=sighting_of(
            upstream=protocol.UpstreamInfo(name="crm", transport="http"),
            report=protocol.UpstreamReport(transport="http", url="https://crm/mcp", server_version="7"),
        ),
    )
    submit(member_token.token)  # held, on "files"
    old = submit(member_token.token, arguments={"path": "/old"}).call
    ToolCall.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=40))
    response = client_for(admin).get(reverse("approvals:inventory"), {"team": "alpha"})
    assert response.status_code == 200
    html = response.content.decode()
    rows = response.context["rows"]
    assert [r.upstream.name for r in rows] == ["crm", "files"]
    files = rows[1]
    assert (files.users, files.tokens, files.tools_count, files.outcomes) == (1, 1, 1, [("pending", 1)])
    assert "pending 1" in html and 'data-server="crm"' in html
    only_http = client_for(admin).get(reverse("approvals:inventory"), {"team": "alpha", "transport": "http"})
    assert [r.upstream.name for r in only_http.context["rows"]] == ["crm"]
    by_name = client_for(admin).get(reverse("approvals:inventory"), {"team": "alpha", "q": "FS"})
    assert [r.upstream.name for r in by_name.context["rows"]] == ["files"]  # its server name is "fs"


@pytest.mark.django_db
def test_the_server_page_shows_details_tools_people_and_history(member_token: Issued, admin: Any) -> None:
    see(member_token.token)
    see(
        member_token.token,
        REPORT.model_copy(update={"server_version": "1.1.0", "command": ["srv", "--api-key", "[masked]"]}),
        tools=[
            tool("read_file", readOnlyHint=True, openWorldHint=False),
            tool("delete_file", destructiveHint=True, openWorldHint=True),
            tool("plain"),
        ],
    )
    upstream = Upstream.objects.get()
    response = client_for(admin).get(reverse("approvals:inventory_server", args=[upstream.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "srv --api-key [masked]" in html
    assert "<code>HOME</code>" in html and "Names only" in html
    assert 'class="env-secret"' not in html  # neither HOME nor PATH says it is a secret
    assert 'class="badge hint hint-destructive">destructive' in html
    assert 'class="badge hint hint-read-only">read-only' in html
    assert 'class="badge hint hint-open-world">open world' in html
    assert 'class="badge hint hint-none">no hints' in html
    assert "1.0.0 → 1.1.0" in html and "added delete_file, plain" in html
    assert "max@example.com" in html and "laptop · sgo_" in html
    assert "/audit/?team=alpha&amp;what=calls&amp;server=files" in html


@pytest.mark.django_db
def test_what_a_bridge_reports_is_escaped_on_the_pages(member_token: Issued, admin: Any) -> None:
    evil = "<script>alert(1)</script>"
    upstream = upstream_seen(
        token=member_token.token,
        info=sighting_of(
            upstream=hello_info(f"x{evil}"),
            report=REPORT.model_copy(update={"server_name": evil, "command": [evil], "env_names": [evil]}),
            tools=[protocol.ToolInfo(name=evil, hash=TOOL_HASH, title=evil)],
        ),
    )
    client = client_for(admin)
    for url in (
        reverse("approvals:inventory") + "?team=alpha",
        reverse("approvals:inventory_server", args=[upstream.pk]),
    ):
        html = client.get(url).content.decode()
        assert evil not in html and "&lt;script&gt;" in html


@pytest.mark.django_db
def test_an_unknown_server_is_404(admin: Any) -> None:
    response = client_for(admin).get(reverse("approvals:inventory_server", args=[987654]))
    assert response.status_code == 404


@pytest.mark.django_db
def test_the_nav_links_the_inventory_for_admins_and_auditors_only(admin: Any, reviewer: Any) -> None:
    link = f'href="{reverse("approvals:inventory")}"'
    assert link in client_for(admin).get(reverse("approvals:history")).content.decode()
    assert link not in client_for(reviewer).get(reverse("approvals:history")).content.decode()

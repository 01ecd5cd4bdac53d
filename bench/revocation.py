"""Revocation latency (DESIGN §5): from the admin's Revoke to the bridge's socket closing.

Each round issues a token, connects a bridge to Daphne B (protocol level: ``hello``, then one ``call`` that is
held for a reviewer), then times, from the moment the revoke request leaves:

  http       the answer to the POST to the token revoke view on Daphne A (as the admin's click sends it)
  denied     the bridge receiving the pushed ``decision`` that denies its held call
  closed     the bridge's socket closing (``error`` ``revoked``, close 4403)

With ``REDIS_URL`` set, A and B are two Daphne processes joined by channels-redis (the event goes A → Redis →
B); without it, the embedded default (in-memory channel layer), A and B are the same process. With
``DATABASE_URL`` the database is created if missing, migrated, and a new team is added to it.

    .venv/bin/python bench/revocation.py [--rounds 50]
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/signoff_bench REDIS_URL=redis://127.0.0.1:6379/13 \\
        .venv/bin/python bench/revocation.py
"""

from __future__ import annotations

import argparse
import http.cookiejar
import os
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from typing import Any

import anyio
import websockets
from _common import TOOL_HASH, bench_env, describe_setup, percentile, session_cookie, start_daphne


class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the form's 302 is the answer; the page it leads to is not part of the click's cost


class AdminBrowser:
    """The admin's HTTP as their browser sends it: a session cookie and the CSRF token of the page's form."""

    def __init__(self, url: str, session: str) -> None:
        self.url = url
        self.session = session
        self.jar = http.cookiejar.CookieJar()
        handlers = (urllib.request.HTTPCookieProcessor(self.jar), _KeepRedirects)
        self.opener = urllib.request.build_opener(*handlers)

    def open(self, path: str, *, post: bool = False) -> int:
        csrf = next((c.value or "" for c in self.jar if c.name == "csrftoken"), "")
        cookie = self.session + (f"; csrftoken={csrf}" if csrf else "")
        request = urllib.request.Request(
            self.url + path, data=b"" if post else None, headers={"Cookie": cookie, "X-CSRFToken": csrf}
        )
        try:
            with self.opener.open(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code


def setup() -> tuple[Any, Any, str]:
    """A team in review mode with an admin (logged in) and a member who owns the tokens."""
    import secrets

    from approvals.services.teams import member_add, team_create, user_get_or_create

    tag = secrets.token_hex(3)
    team = team_create(name=f"Revocation bench {tag}", slug=f"revbench-{tag}")
    admin = user_get_or_create(email=f"admin-{tag}@example.com")
    member = user_get_or_create(email=f"dev-{tag}@example.com")
    member_add(team=team, user=admin, role="admin")
    member_add(team=team, user=member, role="member")
    return team, member, session_cookie(admin)


async def one_round(team: Any, member: Any, admin: AdminBrowser, bridge_url: str) -> dict[str, float]:
    """Hold a call on a fresh token's bridge, revoke the token, time the three answers (ms)."""
    from approvals.services.tokens import token_issue
    from mcpbridge import protocol

    token, raw = token_issue(team=team, user=member, name="bench")
    async with websockets.connect(
        bridge_url, additional_headers={"Authorization": f"Bearer {raw}"}, max_size=protocol.MAX_FRAME_BYTES
    ) as bridge:
        hello = protocol.Hello(
            protocol=protocol.PROTOCOL_VERSION,
            bridge_version="bench",
            upstream=protocol.UpstreamInfo(name="files", transport="stdio"),
            tools=[protocol.ToolInfo(name="write_file", hash=TOOL_HASH)],
        )
        await bridge.send(protocol.encode(hello))
        assert isinstance(protocol.parse_server_message(await bridge.recv()), protocol.Welcome)
        await bridge.send(protocol.encode(protocol.Call(ref="r1", tool="write_file", arguments={"n": 1})))
        held = protocol.parse_server_message(await bridge.recv())
        assert isinstance(held, protocol.Decision) and held.state == "pending", held
        times: dict[str, float] = {}
        started = time.perf_counter()

        async def revoke() -> None:
            status = await anyio.to_thread.run_sync(
                lambda: admin.open(f"/tokens/{token.pk}/revoke/", post=True)
            )
            if status != 302:
                raise RuntimeError(f"the revoke view answered {status}")
            times["http"] = time.perf_counter() - started

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(revoke)
            with anyio.fail_after(10):
                try:
                    async for frame in bridge:
                        message = protocol.parse_server_message(frame)
                        if isinstance(message, protocol.Decision) and message.call_id == held.call_id:
                            assert message.state == "denied", message
                            times["denied"] = time.perf_counter() - started
                except websockets.exceptions.ConnectionClosed:
                    pass
            times["closed"] = time.perf_counter() - started
        if bridge.close_code != protocol.CLOSE_REVOKED:
            raise RuntimeError(f"the bridge's socket closed with {bridge.close_code}, not 4403")
    return {what: seconds * 1000 for what, seconds in times.items()}


async def run(rounds: int, warmup: int, team: Any, member: Any, admin: AdminBrowser, bridge_url: str) -> None:
    samples: dict[str, list[float]] = {"http": [], "denied": [], "closed": []}
    for index in range(warmup + rounds):
        measured = await one_round(team, member, admin, bridge_url)
        if index >= warmup:
            for what, value in measured.items():
                samples[what].append(value)
    labels = {
        "http": "revoke POST answered (A)",
        "denied": "held call denied, pushed to the bridge (B)",
        "closed": "bridge socket closed, 4403 (B)",
    }
    print(f"\n{rounds} revocations (after {warmup} warm-up); ms from the moment the revoke POST is sent\n")
    print("| measured at | p50 | p95 | max |")
    print("| --- | --- | --- | --- |")
    for what, label in labels.items():
        p50, p95 = percentile(samples[what], 0.5), percentile(samples[what], 0.95)
        print(f"| {label} | {p50:.1f} | {p95:.1f} | {max(samples[what]):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    env = bench_env("revocation")
    redis = bool(os.environ.get("REDIS_URL"))
    team, member, session = setup()

    with ExitStack() as stack:
        daphnes = []
        for _ in range(2 if redis else 1):
            process, url = start_daphne(env)
            stack.callback(process.wait, 10)
            stack.callback(process.terminate)
            daphnes.append(url)
        a_url, b_url = daphnes[0], daphnes[-1]
        admin = AdminBrowser(a_url, session)
        if (
            admin.open(f"/tokens/?team={team.slug}") != 200
        ):  # the page the admin clicks on; sets the CSRF cookie
            raise RuntimeError("the admin cannot open the tokens page")
        where = "two Daphne processes (A ≠ B)" if redis else "one Daphne process (A = B)"
        print(f"{where}; {describe_setup(len(daphnes))}")
        bridge_url = "ws" + b_url.removeprefix("http") + "/ws/bridge/"
        anyio.run(run, args.rounds, args.warmup, team, member, admin, bridge_url)


if __name__ == "__main__":
    main()

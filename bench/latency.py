"""Added latency of the bridge, side by side with its baselines in one run (DESIGN §8, rows 1 and 2).

Paths, each driven by the `mcp` SDK's ClientSession over stdio against the same upstream tool:
  direct     client → upstream
  sketch     client → bare SDK stdio proxy (shared/reference/bridge_sketch.py) → upstream
  fastmcp    client → FastMCP's create_proxy (bench/fastmcp_proxy.py) → upstream, with --fastmcp-python
  mcpbridge  client → mcpbridge → upstream, the call auto-allowed by a rule and audited by a real Daphne; the
             team's result policy is the default (instructions and secrets masked), so the bridge inspects
             each result before the client gets it
  mcpbridge-pass  the same with a team whose result policy only passes: results are inspected after the
             answer (mcpbridge minus mcpbridge-pass is what inline inspection adds)

With --result-kb N the echoed text is N KB of clean text from the ordinary corpus (bench/inspection.py), so
the table shows what inspecting a clean result of that size adds (issue 7's bar: 10 KB adds ≤ 1 ms p50).

Rounds alternate between the paths so that drift on the machine hits all of them alike. Daphne runs on the
embedded default (SQLite), or on PostgreSQL + Redis when DATABASE_URL and REDIS_URL are set.

    .venv/bin/python bench/latency.py [--calls 200] [--rounds 3] [--fastmcp-python /tmp/fmvenv/bin/python]
                                      [--result-kb 10]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(PYTHON).parent
UPSTREAM = [PYTHON, str(ROOT / "tests" / "upstream_server.py")]
SKETCH = ROOT.parent / "shared" / "reference" / "bridge_sketch.py"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def start_signoff(state: Path) -> tuple[subprocess.Popen[bytes], str, str, str]:
    """A Daphne on the embedded default, with a team whose rule allows every call of the bench server."""
    env = {**os.environ, "SIGNOFF_STATE_DIR": str(state), "SECRET_KEY": secrets.token_urlsafe(40)}
    env["SIGNOFF_LOG_LEVEL"] = "WARNING"
    os.environ.update({k: env[k] for k in ("SIGNOFF_STATE_DIR", "SECRET_KEY")})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    from approvals.models import Rule
    from approvals.services.teams import member_add, team_create, user_get_or_create
    from approvals.services.tokens import token_issue

    call_command("migrate", verbosity=0)
    team = team_create(name="Bench")
    user = user_get_or_create(email="bench@example.com")
    member_add(team=team, user=user, role="admin")
    _, raw = token_issue(team=team, user=user, name="bench")
    Rule.objects.create(team=team, effect="allow", server="bench", tool="*")
    passing = team_create(name="Bench pass")
    passing.result_instructions = passing.result_secrets = passing.result_personal_data = "pass"
    passing.save()
    member_add(team=passing, user=user, role="admin")
    _, raw_pass = token_issue(team=passing, user=user, name="bench-pass")
    Rule.objects.create(team=passing, effect="allow", server="bench", tool="*")
    from django.db import connections

    connections.close_all()  # the bench's own connection must not hold SQLite's lock or a PG session

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import urllib.request

    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=2)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return process, f"http://127.0.0.1:{port}", raw, raw_pass


async def open_session(stack: AsyncExitStack, command: list[str], env: dict[str, str]) -> Any:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    params = StdioServerParameters(command=command[0], args=command[1:], env=env)
    errlog = stack.enter_context(open(os.devnull, "w"))  # noqa: ASYNC230, SIM115 - /dev/null never blocks
    read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
    session = await stack.enter_async_context(ClientSession(read, write))
    await session.initialize()
    return session


async def timed(session: Any, calls: int, what: str, text: str = "") -> list[float]:
    samples = []
    for index in range(calls):
        started = time.perf_counter()
        if what == "call":
            result = await session.call_tool("echo", {"text": f"{text or 'bench'} {index}"})
            if result.is_error:
                raise RuntimeError(f"bench call failed: {result.content}")
        else:
            await session.list_tools()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def run(
    calls: int,
    rounds: int,
    daphne: subprocess.Popen[bytes],
    url: str,
    token: str,
    token_pass: str,
    fastmcp_python: str | None,
    text: str,
) -> None:
    env = {**os.environ, "SIGNOFF_URL": url, "SIGNOFF_TOKEN": token}
    paths: dict[str, list[str]] = {"direct": UPSTREAM}
    if SKETCH.exists():
        paths["sketch"] = [PYTHON, str(SKETCH), *UPSTREAM]
    else:
        print(f"(no {SKETCH}: the bare-proxy baseline is left out)")
    if fastmcp_python:
        paths["fastmcp"] = [fastmcp_python, str(ROOT / "bench" / "fastmcp_proxy.py"), *UPSTREAM]
    bridge = [str(BIN / "mcpbridge"), "--name", "bench", "--log-level", "WARNING"]
    paths["mcpbridge"] = [*bridge, "--", *UPSTREAM]
    paths["mcpbridge-pass"] = paths["mcpbridge"]
    envs = {"mcpbridge-pass": {**env, "SIGNOFF_TOKEN": token_pass}}
    results: dict[tuple[str, str], list[float]] = {}
    try:
        async with AsyncExitStack() as stack:
            sessions = {
                name: await open_session(stack, command, envs.get(name, env))
                for name, command in paths.items()
            }
            for session in sessions.values():  # warm-up
                await timed(session, 20, "call")
                await timed(session, 5, "list")
            for _ in range(rounds):
                for name, session in sessions.items():
                    for what in ("call", "list"):
                        samples = await timed(session, calls, what, text)
                        results.setdefault((name, what), []).extend(samples)
    finally:
        daphne.terminate()
        daphne.wait(10)

    size = f"{len(text.encode()) / 1024:.1f} KB of clean text" if text else "a few bytes"
    print(f"\n{rounds} rounds x {calls} calls per path, alternating; echoed: {size}; milliseconds\n")
    labels = {"call": "tools/call (auto-allowed, audited)", "list": "tools/list (pass-through)"}
    for what, label in labels.items():
        direct = results[("direct", what)]
        d50, d99 = percentile(direct, 0.5), percentile(direct, 0.99)
        print(f"{label}")
        print("| path | p50 | p99 | added p50 | added p99 |")
        print("| --- | --- | --- | --- | --- |")
        for name in paths:
            samples = results[(name, what)]
            p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
            print(f"| {name} | {p50:.2f} | {p99:.2f} | {p50 - d50:+.2f} | {p99 - d99:+.2f} |")
        if "sketch" in paths:
            s50 = percentile(results[("sketch", what)], 0.5) - d50
            s99 = percentile(results[("sketch", what)], 0.99) - d99
            b50 = percentile(results[("mcpbridge", what)], 0.5) - d50
            b99 = percentile(results[("mcpbridge", what)], 0.99) - d99
            total_ratio = statistics.median(results[("mcpbridge", what)]) / statistics.median(
                results[("sketch", what)]
            )
            print(
                f"\nadded latency, mcpbridge / bare proxy: p50 {b50 / s50:.2f}x, p99 {b99 / s99:.2f}x; "
                f"total latency ratio (p50) {total_ratio:.2f}x"
            )
        if "fastmcp" in paths:
            f50 = percentile(results[("fastmcp", what)], 0.5) - d50
            b50 = percentile(results[("mcpbridge", what)], 0.5) - d50
            print(f"added latency, mcpbridge / FastMCP create_proxy: p50 {b50 / f50:.2f}x")
        if what == "call":
            inline = percentile(results[("mcpbridge", what)], 0.5) - percentile(
                results[("mcpbridge-pass", what)], 0.5
            )
            print(
                f"inspecting the result before the answer (mcpbridge - mcpbridge-pass): p50 {inline:+.2f} ms"
            )
        print()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--fastmcp-python", help="an interpreter with the fastmcp package: adds FastMCP's create_proxy"
    )
    parser.add_argument("--result-kb", type=int, default=0, help="echo this many KB of clean text")
    args = parser.parse_args()
    print(f"database: {'PostgreSQL + Redis' if os.environ.get('DATABASE_URL') else 'embedded (SQLite)'}")
    text = ""
    if args.result_kb:
        sys.path.insert(0, str(ROOT / "bench"))
        from inspection import clean_text

        text = clean_text("mixed", args.result_kb * 1024 - 16)
    daphne, url, token, token_pass = start_signoff(Path(tempfile.mkdtemp(prefix="signoff-bench-")))
    anyio.run(run, args.calls, args.rounds, daphne, url, token, token_pass, args.fastmcp_python, text)


if __name__ == "__main__":
    main()

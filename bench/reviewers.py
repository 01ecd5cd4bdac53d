"""Reviewer fan-out, decision forwarding and 1,000 held calls (DESIGN §8, rows 3, 4 and 6).

One team in review mode (no rule: every call is held for a person) with ``--reviewers`` reviewer sockets
(``/ws/review/``, one user and session each) and ``--bridges`` bridge sockets (``/ws/bridge/``, one token
each), driven at protocol level from this process.

  row 3  held call → visible: ``--calls`` calls one after another from one bridge; for each, the time from
         the bridge's ``call`` frame leaving to the ``call`` message (state ``pending``) arriving at the
         first and at the last of the reviewer sockets.
  row 4  decision → forwarded: a reviewer (a different one each call) sends ``decide`` (allow); the time from
         that frame leaving to the pushed ``decision`` (``allowed``) arriving at the bridge, which is what
         lets the bridge run the call. Also shown: the bridge's ``claim`` answered (``run: true``), when the
         upstream call actually starts.
  row 6  ``--held`` calls sent at once, spread over every bridge socket, all held; then every reviewer
         socket must have been shown every call, a fresh reviewer socket's snapshot must list them all, a
         reviewer decides each, every bridge must get the pushed decision of each of its calls, then claims
         and reports them. Nothing may be lost; the server's resident memory (``VmRSS`` sampled every 50 ms,
         and the kernel's high-water mark ``VmHWM``) must stay ≤ 300 MB.

With ``REDIS_URL`` set, two Daphne processes joined by channels-redis: bridges on A, reviewers on B (every
push crosses processes). Otherwise the embedded default, one process. With ``DATABASE_URL`` the database is
created if missing, migrated, and a new team is added to it.

    .venv/bin/python bench/reviewers.py [--reviewers 100] [--bridges 50] [--calls 200] [--held 1000]
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/signoff_bench2 REDIS_URL=redis://127.0.0.1:6379/12 \\
        .venv/bin/python bench/reviewers.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    BridgeConn,
    RssSampler,
    bench_env,
    bridge_connect,
    describe_setup,
    machine,
    percentile,
    session_cookie,
    start_daphne,
    ws_url,
)

BAR_MS = 50.0
BAR_RSS_MB = 300.0


@dataclass
class Team:
    """What the run set up: the team, its reviewers' session cookies, its bridges' raw tokens."""

    slug: str
    cookies: list[str]
    tokens: list[str]


def setup(reviewers: int, bridges: int) -> Team:
    """A team in review mode, ``reviewers`` reviewers (logged in) and ``bridges`` tokens of one member."""
    from approvals.services.teams import member_add, team_create, user_get_or_create
    from approvals.services.tokens import token_issue

    tag = secrets.token_hex(3)
    team = team_create(name=f"Reviewers bench {tag}", slug=f"revs-{tag}")
    team.mode = "review"
    team.default_deadline_seconds = 3600
    team.save(update_fields=["mode", "default_deadline_seconds"])
    member = user_get_or_create(email=f"dev-{tag}@example.com")
    member_add(team=team, user=member, role="member")
    cookies = []
    for index in range(reviewers):
        user = user_get_or_create(email=f"rev{index}-{tag}@example.com")
        member_add(team=team, user=user, role="reviewer")
        cookies.append(session_cookie(user))
    tokens = [token_issue(team=team, user=member, name=f"bridge {i}")[1] for i in range(bridges)]
    return Team(team.slug, cookies, tokens)


@dataclass
class Reviewer:
    """One reviewer's socket: when each call was first shown to it as pending."""

    ws: Any
    index: int
    seen: dict[str, float] = field(default_factory=dict)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)


class Fanout:
    """Counts, per call, the reviewer sockets that have been shown it; wakes whoever waits for all of them."""

    def __init__(self, reviewers: int) -> None:
        self.reviewers = reviewers
        self.count: dict[str, int] = {}
        self.waiters: dict[str, asyncio.Event] = {}
        self.last_message = time.perf_counter()

    def shown(self, call_id: str) -> None:
        self.count[call_id] = count = self.count.get(call_id, 0) + 1
        self.last_message = time.perf_counter()
        if count == self.reviewers and (event := self.waiters.pop(call_id, None)) is not None:
            event.set()

    async def all_shown(self, call_id: str, wait: float = 10.0) -> bool:
        if self.count.get(call_id, 0) >= self.reviewers:
            return True
        event = self.waiters.setdefault(call_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), wait)
        except TimeoutError:
            return False
        return True


async def review_reader(reviewer: Reviewer, fanout: Fanout) -> None:
    try:
        async for frame in reviewer.ws:
            arrived = time.perf_counter()
            message = json.loads(frame)
            kind = message.get("type")
            if kind == "call":
                call = message["call"]
                if call["state"] == "pending" and call["id"] not in reviewer.seen:
                    reviewer.seen[call["id"]] = arrived
                    fanout.shown(call["id"])
            elif kind == "snapshot":
                for call in message["calls"]:
                    if call["id"] not in reviewer.seen:
                        reviewer.seen[call["id"]] = arrived
                        fanout.shown(call["id"])
            elif kind == "decided":
                reviewer.answers[message["call_id"]] = message
            else:
                reviewer.errors.append(message)
    except Exception as exc:
        reviewer.errors.append({"type": "closed", "message": repr(exc)})


async def connect_reviewer(url: str, origin: str, slug: str, cookie: str, index: int) -> Reviewer:
    import websockets

    ws = await websockets.connect(
        f"{url}?team={slug}",
        additional_headers={"Cookie": cookie},
        origin=origin,  # type: ignore[arg-type]
        max_size=None,
    )
    return Reviewer(ws, index)


def call_frame(marker: str, n: int) -> dict[str, Any]:
    """A ``write_file`` call with ordinary arguments (about 300 bytes), unique by ``marker``."""
    return {
        "type": "call",
        "tool": "write_file",
        "arguments": {
            "path": f"/home/dev/project/src/module_{n}.py",
            "content": f"def handler(event):\n    return {{'ok': True, 'n': {n}}}\n" * 3,
            "marker": marker,
        },
    }


def summary(values: list[float]) -> str:
    return " | ".join(f"{percentile(values, q):.1f}" for q in (0.5, 0.95, 0.99)) + f" | {max(values):.1f}"


Timings = dict[str, list[float]]


async def rows_3_4(
    bridge: BridgeConn, reviewers: list[Reviewer], fanout: Fanout, calls: int, warmup: int
) -> Timings:
    """Held calls one after another, each shown to every reviewer socket, allowed, claimed and reported."""
    timings: Timings = {"first": [], "last": [], "forwarded": [], "claimed": []}
    # A reviewer socket may decide 10 calls a second (bursts of 20): with few sockets, go slower.
    pause = 0.01 if len(reviewers) >= 20 else 0.13
    for index in range(warmup + calls):
        answer, sent, _ = await bridge.request(call_frame(f"seq-{index}-{secrets.token_hex(2)}", index))
        if answer.get("state") != "pending":
            raise RuntimeError(f"the call was not held: {answer}")
        call_id = answer["call_id"]
        await fanout.all_shown(call_id)
        shown = [r.seen[call_id] for r in reviewers if call_id in r.seen]
        reviewer = reviewers[index % len(reviewers)]
        await asyncio.sleep(0.005)  # let the last messages of the fan-out drain before the next timing
        decided = time.perf_counter()
        await reviewer.ws.send(json.dumps({"type": "decide", "call_id": call_id, "decision": "allow"}))
        state, pushed = await asyncio.wait_for(bridge.pushed(call_id), 10)
        if state != "allowed":
            raise RuntimeError(f"the call was {state}, not allowed")
        claim, _, claim_answered = await bridge.request({"type": "claim", "call_id": call_id})
        if not claim.get("run"):
            raise RuntimeError(f"the claim was refused: {claim}")
        await bridge.request(
            {"type": "result", "call_id": call_id, "is_error": False, "summary": "ok", "duration_ms": 1}
        )
        if index >= warmup:
            timings["first"].append((min(shown) - sent) * 1000)
            timings["last"].append((max(shown) - sent) * 1000)
            timings["forwarded"].append((pushed - decided) * 1000)
            timings["claimed"].append((claim_answered - decided) * 1000)
        await asyncio.sleep(pause)
    return timings


def print_rows_3_4(baseline: Timings, full: Timings, reviewers: int) -> None:
    n = reviewers
    print(
        f"\nRows 3-4: held calls one after another ({len(baseline['first'])} with 1 reviewer socket "
        f"connected, then {len(full['first'])} with {n}); ms, p50 / p99 (max)\n"
    )
    print(f"| measured | 1 reviewer socket | {n} reviewer sockets: p50 | p95 | p99 | max | bar (p99) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = {
        "first": f"row 3: `call` sent → shown on the first of {n} reviewer sockets",
        "last": f"row 3: `call` sent → shown on the last of {n} reviewer sockets",
        "forwarded": "row 4: `decide` sent → `decision` (allowed) pushed to the bridge",
        "claimed": "(`decide` sent → the bridge's `claim` answered `run: true`)",
    }
    for key, label in rows.items():
        base = baseline[key]
        bar = f"≤ {BAR_MS:.0f}" if key != "claimed" else "—"
        print(
            f"| {label} | {percentile(base, 0.5):.1f} / {percentile(base, 0.99):.1f} ({max(base):.1f}) "
            f"| {summary(full[key])} | {bar} |"
        )


async def row_6(
    bridges: list[BridgeConn],
    reviewers: list[Reviewer],
    fanout: Fanout,
    held: int,
    samplers: dict[str, RssSampler],
    review_url: str,
    origin: str,
    team: Team,
) -> None:
    per_bridge = -(-held // len(bridges))
    started = time.perf_counter()

    async def hold(bridge: BridgeConn, count: int, offset: int) -> list[str]:
        frames = [call_frame(f"held-{offset + i}-{secrets.token_hex(2)}", offset + i) for i in range(count)]
        answers = await asyncio.gather(*(bridge.request(frame) for frame in frames))
        refused = [a for a, _, _ in answers if a.get("state") != "pending"]
        if refused:
            raise RuntimeError(f"{len(refused)} calls were not held, e.g. {refused[0]}")
        return [a["call_id"] for a, _, _ in answers]

    counts = [min(per_bridge, held - i * per_bridge) for i in range(len(bridges))]
    ids_per_bridge = await asyncio.gather(
        *(hold(b, c, i * per_bridge) for i, (b, c) in enumerate(zip(bridges, counts, strict=True)) if c > 0)
    )
    all_held = time.perf_counter()
    call_ids = [call_id for ids in ids_per_bridge for call_id in ids]
    # Every reviewer socket should be shown every call; wait until it is, or nothing arrived for 5 s.
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        if all(fanout.count.get(c, 0) >= len(reviewers) for c in call_ids):
            break
        if time.perf_counter() - fanout.last_message > 5:
            break
        await asyncio.sleep(0.05)
    all_shown = time.perf_counter()
    missing_pairs = sum(1 for r in reviewers for c in call_ids if c not in r.seen)

    # A page opened now (or re-synced after a lost message) reads the queue from the database.
    fresh = await connect_reviewer(review_url, origin, team.slug, team.cookies[0], -1)
    snapshot = json.loads(await fresh.ws.recv())
    await fresh.ws.close()
    in_snapshot = {call["id"] for call in snapshot.get("calls", [])}
    snapshot_missing = sum(1 for c in call_ids if c not in in_snapshot)

    # Each reviewer decides its share (at most its burst at once: 10 a second, bursts of 20 per socket).
    decide_started = time.perf_counter()
    shares: dict[int, list[str]] = {}
    for index, call_id in enumerate(call_ids):
        shares.setdefault(index % len(reviewers), []).append(call_id)

    async def decide(reviewer: Reviewer, ids: list[str]) -> None:
        for chunk_start in range(0, len(ids), 15):
            if chunk_start:
                await asyncio.sleep(1.6)
            for call_id in ids[chunk_start : chunk_start + 15]:
                await reviewer.ws.send(
                    json.dumps({"type": "decide", "call_id": call_id, "decision": "allow"})
                )

    await asyncio.gather(*(decide(reviewers[i], ids) for i, ids in shares.items()))
    owner = {c: bridge for bridge, ids in zip(bridges, ids_per_bridge, strict=False) for c in ids}

    async def forwarded(call_id: str) -> bool:
        try:
            state, _ = await asyncio.wait_for(owner[call_id].pushed(call_id), 30)
        except TimeoutError:
            return False
        return state == "allowed"

    pushed_ok = await asyncio.gather(*(forwarded(c) for c in call_ids))
    all_pushed = time.perf_counter()
    # A reviewer's `decided` answer is sent after the commit that pushes the decision: it may come later.
    answers_by = time.perf_counter() + 10

    def decided_answers() -> int:
        return sum(1 for r in reviewers for c in r.answers if c in owner)

    while decided_answers() < len(call_ids) and time.perf_counter() < answers_by:  # noqa: ASYNC110
        await asyncio.sleep(0.05)

    # The bridges claim and report each call, as the real bridge does after the push.
    async def finish(bridge: BridgeConn, ids: list[str]) -> int:
        claims = await asyncio.gather(*(bridge.request({"type": "claim", "call_id": c}) for c in ids))
        runnable = [a["call_id"] for a, _, _ in claims if a.get("run")]
        await asyncio.gather(
            *(
                bridge.request(
                    {
                        "type": "result",
                        "call_id": c,
                        "is_error": False,
                        "summary": "written",
                        "duration_ms": 2,
                    }
                )
                for c in runnable
            )
        )
        return len(runnable)

    ran = sum(
        await asyncio.gather(*(finish(b, ids) for b, ids in zip(bridges, ids_per_bridge, strict=False)))
    )
    finished = time.perf_counter()

    from asgiref.sync import sync_to_async

    def states() -> dict[str, int]:
        from django.db.models import Count

        from approvals.models import ToolCall

        rows = ToolCall.objects.filter(pk__in=call_ids).values("state").annotate(n=Count("pk"))
        return {row["state"]: row["n"] for row in rows}

    final = await sync_to_async(states)()
    n = len(reviewers)
    print(f"\nRow 6: {held} calls held at once from {len(bridges)} bridge sockets, {n} reviewer sockets\n")
    print("| measured | figure | bar |")
    print("| --- | --- | --- |")
    print(f"| calls held (answered `pending`) | {len(call_ids)} in {all_held - started:.2f} s | {held} |")
    pairs = len(call_ids) * n
    print(
        f"| (call, reviewer socket) pairs shown live | {pairs - missing_pairs} of {pairs} "
        f"(all within {all_shown - started:.2f} s) | none lost |"
    )
    print(
        f"| calls in a fresh reviewer socket's snapshot | {len(call_ids) - snapshot_missing} "
        f"of {len(call_ids)} | all |"
    )
    print(f"| `decided` answers to the reviewers | {decided_answers()} of {len(call_ids)} | all |")
    print(
        f"| allowed decisions pushed to their bridge | {sum(pushed_ok)} of {len(call_ids)} "
        f"({all_pushed - decide_started:.2f} s after the first `decide`) | none lost |"
    )
    print(
        f"| claims answered `run: true`, then reported | {ran} of {len(call_ids)} "
        f"({finished - all_pushed:.2f} s) | all |"
    )
    print(f"| final states in the database | {final} | all completed |")
    for name, sampler in samplers.items():
        print(
            f"| Daphne {name} RSS: peak sampled / kernel high-water mark | "
            f"{sampler.peak_kib / 1024:.0f} MB / {sampler.hwm_kib() / 1024:.0f} MB | ≤ {BAR_RSS_MB:.0f} MB |"
        )
    errors = [e for r in reviewers for e in r.errors] + [e for b in bridges for e in b.errors]
    if errors:
        print(f"\n{len(errors)} unexpected frames, e.g. {errors[:3]}")


async def run(
    args: argparse.Namespace, team: Team, bridge_http: str, review_http: str, pids: dict[str, int]
) -> None:
    import websockets  # noqa: F401  (imported before the timings)

    bridge_url = ws_url(bridge_http, "/ws/bridge/")
    review_url = ws_url(review_http, "/ws/review/")
    rss: dict[str, list[int]] = {name: [RssSampler(pid).now_kib()] for name, pid in pids.items()}
    fanout = Fanout(args.reviewers)
    tasks: list[asyncio.Task[None]] = []
    bridges: list[BridgeConn] = []
    reviewers: list[Reviewer] = []

    async def add_bridge(index: int) -> None:
        conn = BridgeConn(await bridge_connect(bridge_url, team.tokens[index]), f"b{index}")
        bridges.append(conn)
        tasks.append(asyncio.create_task(conn.reader()))

    async def add_reviewer(index: int) -> None:
        reviewer = await connect_reviewer(review_url, review_http, team.slug, team.cookies[index], index)
        reviewers.append(reviewer)
        tasks.append(asyncio.create_task(review_reader(reviewer, fanout)))

    # One of each first (the servers import and warm what sockets need), then the rest.
    await add_bridge(0)
    await add_reviewer(0)
    await asyncio.sleep(0.5)
    for name in pids:
        rss[name].append(RssSampler(pids[name]).now_kib())
    fanout.reviewers = 1
    baseline = await rows_3_4(bridges[0], reviewers, fanout, args.baseline_calls, args.warmup)
    fanout.reviewers = args.reviewers
    for index in range(1, args.bridges):
        await add_bridge(index)
    for index in range(1, args.reviewers):
        await add_reviewer(index)
    await asyncio.sleep(1.0)
    for name in pids:
        rss[name].append(RssSampler(pids[name]).now_kib())
    bridges.sort(key=lambda b: int(b.name[1:]))
    reviewers.sort(key=lambda r: r.index)

    print(
        f"\nServer memory (VmRSS, MB) as sockets connect: {args.bridges} bridge, "
        f"{args.reviewers} reviewer sockets\n"
    )
    print("| process | started | 1 bridge + 1 reviewer socket | all sockets | per added socket |")
    print("| --- | --- | --- | --- | --- |")
    added = args.bridges + args.reviewers - 2
    for name, (start, warm, connected) in rss.items():
        per = (connected - warm) / added if added else 0.0
        print(f"| {name} | {start / 1024:.0f} | {warm / 1024:.0f} | {connected / 1024:.0f} | {per:.0f} KB |")

    full = await rows_3_4(bridges[0], reviewers, fanout, args.calls, args.warmup)
    print_rows_3_4(baseline, full, args.reviewers)
    with ExitStack() as stack:
        samplers = {name: stack.enter_context(RssSampler(pid)) for name, pid in pids.items()}
        await row_6(bridges, reviewers, fanout, args.held, samplers, review_url, review_http, team)
    print(f"\nafter the run: {machine()}")
    for conn in bridges:
        await conn.ws.close()
    for reviewer in reviewers:
        await reviewer.ws.close()
    for task in tasks:
        task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reviewers", type=int, default=100)
    parser.add_argument("--bridges", type=int, default=50)
    parser.add_argument("--calls", type=int, default=200, help="rows 3-4: calls one after another")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--baseline-calls", type=int, default=100, help="rows 3-4 first with one reviewer socket connected"
    )
    parser.add_argument("--held", type=int, default=1000, help="row 6: calls held at once")
    args = parser.parse_args()

    redis = bool(os.environ.get("REDIS_URL"))
    env = bench_env("reviewers")
    team = setup(args.reviewers, args.bridges)
    from django.db import connections

    connections.close_all()
    logs = Path(env["SIGNOFF_STATE_DIR"])
    with ExitStack() as stack:
        daphnes: dict[str, tuple[int, str]] = {}
        for name in ("A", "B") if redis else ("A",):
            process, url = start_daphne(env, logs / f"daphne-{name}.log")
            stack.callback(process.wait, 10)
            stack.callback(process.terminate)
            daphnes[name] = (process.pid, url)
        where = "bridges on A, reviewers on B (every push crosses Redis)" if redis else "one process"
        print(describe_setup(len(daphnes)) + f"; {where}; logs in {logs}")
        bridge_http = daphnes["A"][1]
        review_http = daphnes["B" if redis else "A"][1]
        pids = {name: pid for name, (pid, _) in daphnes.items()}
        asyncio.run(run(args, team, bridge_http, review_http, pids))


if __name__ == "__main__":
    main()

"""Automatic decisions per Daphne process, and scale-out to two processes (DESIGN §8, row 5 and scale-out).

A team whose rule allows every call of the bench server; ``--sockets`` bridge sockets (one token each), each
with one call in flight at a time (closed loop), sending ``write_file`` calls with ordinary arguments (about
300 bytes, all different) for ``--seconds``. Each call is decided by the rule, recorded and audited
(``call.allowed``) and answered ``run: true``. Two phases per configuration:

  decisions  ``call`` → ``decision`` only: the row-5 figure
  full       ``call`` → ``decision``, then ``result`` (a 200-character summary) → ``decision`` ``completed``:
             a call's whole life as the server sees it, the figure the capacity model (docs/scale.md) uses

Measured per phase: calls/s, the answer's latency under that load, and the CPU each process used (Daphne from
``/proc/PID/stat``; with PostgreSQL and Redis also every ``postgres`` process, commits and WAL bytes from
``pg_stat_database``/``pg_current_wal_lsn()``, and Redis's ``INFO``), per call.

Without the environment: the embedded default, one process (SQLite: one writer at a time). With
``DATABASE_URL`` and ``REDIS_URL``: one process, then two processes on the same Redis and PostgreSQL (the
sockets split between them), side by side; then the size on disk of the calls and audit tables per row.

    .venv/bin/python bench/throughput.py [--sockets 50] [--seconds 10]
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/signoff_bench2 REDIS_URL=redis://127.0.0.1:6379/12 \\
        .venv/bin/python bench/throughput.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    BridgeConn,
    bench_env,
    bridge_connect,
    cpu_seconds,
    describe_setup,
    machine,
    percentile,
    start_daphne,
    ws_url,
)

BAR_PER_PROCESS = 1000.0
WAITS: list[str] = []
"""Per configuration and phase: what PostgreSQL's active backends waited on."""
SUMMARY = ("wrote 1,024 bytes to /home/dev/project/src/module.py; " * 4)[:200]


def setup(sockets: int) -> list[str]:
    """A team whose rule allows the bench server's calls, and ``sockets`` tokens of one member."""
    from approvals.models import Rule
    from approvals.services.teams import member_add, team_create, user_get_or_create
    from approvals.services.tokens import token_issue

    tag = secrets.token_hex(3)
    team = team_create(name=f"Throughput bench {tag}", slug=f"tput-{tag}")
    member = user_get_or_create(email=f"dev-{tag}@example.com")
    member_add(team=team, user=member, role="admin")
    Rule.objects.create(team=team, effect="allow", server="files", tool="*")
    return [token_issue(team=team, user=member, name=f"bridge {i}")[1] for i in range(sockets)]


def call_frame(n: int) -> dict[str, Any]:
    return {
        "type": "call",
        "tool": "write_file",
        "arguments": {
            "path": f"/home/dev/project/src/module_{n}.py",
            "content": f"def handler(event):\n    return {{'ok': True, 'n': {n}}}\n" * 3,
        },
    }


@dataclass
class Tally:
    """What one process's sockets got in one phase."""

    calls: int = 0
    refused: int = 0
    latencies: list[float] = field(default_factory=list)


async def worker(conn: BridgeConn, stop_at: float, full: bool, tally: Tally, counter: list[int]) -> None:
    while time.perf_counter() < stop_at:
        counter[0] += 1
        answer, sent, arrived = await conn.request(call_frame(counter[0]))
        if answer.get("state") != "allowed" or not answer.get("run"):
            tally.refused += 1
            continue
        if full:
            done, _, arrived = await conn.request(
                {
                    "type": "result",
                    "call_id": answer["call_id"],
                    "is_error": False,
                    "summary": SUMMARY,
                    "duration_ms": 3,
                }
            )
            if done.get("state") != "completed":
                tally.refused += 1
                continue
        tally.calls += 1
        tally.latencies.append((arrived - sent) * 1000)


class Resources:
    """CPU of the Daphne processes, this client, PostgreSQL and Redis; PostgreSQL commits and WAL."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.pg = bool(os.environ.get("DATABASE_URL"))
        self.redis = bool(os.environ.get("REDIS_URL"))

    def read(self) -> dict[str, float]:
        values = {f"cpu {name}": cpu_seconds(pid) for name, pid in self.pids.items()}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        values["cpu client"] = usage.ru_utime + usage.ru_stime
        if self.pg:
            # Per process: a backend that exits between two readings is left out of the difference.
            values.update({f"pg pid {pid}": cpu_seconds(pid) for pid in postgres_pids()})
            values.update(pg_counters())
        if self.redis:
            values.update(redis_counters())
        return values


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


class WaitSampler:
    """What the database's active backends wait on, sampled every 10 ms in a thread (``pg_stat_activity``):
    the audit chain's advisory lock shows as ``Lock:advisory``, commits' fsync as ``IO:WALSync``."""

    def __init__(self) -> None:
        import threading
        from collections import Counter

        self.counts: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
            while not self._stop.wait(0.01):
                rows = conn.execute(
                    "SELECT coalesce(wait_event_type, 'CPU') || ':' || coalesce(wait_event, 'running') "
                    "FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
                    "AND pid <> pg_backend_pid()"
                ).fetchall()
                self.samples += 1
                self.counts.update(row[0] for row in rows)

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def text(self) -> str:
        """Mean number of backends in each state (top 4), e.g. ``Lock:advisory 1.20``."""
        top = self.counts.most_common(4)
        return ", ".join(f"{what} {n / max(1, self.samples):.2f}" for what, n in top)


def pg_counters() -> dict[str, float]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT xact_commit, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') FROM pg_stat_database "
            "WHERE datname = current_database()"
        )
        commits, wal = cursor.fetchone()
    return {"pg commits": float(commits), "pg wal bytes": float(wal)}


def redis_counters() -> dict[str, float]:
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    stats, cpu = client.info("stats"), client.info("cpu")
    client.close()
    return {
        "redis commands": float(stats["total_commands_processed"]),
        "cpu redis": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
    }


async def measure(
    tokens: list[str], daphnes: dict[str, tuple[int, str]], seconds: float, warmup: float
) -> list[tuple[str, dict[str, Tally], float, dict[str, float]]]:
    """Connect the sockets round-robin over the processes; warm up; run both phases. Per phase: the tallies
    per process, the elapsed seconds and the resource deltas."""
    names = list(daphnes)
    conns: list[tuple[str, BridgeConn]] = []
    readers = []
    for index, raw in enumerate(tokens):
        name = names[index % len(names)]
        conn = BridgeConn(await bridge_connect(ws_url(daphnes[name][1], "/ws/bridge/"), raw), f"s{index}")
        conns.append((name, conn))
        readers.append(asyncio.create_task(conn.reader()))
    resources = Resources({name: pid for name, (pid, _) in daphnes.items()})
    counter = [secrets.randbelow(10**9) * 1000]
    results = []
    for phase, full, duration in (
        ("warm-up", True, warmup),
        ("decisions", False, seconds),
        ("full", True, seconds),
    ):
        tallies = {name: Tally() for name in names}
        before = resources.read()
        started = time.perf_counter()
        stop_at = started + duration
        with ExitStack() as stack:
            waits = stack.enter_context(WaitSampler()) if resources.pg else None
            await asyncio.gather(
                *(worker(conn, stop_at, full, tallies[name], counter) for name, conn in conns)
            )
        elapsed = time.perf_counter() - started
        after = resources.read()
        delta = {k: after[k] - before[k] for k in after if k in before and not k.startswith("pg pid")}
        if resources.pg:
            delta["cpu postgres"] = sum(
                after[k] - before[k] for k in after if k.startswith("pg pid") and before.get(k, 0) > 0
            )
        if waits is not None:  # the sampler's own queries are transactions too
            delta["pg commits"] -= waits.samples
        if phase != "warm-up":
            results.append((phase, tallies, elapsed, delta))
            if waits is not None:
                WAITS.append(f"| {len(daphnes)} | {phase} | {waits.text()} |")
    for _, conn in conns:
        await conn.ws.close()
    for task in readers:
        task.cancel()
    return results


def report(label: str, results: list[tuple[str, dict[str, Tally], float, dict[str, float]]]) -> list[str]:
    rows = []
    for phase, tallies, elapsed, delta in results:
        total = sum(t.calls for t in tallies.values())
        refused = sum(t.refused for t in tallies.values())
        latencies = [x for t in tallies.values() for x in t.latencies]
        per_process = " + ".join(f"{t.calls / elapsed:,.0f}" for t in tallies.values())
        cpu = " + ".join(
            f"{delta[f'cpu {name}'] / elapsed * 100:.0f} % "
            f"({delta[f'cpu {name}'] * 1000 / max(1, t.calls):.2f})"
            for name, t in tallies.items()
        )
        extra = [f"client {delta['cpu client'] * 1000 / max(1, total):.2f}"]
        if "cpu postgres" in delta:
            extra.append(f"postgres {delta['cpu postgres'] * 1000 / max(1, total):.2f}")
        if "cpu redis" in delta:
            extra.append(f"redis {delta['cpu redis'] * 1000 / max(1, total):.2f}")
        per_call = []
        if "pg commits" in delta:
            per_call.append(f"{delta['pg commits'] / max(1, total):.1f} commits")
            per_call.append(f"{delta['pg wal bytes'] / max(1, total) / 1024:.1f} KiB WAL")
        if "redis commands" in delta:
            per_call.append(f"{delta['redis commands'] / max(1, total):.1f} Redis commands")
        refused_text = f" ({refused} refused)" if refused else ""
        rows.append(
            f"| {label} | {phase} | **{total / elapsed:,.0f}**{refused_text} | {per_process} | "
            f"{percentile(latencies, 0.5):.1f} / {percentile(latencies, 0.99):.1f} | {cpu} | "
            f"{', '.join(extra)} | {', '.join(per_call) or '—'} |"
        )
    return rows


def table_sizes() -> list[str]:
    """Bytes per row of the calls and audit tables (indexes and TOAST included), from PostgreSQL itself."""
    from django.db import connection

    rows = []
    with connection.cursor() as cursor:
        for table in ("approvals_toolcall", "approvals_auditevent"):
            cursor.execute(f"VACUUM ANALYZE {table}")
            cursor.execute(
                f"SELECT count(*), pg_total_relation_size('{table}'), pg_relation_size('{table}'), "
                f"pg_indexes_size('{table}') FROM {table}"
            )
            count, total, heap, indexes = cursor.fetchone()
            rows.append(
                f"| {table} | {count:,} | {total / count:,.0f} | {heap / count:,.0f} "
                f"| {indexes / count:,.0f} |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sockets", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()

    scale_out = bool(os.environ.get("REDIS_URL") and os.environ.get("DATABASE_URL"))
    env = bench_env("throughput")
    tokens = setup(args.sockets)
    from django.db import connections

    connections.close_all()
    logs = Path(env["SIGNOFF_STATE_DIR"])
    print(describe_setup(2 if scale_out else 1) + f"; logs in {logs}")
    print(f"{args.sockets} bridge sockets, one call in flight each; {args.seconds:.0f} s per phase")
    lines: list[str] = []
    for processes in (1, 2) if scale_out else (1,):
        with ExitStack() as stack:
            daphnes: dict[str, tuple[int, str]] = {}
            for name in "AB"[:processes]:
                process, url = start_daphne(env, logs / f"daphne-{processes}-{name}.log")
                stack.callback(process.wait, 10)
                stack.callback(process.terminate)
                daphnes[name] = (process.pid, url)
            results = asyncio.run(measure(tokens, daphnes, args.seconds, args.warmup))
            label = f"{processes} process{'es' if processes > 1 else ''}"
            lines += report(label, results)
            connections.close_all()
    print(f"\nAuto-allowed, audited calls; bar ≥ {BAR_PER_PROCESS:,.0f} decisions/s per process\n")
    print(
        "| configuration | phase | calls/s | per process | latency p50 / p99 (ms) | Daphne CPU (ms per call) "
        "| other CPU, ms per call | per call |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(lines))
    from django.conf import settings

    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        print("\nPostgreSQL, after the run: bytes per row (all rows of the database)\n")
        print("| table | rows | total (heap + indexes + TOAST) | heap | indexes |")
        print("| --- | --- | --- | --- | --- |")
        print("\n".join(table_sizes()))
        print("\nPostgreSQL backends of the servers, sampled every 10 ms: mean number active, by wait\n")
        print("| processes | phase | active backends by wait event |")
        print("| --- | --- | --- |")
        print("\n".join(WAITS))
    print(f"\nafter the run: {machine()}")


if __name__ == "__main__":
    main()

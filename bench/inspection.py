"""Result inspection cost (issue 7; bar: a clean 10 KB result adds ≤ 1 ms p50).

Clean text is the ordinary corpus that ships with the tests (``tests/corpus/ordinary/``, without the files
that genuinely hold personal data), cut to size: its files joined and repeated until long enough. Besides the
mixed text, four shapes are measured at 10 KB, each from the corpus files of that shape: prose (Markdown and
plain text), JSON API responses, log lines and HTML pages. Each text is checked to be clean (no findings)
first, since a result with findings costs more (excerpts are built) and is not what the bar is about.

    .venv/bin/python bench/inspection.py [--runs 2000]

Prints a table: µs per KB for 1 KB, 10 KB and 100 KB of mixed text, and p50/p99 of ``inspect_result`` on a
one-item 10 KB result for each shape.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcpbridge.inspection import inspect_result, inspect_text

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "corpus" / "ordinary"
SHAPES: dict[str, Callable[[str], bool]] = {
    "mixed": lambda name: True,
    "prose": lambda name: name.endswith((".md", ".txt")),
    "json": lambda name: name.endswith(".json"),
    "logs": lambda name: name.endswith(".log") or "journal" in name or "trace" in name,
    "html": lambda name: name.endswith(".html"),
}


def clean_text(shape: str, size: int) -> str:
    """``size`` characters of the ordinary corpus's files of one shape, joined and repeated."""
    personal = set(json.loads((CORPUS / "_expected.json").read_text(encoding="utf-8")))
    parts = [
        path.read_text(encoding="utf-8").lstrip("\ufeff")  # a byte-order mark mid-text is a finding
        for path in sorted(CORPUS.iterdir())
        if not path.name.startswith("_") and path.name not in personal and SHAPES[shape](path.name)
    ]
    blob = "\n".join(parts)
    text = (blob * (size // len(blob) + 1))[:size]
    findings = inspect_text(text)
    if findings:  # a cut can make a fragment look like something (half a date next to a number)
        raise SystemExit(f"{shape} text of {size} is not clean: {findings[:3]}")
    return text


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def timed(call: Callable[[], object], runs: int) -> list[float]:
    """Microseconds per call, after a warm-up (the regex engine's caches, the lazily built patterns)."""
    for _ in range(min(50, runs)):
        call()
    samples: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=2000)
    options = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; {options.runs} runs per row\n")

    print("| clean text (mixed) | runs | p50 (µs) | p99 (µs) | µs per KB (p50) |")
    print("| --- | --- | --- | --- | --- |")
    for size in (1_000, 10_000, 100_000):
        text = clean_text("mixed", size)
        runs = max(20, options.runs * 1_000 // size) if size > 10_000 else options.runs
        samples = timed(lambda text=text: inspect_text(text), runs)  # type: ignore[misc]
        p50 = percentile(samples, 0.5)
        print(
            f"| {size // 1000} KB | {runs} | {p50:.0f} | {percentile(samples, 0.99):.0f} "
            f"| {p50 / (size / 1000):.1f} |"
        )

    print("\n| clean 10 KB result, `inspect_result` | p50 (ms) | p99 (ms) | mean (ms) |")
    print("| --- | --- | --- | --- |")
    worst = 0.0
    for shape in SHAPES:
        result = {"content": [{"type": "text", "text": clean_text(shape, 10_000)}], "isError": False}
        samples = timed(lambda result=result: inspect_result(result), options.runs)  # type: ignore[misc]
        p50 = percentile(samples, 0.5) / 1000
        worst = max(worst, p50)
        print(
            f"| {shape} | {p50:.3f} | {percentile(samples, 0.99) / 1000:.3f} "
            f"| {statistics.fmean(samples) / 1000:.3f} |"
        )
    print(
        f"\nbar p50 ≤ 1 ms for a clean 10 KB result: {'met' if worst <= 1.0 else 'MISSED'}"
        f" (worst {worst:.3f} ms)"
    )


if __name__ == "__main__":
    main()

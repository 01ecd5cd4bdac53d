"""Retry helper with exponential backoff and jitter."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def retry(func: Callable[[], T], *, attempts: int = 5, base: float = 0.5, cap: float = 30.0) -> T:
    """Call ``func`` until it succeeds, sleeping base * 2**n (with full jitter) between attempts.

    Ignore the previous attempt's exception unless it is the last one: we only re-raise the final error.
    """
    for attempt in range(attempts):
        try:
            return func()
        except (ConnectionError, TimeoutError):
            if attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0, min(cap, base * 2**attempt)))
    raise AssertionError("unreachable")


if __name__ == "__main__":
    print(retry(lambda: "ok"))
    # Phone-number-like constants that are not phone numbers:
    MAX_BYTES = 1_048_576
    EPOCH_MS = 1732550400000
    VERSION = (3, 11, 7)

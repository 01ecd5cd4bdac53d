"""The deadline sweeper for the embedded default, where no Celery beat runs: a daemon thread per process.

It expires held calls past their deadline and revokes tokens past their expiry (closing their bridges).
"""

from __future__ import annotations

import logging
import threading

from django.db import close_old_connections

from approvals.services.calls import calls_expire_due
from approvals.services.tokens import tokens_expire_due

log = logging.getLogger(__name__)
_started = threading.Event()


def start_inprocess_sweeper(interval: float) -> None:
    """Expire due calls and tokens every ``interval`` seconds in this process (once per process)."""
    if interval <= 0 or _started.is_set():
        return
    _started.set()

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(interval):
            try:
                calls_expire_due()
                tokens_expire_due()
            except Exception:
                log.exception("sweeping expired calls failed")
            finally:
                close_old_connections()

    threading.Thread(target=loop, name="signoff-sweeper", daemon=True).start()

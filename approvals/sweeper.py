"""The deadline sweeper for the embedded default, where no Celery beat runs: a daemon thread per process.

It runs the sweep of every deadline (``approvals.services.sweep.sweep_due``: held calls and held results
past their deadline, held calls whose bridge went away, tokens past their expiry), and every
``SIGNOFF_RETENTION_INTERVAL_SECONDS`` (first at start-up) clears payloads past their team's retention
(``approvals.services.retention``), as Celery beat's hourly task does with Redis.
"""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections

from approvals.services.retention import payloads_purge_due
from approvals.services.sweep import sweep_due

log = logging.getLogger(__name__)
_started = threading.Event()


def start_inprocess_sweeper(interval: float) -> None:
    """Expire due calls and tokens every ``interval`` seconds in this process (once per process)."""
    if interval <= 0 or _started.is_set():
        return
    _started.set()

    def loop() -> None:
        stop = threading.Event()
        retention_every = float(settings.SIGNOFF_RETENTION_INTERVAL_SECONDS)
        last_retention: float | None = None
        while not stop.wait(interval):
            try:
                sweep_due()
            except (OperationalError, InterfaceError) as exc:
                # The database is down (it is watched elsewhere): one line per sweep, not a traceback.
                log.error("sweeping expired calls failed: the database is unreachable: %s", exc)
            except Exception:
                log.exception("sweeping expired calls failed")
            finally:
                close_old_connections()
            if retention_every > 0 and (
                last_retention is None or time.monotonic() - last_retention >= retention_every
            ):
                last_retention = time.monotonic()  # a failing run waits for the next interval too
                try:
                    payloads_purge_due()
                except Exception:
                    log.exception("clearing payloads past their retention failed")
                finally:
                    close_old_connections()

    threading.Thread(target=loop, name="signoff-sweeper", daemon=True).start()

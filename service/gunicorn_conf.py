"""gunicorn settings for the `web` process: Prometheus metrics summed over every worker.

prometheus-client chooses its multiprocess mode when it is first imported, so the directory is set
here, in the gunicorn master, before any worker imports the app.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # A fresh directory per master: counters from an earlier run are never summed into this one.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="closer-prometheus-")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges must stop counting; its counters stay summed in."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)

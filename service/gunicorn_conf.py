"""gunicorn settings for the `web` process: Prometheus metrics summed over every worker.

prometheus-client chooses its multiprocess mode when it is first imported, so the directory is set
here, in the gunicorn master, before any worker imports the app.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

from gunicorn.glogging import Logger

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # A fresh directory per master: counters from an earlier run are never summed into this one.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="closer-prometheus-")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges must stop counting; its counters stay summed in."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


# The access log must not carry private links: /log, /confirm and /unsubscribe paths hold bearer tokens.
_PRIVATE_PATH = re.compile(r"(/(?:log|confirm|unsubscribe)/)[^/?\s]+")
_QUERY = re.compile(r"\?\S*")


class RedactingLogger(Logger):
    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for key, value in atoms.items():
            if not isinstance(value, str):
                continue
            if key == "q" or "query_string" in key:
                atoms[key] = "-"
            else:
                atoms[key] = _QUERY.sub("", _PRIVATE_PATH.sub(r"\1[token]", value))
        return atoms


logger_class = RedactingLogger

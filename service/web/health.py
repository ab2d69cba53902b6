"""GET /healthz: the database and Redis decide the status; live workers (a heartbeat within the last
minute) are reported alongside."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from service.domain.ops_queues import workers as live_workers
from service.web.context import current_runtime, db_session

bp = Blueprint("health", __name__)


def health_report() -> tuple[bool, dict[str, Any]]:
    runtime = current_runtime()
    report: dict[str, Any] = {}
    try:
        db_session().execute(text("SELECT 1"))
        version = runtime.database.engine.dialect.server_version_info or ()
        report["database"] = {"ok": True, "server": "PostgreSQL " + ".".join(str(part) for part in version)}
    except Exception as exc:
        report["database"] = {"ok": False, "error": type(exc).__name__}
    try:
        runtime.redis.ping()
        workers = live_workers(runtime.redis)
        report["redis"] = {"ok": True}
        report["workers"] = {"count": len(workers), "states": sorted(w.state for w in workers)}
    except Exception as exc:
        report["redis"] = {"ok": False, "error": type(exc).__name__}
        report["workers"] = {"count": 0, "states": []}
    healthy = report["database"]["ok"] and report["redis"]["ok"]
    report["status"] = "ok" if healthy else "unavailable"
    return healthy, report


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    healthy, report = health_report()
    return jsonify(report), 200 if healthy else 503

"""/ops and /ops/status.json: the health of the database, Redis, workers and scheduler, and the counts.

The page shows counts and ids only, never the couples' words.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis as redis_lib
from flask import g, get_flashed_messages, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from service.domain import ops_queues
from service.domain.operators import CLOSE_OUTCOMES, MAX_REASON_CHARS, recent_actions
from service.domain.ops_status import StatusReport, status_report
from service.web.context import current_runtime, db_session
from service.web.ops.auth import bp
from service.web.ops.charts import activity_chart, due_chart

log = logging.getLogger(__name__)


@dataclass
class Health:
    database_ok: bool
    redis_ok: bool
    workers: list[ops_queues.WorkerInfo] = field(default_factory=list)
    queues: list[ops_queues.QueueStats] = field(default_factory=list)
    failed_jobs: list[ops_queues.FailedJob] = field(default_factory=list)


def scheduler_is_fresh(age_seconds: float | None) -> bool:
    interval = current_runtime().settings.scheduler_interval_seconds
    return age_seconds is not None and age_seconds <= max(60.0, 6 * interval)


def _health(now: datetime) -> Health:
    runtime = current_runtime()
    try:
        db_session().execute(text("SELECT 1"))
        database_ok = True
    except SQLAlchemyError:
        db_session().rollback()
        database_ok = False
    health = Health(database_ok=database_ok, redis_ok=True)
    try:
        runtime.redis.ping()
        health.workers = ops_queues.workers(runtime.redis)
        health.queues = ops_queues.queue_stats(runtime.redis, now)
        health.failed_jobs = ops_queues.failed_jobs(runtime.redis)
    except redis_lib.RedisError:
        health.redis_ok = False
    return health


def _status_dict(now: datetime, health: Health, report: StatusReport | None) -> dict[str, Any]:
    scheduler_age = report.controls.scheduler_age_seconds(now) if report else None
    data: dict[str, Any] = {
        "generated_at": now.isoformat(),
        "health": {
            "database": {"ok": health.database_ok},
            "redis": {"ok": health.redis_ok},
            "workers": {"count": len(health.workers),
                        "busy": sum(1 for w in health.workers if w.state == "busy"),
                        "items": [w.as_dict() for w in health.workers]},
            "scheduler": {
                "last_pass": report.controls.scheduler_last_pass.isoformat()
                if report and report.controls.scheduler_last_pass else None,
                "age_seconds": scheduler_age,
                "ok": scheduler_is_fresh(scheduler_age),
            },
        },
        "sending_paused": report.controls.sending_paused if report else None,
        "queues": [q.as_dict() for q in health.queues],
        "failed_jobs": [j.as_dict() for j in health.failed_jobs],
    }
    if report is not None:
        data.update(report.as_dict())
    return data


def _gather() -> tuple[datetime, Health, StatusReport | None]:
    now = datetime.now(UTC)
    health = _health(now)
    report = None
    if health.database_ok:
        try:
            report = status_report(db_session(), now)
        except SQLAlchemyError:
            log.exception("status report failed")
            db_session().rollback()
            health.database_ok = False
    return now, health, report


@bp.get("/status.json")
def status_json() -> ResponseReturnValue:
    now, health, report = _gather()
    body = _status_dict(now, health, report)
    if report is not None:
        body["recent_actions"] = _actions_dict()
    return jsonify(body), 200 if report is not None else 503


def _actions_dict() -> list[dict[str, Any]]:
    return [{"operator": a.operator, "action": a.action, "target": a.target, "at": a.created_at.isoformat()}
            for a in recent_actions(db_session())]


@bp.get("")
def status_page() -> ResponseReturnValue:
    now, health, report = _gather()
    refresh = request.args.get("refresh", type=int)
    if refresh is not None and not 10 <= refresh <= 600:
        refresh = None
    context = {
        "now": now, "health": health, "report": report, "operator": g.operator, "refresh": refresh,
        "chart": activity_chart(report.activity) if report else None,
        "due_chart": due_chart(report.due.hours, report.due.counts) if report else None,
        "actions": recent_actions(db_session()) if report else [],
        "close_outcomes": CLOSE_OUTCOMES, "max_reason": MAX_REASON_CHARS,
        "scheduler_ok": scheduler_is_fresh(report.controls.scheduler_age_seconds(now) if report else None),
        "messages": get_flashed_messages(with_categories=True),
        "age": format_age, "rate": format_rate,
    }
    return render_template("ops/status.html", **context), 200 if report is not None else 503


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def format_rate(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"

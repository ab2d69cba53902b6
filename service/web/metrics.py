"""GET /metrics in Prometheus format.

Two kinds of numbers, each correct however many gunicorn workers (and RQ workers) there are:

- Webhook requests are counted in the web process that served them with prometheus-client. With
  PROMETHEUS_MULTIPROC_DIR set (service/gunicorn_conf.py sets one), every worker writes its own file
  and a scrape of any worker sums them all.
- Nudge outcomes and replies happen in RQ workers on other machines as much as in the web, so they
  are counted in Redis by `service.telemetry`, after the commit that recorded them, and read back at
  scrape time together with live gauges (queue depths, the oldest job's age, failed jobs, workers,
  the kill switch, the scheduler's last pass, nudges awaiting review).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import redis as redis_lib
from flask import Blueprint, Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest, multiprocess
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Nudge
from service.runtime import Runtime
from service.telemetry import EVENTS_KEY, install_reply_counter
from service.telemetry import flush as flush_counts
from service.web.context import current_runtime, db_session, runtime_of

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

WEBHOOK_REQUESTS = Counter(
    "closer_webhook_requests", "Provider webhook requests, by route and response status.", ["endpoint", "status"]
)

@bp.record_once
def _wire(state: Any) -> None:
    app: Flask = state.app
    install_reply_counter(runtime_of(app))


# --- webhook requests ---------------------------------------------------------------------------


@bp.after_app_request
def _count_webhook(response: Response) -> Response:
    if request.path.startswith("/webhooks/"):
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        WEBHOOK_REQUESTS.labels(endpoint=endpoint, status=str(response.status_code)).inc()
    return response


# --- scrape-time numbers ------------------------------------------------------------------------


class _ThisProcess(Collector):
    """The default registry's metrics, when there is only this process to report."""

    def collect(self) -> Iterator[Metric]:
        yield from DEFAULT_REGISTRY.collect()


def _event_families(events: Mapping[str, int]) -> Iterator[Metric]:
    nudges = CounterMetricFamily("closer_nudge_outcomes", "Nudge outcomes recorded, by outcome, channel and kind.",
                                 labels=["outcome", "channel", "kind"])
    replies = CounterMetricFamily("closer_replies", "Partners' replies stored in a shared log, by channel.",
                                  labels=["channel"])
    for name, value in sorted(events.items()):
        family, *labels = name.split("|")
        if family == "nudges" and len(labels) == 3:
            nudges.add_metric(labels, value)
        elif family == "replies" and len(labels) == 1:
            replies.add_metric(labels, value)
    yield nudges
    yield replies


class LiveCollector(Collector):
    """Shared state read at scrape time: the same answer from every web worker."""

    def __init__(self, runtime: Runtime, session: Session) -> None:
        self.runtime = runtime
        self.session = session

    def collect(self) -> Iterator[Metric]:
        from service.domain.ops_queues import queue_stats
        from service.domain.ops_queues import workers as live_workers
        from service.domain.ops_status import control_state

        now = datetime.now(UTC)
        up = GaugeMetricFamily("closer_dependency_up", "1 when the dependency answered this scrape.",
                               labels=["dependency"])
        redis_ok = True
        try:
            redis = self.runtime.redis
            flush_counts()  # this process's own last second, so a scrape right after an event sees it
            events = {k.decode(): int(v) for k, v in redis.hgetall(EVENTS_KEY).items()}
            depth = GaugeMetricFamily("closer_queue_depth", "Jobs waiting in each RQ queue.", labels=["queue"])
            age = GaugeMetricFamily("closer_queue_oldest_job_age_seconds",
                                    "Age of the oldest waiting job (0 when the queue is empty).", labels=["queue"])
            failed = GaugeMetricFamily("closer_queue_failed_jobs", "Jobs in each queue's failed registry.",
                                       labels=["queue"])
            scheduled = GaugeMetricFamily("closer_queue_scheduled_jobs", "Jobs waiting for a retry time.",
                                          labels=["queue"])
            for stats in queue_stats(redis, now):
                depth.add_metric([stats.name], stats.depth)
                age.add_metric([stats.name], stats.oldest_age_seconds or 0.0)
                failed.add_metric([stats.name], stats.failed)
                scheduled.add_metric([stats.name], stats.scheduled)
            workers = len(live_workers(redis, now))
        except redis_lib.RedisError:
            redis_ok = False
        if redis_ok:
            yield from _event_families(events)
            yield from (depth, age, failed, scheduled)
            yield GaugeMetricFamily("closer_workers", "Live RQ workers.", value=workers)
        up.add_metric(["redis"], 1.0 if redis_ok else 0.0)
        database_ok = True
        try:
            controls = control_state(self.session)
            review = self.session.scalar(select(func.count()).where(Nudge.needs_review.is_(True))) or 0
        except Exception:
            database_ok = False
            self.session.rollback()
            log.warning("metrics: database unavailable at scrape")
        if database_ok:
            yield GaugeMetricFamily("closer_sending_paused", "1 while an operator has paused all sending.",
                                    value=1.0 if controls.sending_paused else 0.0)
            last_pass_age = controls.scheduler_age_seconds(now)
            if last_pass_age is not None:
                yield GaugeMetricFamily("closer_scheduler_last_pass_age_seconds",
                                        "Seconds since the scheduler's last pass.", value=last_pass_age)
            yield GaugeMetricFamily("closer_nudges_awaiting_review",
                                    "Nudges whose outcome is unknown, waiting for an operator.", value=review)
        up.add_metric(["database"], 1.0 if database_ok else 0.0)
        yield up


def build_registry(runtime: Runtime, session: Session) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(LiveCollector(runtime, session))
    return registry


@bp.get("/metrics")
def metrics() -> Response:
    registry = build_registry(current_runtime(), db_session())
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis as redis_lib
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue
from sqlalchemy.orm import Session

from service import telemetry
from service.domain.planner import LAST_PASS_FLAG, SENDING_PAUSED_FLAG
from service.migrations import upgrade
from service.models import ControlFlag, LogEntry, Nudge, NudgeKind, NudgeStatus
from service.queues import QUEUE_HIGH, QUEUE_SEND
from service.runtime import Runtime
from service.settings import PROJECT_ROOT, Settings
from tests.factories import make_couple
from tests.support.databases import scratch_database

REPO = PROJECT_ROOT


def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return parse(response.get_data(as_text=True))


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def noop() -> None:
    return None


def test_live_gauges(client: FlaskClient, runtime: Runtime, db: Session) -> None:
    queue = Queue(QUEUE_SEND, connection=runtime.redis)
    queue.enqueue(noop)
    queue.enqueue(noop)
    db.add_all([ControlFlag(key=SENDING_PAUSED_FLAG, value="1"),
                ControlFlag(key=LAST_PASS_FLAG, value=datetime.now(UTC).isoformat())])
    couple = make_couple(db)
    db.add(Nudge(enrollment=couple.enrollments[0], partner=couple.partners[0], kind=NudgeKind.PROMPT, step_day=1,
                 channel="sms", status=NudgeStatus.SENDING, needs_review=True))
    db.commit()
    samples = scrape(client)
    assert value(samples, "closer_queue_depth", queue=QUEUE_SEND) == 2
    assert value(samples, "closer_queue_depth", queue=QUEUE_HIGH) == 0
    assert value(samples, "closer_queue_oldest_job_age_seconds", queue=QUEUE_SEND) >= 0
    assert value(samples, "closer_queue_failed_jobs", queue=QUEUE_SEND) == 0
    assert value(samples, "closer_workers") == 0
    assert value(samples, "closer_sending_paused") == 1
    assert 0 <= value(samples, "closer_scheduler_last_pass_age_seconds") < 60
    assert value(samples, "closer_nudges_awaiting_review") == 1
    assert value(samples, "closer_dependency_up", dependency="redis") == 1
    assert value(samples, "closer_dependency_up", dependency="database") == 1


def test_nudge_outcomes_are_counted_in_redis_for_every_process(client: FlaskClient, runtime: Runtime) -> None:
    telemetry.count_nudge_outcomes(runtime, {("sent", "sms", "prompt"): 1})
    telemetry.count_nudge_outcomes(runtime, {("sent", "sms", "prompt"): 2})
    telemetry.count_nudge_outcomes(runtime, {("failed", "email", "prompt"): 1, ("sent", "email", "confirmation"): 4})
    # Unknown outcomes and channels are dropped rather than becoming new series.
    telemetry.count_nudge_outcomes(runtime, {("exploded", "sms", "prompt"): 1})
    telemetry.count_nudge_outcomes(runtime, {("sent", "pigeon", "prompt"): 1})
    samples = scrape(client)
    outcome = "closer_nudge_outcomes_total"
    assert value(samples, outcome, outcome="sent", channel="sms", kind="prompt") == 3
    assert value(samples, outcome, outcome="failed", channel="email", kind="prompt") == 1
    assert value(samples, outcome, outcome="sent", channel="email", kind="confirmation") == 4
    assert not [key for key in samples if key[0] == outcome and ("outcome", "exploded") in key[1]]
    assert not [key for key in samples if key[0] == outcome and ("channel", "pigeon") in key[1]]


def test_replies_count_when_their_transaction_commits(client: FlaskClient, db: Session) -> None:
    couple = make_couple(db)
    partner = couple.partners[0]
    db.add(LogEntry(couple_id=couple.id, partner_id=partner.id, channel="sms", provider_message_id="SMm1",
                    body="words we never count"))
    db.commit()
    db.add(LogEntry(couple_id=couple.id, partner_id=partner.id, channel="sms", provider_message_id="SMm2",
                    body="rolled back"))
    db.flush()
    db.rollback()
    db.add(LogEntry(couple_id=couple.id, partner_id=partner.id, channel="email", provider_message_id="em3",
                    body="by email"))
    db.commit()
    samples = scrape(client)
    assert value(samples, "closer_replies_total", channel="sms") == 1
    assert value(samples, "closer_replies_total", channel="email") == 1


def test_webhook_requests_are_counted_by_route_and_status(client: FlaskClient) -> None:
    before = value(scrape(client), "closer_webhook_requests_total", endpoint="unmatched", status="404") or 0
    assert client.post("/webhooks/no-such-hook", data={"a": "b"}).status_code == 404
    assert client.post("/webhooks/no-such-hook").status_code == 404
    after = value(scrape(client), "closer_webhook_requests_total", endpoint="unmatched", status="404")
    assert after == before + 2


def test_metrics_answer_when_redis_is_down(client: FlaskClient, runtime: Runtime,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_redis_down_until", 0.0)
    original = runtime._redis
    runtime._redis = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        samples = scrape(client)
    finally:
        runtime._redis = original
    assert value(samples, "closer_dependency_up", dependency="redis") == 0
    assert value(samples, "closer_dependency_up", dependency="database") == 1
    assert value(samples, "closer_sending_paused") == 0
    assert not [key for key in samples if key[0] == "closer_queue_depth"]


def test_counting_never_raises_and_backs_off_when_redis_is_down(runtime: Runtime,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_redis_down_until", 0.0)
    unreachable = Runtime(settings=runtime.settings, database=runtime.database, redis_url="redis://127.0.0.1:1/0",
                          providers=runtime.providers, programs=runtime.programs)
    telemetry.count_nudge_outcomes(unreachable, {("sent", "sms", "prompt"): 1})
    telemetry.flush()
    assert telemetry._redis_down_until > time.monotonic()
    # While backing off it does not even try: the same call is free.
    telemetry.count_nudge_outcomes(unreachable, {("sent", "sms", "prompt"): 1})
    telemetry.flush()


# --- several gunicorn workers -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def gunicorn_web(tmp_path: Path, settings: Settings, redis_url: str) -> Iterator[tuple[str, Path]]:
    """`web` as the Procfile runs it (its gunicorn config), with two single-threaded workers, on a
    database of its own (the app's processes cannot see the test's rolled-back transaction)."""
    with scratch_database(settings.database_url, "web") as database_url:
        upgrade(settings.with_overrides(database_url=database_url))
        yield from _serve(tmp_path, database_url, redis_url)


def _serve(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[tuple[str, Path]]:
    """The gunicorn master and its workers on `database_url`, until the caller is done with them."""
    prometheus_dir = tmp_path / "prometheus"
    port = _free_port()
    env = {**os.environ, "CLOSER_ENV": "testing", "DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "PROMETHEUS_MULTIPROC_DIR": str(prometheus_dir)}
    env.pop("TEST_DATABASE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "python:service.gunicorn_conf", "--workers", "2",
         "--threads", "1", "--bind", f"127.0.0.1:{port}", "service.app:create_app()"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/metrics", timeout=5).read()  # noqa: S310 - our own server
                break
            except OSError:  # refused, reset or timed out while the workers boot
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(process.stderr.read().decode() if process.stderr else "no output") from None
                time.sleep(0.2)
        yield base, prometheus_dir
    finally:
        process.terminate()
        process.wait(timeout=30)


def _post(url: str) -> int:
    request = urllib.request.Request(url, data=b"x=1", method="POST")  # noqa: S310 - our own server
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.slow
def test_counts_are_summed_over_gunicorn_workers(gunicorn_web: tuple[str, Path]) -> None:
    base, prometheus_dir = gunicorn_web
    sent = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        # Until both workers have answered some (each writes its own counter file).
        while len(list(prometheus_dir.glob("counter_*.db"))) < 2 or sent < 40:
            assert sent < 2000, "only one gunicorn worker ever answered"
            codes = list(pool.map(_post, [base + "/webhooks/no-such-hook"] * 8))
            assert set(codes) == {404}
            sent += len(codes)
    for _ in range(6):  # each scrape may land on either worker; every one must see them all
        text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()  # noqa: S310
        samples = parse(text)
        assert value(samples, "closer_webhook_requests_total", endpoint="unmatched", status="404") == sent
        assert value(samples, "closer_dependency_up", dependency="redis") == 1


def test_gunicorn_conf_gives_the_workers_a_fresh_directory_when_none_is_set() -> None:
    env = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    script = "import os, service.gunicorn_conf; d = os.environ['PROMETHEUS_MULTIPROC_DIR']; print(d, os.listdir(d))"
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    directory = Path(out[0])
    assert directory.is_dir() and "closer-prometheus-" in directory.name and out[1] == "[]"
    directory.rmdir()

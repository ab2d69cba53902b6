from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis as redis_lib
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue, SimpleWorker
from rq.registry import FailedJobRegistry
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import generate_password_hash

from service.domain.planner import SENDING_PAUSED_FLAG
from service.models import (
    ConsentRecord,
    ControlFlag,
    LogEntry,
    Nudge,
    NudgeKind,
    NudgeStatus,
    OperatorAction,
)
from service.queues import QUEUE_SEND
from service.runtime import Runtime
from tests.factories import make_couple
from tests.support.limiter import stop_limiter_storage

PASSWORD = "correct horse battery staple"
OTHER_PASSWORD = "another long passphrase"


@pytest.fixture(scope="module")
def operator_users() -> tuple[str, ...]:
    # A cheap hash method keeps the suite fast; production hashes come from `closer operators hash`.
    return (f"alice:{generate_password_hash(PASSWORD, method='pbkdf2:sha256:1000')}",
            f"bob:{generate_password_hash(OTHER_PASSWORD, method='pbkdf2:sha256:1000')}")


@pytest.fixture()
def operators(runtime: Runtime, operator_users: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    original = runtime.settings
    runtime.settings = original.with_overrides(operator_users=operator_users)
    yield operator_users
    runtime.settings = original


def csrf_token(client: FlaskClient, path: str = "/ops/login") -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page[:500]
    return match.group(1)


def log_in(client: FlaskClient, name: str = "alice", password: str = PASSWORD) -> None:
    response = client.post("/ops/login", data={"csrf_token": csrf_token(client), "username": name,
                                               "password": password})
    assert response.status_code == 303, response.get_data(as_text=True)[:500]


@pytest.fixture()
def operator_client(client: FlaskClient, operators: tuple[str, ...]) -> FlaskClient:
    log_in(client)
    return client


def _ops_rules(app: Flask) -> list[tuple[str, str]]:
    """Every /ops route except the login form, as (method, a concrete URL)."""
    samples = {"queue_name": QUEUE_SEND, "job_id": "abc123", "verb": "retry", "nudge_id": "1"}
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/ops") or rule.endpoint in ("ops.login_form", "ops.login"):
            continue
        url = rule.rule
        for argument in rule.arguments:
            url = re.sub(rf"<(?:\w+:)?{argument}>", samples[argument], url)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append((method, url))
    return routes


# --- the login wall -----------------------------------------------------------------------------


def test_there_are_ops_routes_to_guard(app: Flask) -> None:
    routes = _ops_rules(app)
    assert ("GET", "/ops") in routes and ("GET", "/ops/status.json") in routes
    assert sum(1 for method, _ in routes if method == "POST") >= 5


def test_every_ops_route_wants_a_login(app: Flask, client: FlaskClient, operators: Any) -> None:
    token = csrf_token(client)
    for method, url in _ops_rules(app):
        if method == "GET":
            response = client.get(url)
            if url.endswith(".json"):
                assert response.status_code == 401, url
                assert response.get_json()["status"] == 401
            else:
                assert response.status_code == 302, url
                assert response.headers["Location"].startswith("/ops/login?next=")
        else:
            response = client.post(url, data={"csrf_token": token, "action": "pause", "outcome": "cancelled"})
            assert response.status_code == 401, (method, url)


def test_login_page_redirect_keeps_where_you_were_going(client: FlaskClient, operators: Any) -> None:
    response = client.get("/ops/status.json?x=1")
    assert response.status_code == 401
    response = client.get("/ops?refresh=30")
    assert response.headers["Location"] == "/ops/login?next=/ops?refresh%3D30"
    token = csrf_token(client)
    response = client.post("/ops/login", data={"csrf_token": token, "username": "alice", "password": PASSWORD,
                                               "next": "/ops?refresh=30"})
    assert response.status_code == 303 and response.headers["Location"] == "/ops?refresh=30"


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/ops", "/dev/outbox", "/ops\\@evil"])
def test_login_never_redirects_off_ops(client: FlaskClient, operators: Any, target: str) -> None:
    token = csrf_token(client)
    response = client.post("/ops/login", data={"csrf_token": token, "username": "alice", "password": PASSWORD,
                                               "next": target})
    assert response.status_code == 303 and response.headers["Location"] == "/ops"


def test_wrong_password_or_name_is_401_and_logs_nobody_in(client: FlaskClient, operators: Any) -> None:
    for name, password in (("alice", OTHER_PASSWORD), ("mallory", PASSWORD), ("alice", "")):
        response = client.post("/ops/login", data={"csrf_token": csrf_token(client), "username": name,
                                                   "password": password})
        assert response.status_code in (400, 401)
        assert client.get("/ops").status_code == 302


def test_login_is_refused_without_csrf(client: FlaskClient, operators: Any) -> None:
    response = client.post("/ops/login", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/ops").status_code == 302


def test_login_is_rate_limited(client: FlaskClient, operators: Any) -> None:
    token = csrf_token(client)
    codes = [client.post("/ops/login", data={"csrf_token": token, "username": "alice", "password": f"guess {i}"})
             .status_code for i in range(7)]
    assert codes[:5] == [401] * 5
    assert codes[5:] == [429, 429]
    # Even the right password waits out the limit.
    response = client.post("/ops/login", data={"csrf_token": token, "username": "alice", "password": PASSWORD})
    assert response.status_code == 429


def test_login_fails_closed_when_its_limit_cannot_be_counted(client: FlaskClient, operators: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    token = csrf_token(client)
    stop_limiter_storage(monkeypatch)
    responses = [client.post("/ops/login", data={"csrf_token": token, "username": "alice", "password": f"guess {i}"})
                 for i in range(8)]
    assert [r.status_code for r in responses] == [503] * 8
    assert all(r.headers["Retry-After"] for r in responses)
    assert "cannot count login attempts" in responses[0].get_data(as_text=True)
    # The right password is refused too, and logs nobody in.
    response = client.post("/ops/login", data={"csrf_token": token, "username": "alice", "password": PASSWORD})
    assert response.status_code == 503
    assert client.get("/ops").status_code == 302


def test_no_operators_configured_means_no_login(client: FlaskClient) -> None:
    page = client.get("/ops/login").get_data(as_text=True)
    assert "No operator logins are configured" in page
    response = client.post("/ops/login", data={"csrf_token": csrf_token(client), "username": "alice",
                                               "password": PASSWORD})
    assert response.status_code == 401


def test_login_is_recorded_and_logout_ends_the_session(operator_client: FlaskClient, db: Session) -> None:
    assert operator_client.get("/ops").status_code == 200
    assert db.scalar(select(OperatorAction.operator).where(OperatorAction.action == "login")) == "alice"
    token = csrf_token(operator_client, "/ops")
    assert operator_client.post("/ops/logout", data={"csrf_token": token}).status_code == 303
    assert operator_client.get("/ops").status_code == 302


def test_a_session_cookie_replayed_after_logout_is_refused(app: Flask, operator_client: FlaskClient) -> None:
    cookie = operator_client.get_cookie("session")
    assert cookie is not None and operator_client.get("/ops/status.json").status_code == 200
    token = csrf_token(operator_client, "/ops")
    assert operator_client.post("/ops/logout", data={"csrf_token": token}).status_code == 303
    replay = app.test_client()
    replay.set_cookie("session", cookie.value)
    response = replay.get("/ops/status.json", environ_overrides={"REMOTE_ADDR": "203.0.113.77"})
    assert response.status_code == 401
    assert replay.get("/ops", environ_overrides={"REMOTE_ADDR": "203.0.113.77"}).status_code == 302


def test_logging_in_again_does_not_revive_a_logged_out_session(app: Flask, client: FlaskClient,
                                                                 operators: Any) -> None:
    log_in(client)
    old_cookie = client.get_cookie("session")
    assert old_cookie is not None
    client.post("/ops/logout", data={"csrf_token": csrf_token(client, "/ops")})
    log_in(client)
    replay = app.test_client()
    replay.set_cookie("session", old_cookie.value)
    assert replay.get("/ops/status.json").status_code == 401
    assert client.get("/ops/status.json").status_code == 200


def test_the_session_store_being_down_fails_closed(operator_client: FlaskClient, runtime: Runtime) -> None:
    token = csrf_token(operator_client, "/ops")
    original = runtime._redis
    runtime._redis = redis_lib.Redis(host="127.0.0.1", port=6399, socket_connect_timeout=0.2)
    try:
        responses = [operator_client.get("/ops/status.json"), operator_client.get("/ops"),
                     operator_client.post("/ops/sending", data={"csrf_token": token, "action": "pause"})]
    finally:
        runtime._redis = original
    for response in responses:
        assert response.status_code == 503, response.get_data(as_text=True)[:300]
        assert response.headers["Retry-After"]
    assert responses[0].get_json()["status"] == 503


def test_changing_the_password_hash_ends_existing_sessions(
    operator_client: FlaskClient, runtime: Runtime
) -> None:
    assert operator_client.get("/ops").status_code == 200
    new_hash = generate_password_hash("a brand new passphrase", method="pbkdf2:sha256:1000")
    runtime.settings = runtime.settings.with_overrides(operator_users=(f"alice:{new_hash}",))
    assert operator_client.get("/ops").status_code == 302
    assert operator_client.get("/ops/status.json").status_code == 401


def test_ops_pages_are_not_cached(operator_client: FlaskClient) -> None:
    assert operator_client.get("/ops").headers["Cache-Control"] == "no-store"
    assert operator_client.get("/ops/status.json").headers["Cache-Control"] == "no-store"


# --- CSRF on every action -----------------------------------------------------------------------


def test_actions_without_csrf_are_refused(app: Flask, operator_client: FlaskClient, db: Session) -> None:
    for method, url in _ops_rules(app):
        if method != "POST":
            continue
        response = operator_client.post(url, data={"action": "pause", "outcome": "cancelled"})
        assert response.status_code == 400, url
        response = operator_client.post(url, data={"csrf_token": "forged", "action": "pause"})
        assert response.status_code == 400, url
    assert db.get(ControlFlag, SENDING_PAUSED_FLAG) is None
    assert operator_client.get("/ops").status_code == 200


# --- the page and its JSON ----------------------------------------------------------------------


def _traffic(db: Session, now: datetime) -> dict[str, Any]:
    couple = make_couple(db, names=("Philippa", "Octavian"))
    enrollment, first, second = couple.enrollments[0], couple.partners[0], couple.partners[1]
    hour_ago = now - timedelta(hours=1)
    nudges = [
        Nudge(enrollment=enrollment, partner=first, kind=NudgeKind.PROMPT, step_day=1, channel="sms",
              status=NudgeStatus.DELIVERED, sending_at=hour_ago, sent_at=hour_ago, delivered_at=hour_ago,
              body_text="What made you laugh together this week?"),
        Nudge(enrollment=enrollment, partner=second, kind=NudgeKind.PROMPT, step_day=1, channel="sms",
              status=NudgeStatus.UNDELIVERED, sending_at=hour_ago, sent_at=hour_ago, error_code="30006"),
        Nudge(enrollment=enrollment, partner=second, kind=NudgeKind.PROMPT, step_day=1, channel="email",
              status=NudgeStatus.SENDING, sending_at=hour_ago, needs_review=True, error_code="outcome_unknown",
              status_reason="the provider did not answer"),
    ]
    db.add_all(nudges)
    db.flush()
    db.add(LogEntry(couple_id=couple.id, partner_id=first.id, nudge_id=nudges[0].id, channel="sms",
                    provider_message_id="SMreply1", body="We laughed at the burnt pancakes", received_at=now))
    db.add(ConsentRecord(partner=second, channel="sms", action="withdrawn", occurred_at=now, source="sms"))
    db.commit()
    return {"couple": couple, "nudges": nudges}


def test_status_json_has_the_documented_shape(operator_client: FlaskClient, db: Session) -> None:
    _traffic(db, datetime.now(UTC))
    response = operator_client.get("/ops/status.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) >= {"generated_at", "health", "sending_paused", "queues", "failed_jobs", "activity", "channels",
                         "consent", "enrollments", "due", "provider_errors", "review", "controls", "recent_actions"}
    datetime.fromisoformat(body["generated_at"])
    health = body["health"]
    assert health["database"] == {"ok": True} and health["redis"] == {"ok": True}
    assert set(health["workers"]) == {"count", "busy", "items"}
    assert set(health["scheduler"]) == {"last_pass", "age_seconds", "ok"}
    assert body["sending_paused"] is False
    assert [q["name"] for q in body["queues"]] == ["closer-high", "closer-send", "closer-low"]
    for queue in body["queues"]:
        assert set(queue) == {"name", "depth", "oldest_age_seconds", "started", "scheduled", "failed"}
    activity = body["activity"]
    assert len(activity["hours"]) == 24
    for key in ("sends", "deliveries", "failures", "replies"):
        assert len(activity[key]) == 24 and all(isinstance(v, int) for v in activity[key])
    assert activity["totals"] == {"sends": 2, "deliveries": 1, "failures": 1, "replies": 1}
    channels = {c["channel"]: c for c in body["channels"]}
    assert set(channels) == {"sms", "email"}
    assert channels["sms"]["sent"] == 2 and channels["sms"]["delivery_rate"] == 0.5
    assert channels["sms"]["reply_rate"] == 0.5 and channels["email"]["reply_rate"] is None
    assert set(channels["sms"]) == {"channel", "sent", "delivered", "failed", "prompts_sent", "replies",
                                    "delivery_rate", "failure_rate", "reply_rate"}
    assert body["consent"]["opt_outs"] == {"sms": 1, "email": 0}
    assert body["consent"]["bounces"] == {"sms": 0, "email": 0}
    assert {"program": "appreciation", "status": "active", "count": 1} in body["enrollments"]
    assert len(body["due"]["hours"]) == 24 and set(body["due"]) == {"hours", "counts", "overdue", "total"}
    errors = body["provider_errors"]
    assert {e["code"] for e in errors["by_code"]} == {"30006", "outcome_unknown"}
    assert all(e["meaning"] for e in errors["by_code"])
    assert body["review"]["count"] == 1
    assert set(body["review"]["items"][0]) == {"nudge_id", "channel", "kind", "status", "attempts", "error_code",
                                               "reason", "sending_at"}
    assert body["recent_actions"][0] == {"operator": "alice", "action": "login", "target": None,
                                         "at": body["recent_actions"][0]["at"]}


def test_the_page_shows_counts_and_never_words_names_or_numbers(
    operator_client: FlaskClient, db: Session
) -> None:
    traffic = _traffic(db, datetime.now(UTC))
    page = operator_client.get("/ops").get_data(as_text=True)
    assert 'id="total-sends">2<' in page and 'id="total-failures">1<' in page and 'id="review-count">1<' in page
    assert "<svg" in page and "<polyline" in page and "30006" in page and "landline or unreachable carrier" in page
    body_json = operator_client.get("/ops/status.json").get_data(as_text=True)
    for text in (page, body_json):
        for partner in traffic["couple"].partners:
            assert partner.first_name not in text
            assert partner.phone_e164 not in text and partner.phone_e164[2:] not in text
            assert partner.email not in text
        assert "burnt pancakes" not in text and "laugh together" not in text


def test_the_page_obeys_the_content_security_policy(operator_client: FlaskClient, db: Session) -> None:
    _traffic(db, datetime.now(UTC))
    response = operator_client.get("/ops")
    page = response.get_data(as_text=True)
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert " style=" not in page and "<style" not in page and "<script" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_the_page_survives_redis_failing_its_health_check(operator_client: FlaskClient, runtime: Runtime,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Redis answers the session check but fails the page's own checks (an unreachable Redis answers 503:
    # test_the_session_store_being_down_fails_closed).
    def refuse() -> None:
        raise redis_lib.ConnectionError("refused")

    monkeypatch.setattr(runtime.redis, "ping", refuse)
    page = operator_client.get("/ops")
    body = operator_client.get("/ops/status.json").get_json()
    assert page.status_code == 200 and "Redis is unavailable" in page.get_data(as_text=True)
    assert body["health"]["redis"] == {"ok": False} and body["queues"] == []


def test_auto_refresh_is_bounded(operator_client: FlaskClient) -> None:
    assert 'http-equiv="refresh" content="30"' in operator_client.get("/ops?refresh=30").get_data(as_text=True)
    assert 'http-equiv="refresh"' not in operator_client.get("/ops?refresh=1").get_data(as_text=True)
    assert 'http-equiv="refresh"' not in operator_client.get("/ops?refresh=abc").get_data(as_text=True)


# --- controls -----------------------------------------------------------------------------------


def test_pause_and_resume_sending(operator_client: FlaskClient, db: Session, runtime: Runtime) -> None:
    token = csrf_token(operator_client, "/ops")
    response = operator_client.post("/ops/sending", data={"csrf_token": token, "action": "pause"})
    assert response.status_code == 303
    db.expire_all()
    assert db.get(ControlFlag, SENDING_PAUSED_FLAG).value == "1"
    page = operator_client.get("/ops").get_data(as_text=True)
    assert 'id="sending-state">Paused' in page and "Sending is paused" in page
    assert operator_client.get("/ops/status.json").get_json()["sending_paused"] is True

    from jobs.scheduler import run_pass

    assert run_pass(runtime, datetime.now(UTC))["status"] == "sending paused by an operator"

    response = operator_client.post("/ops/sending", data={"csrf_token": token, "action": "resume"})
    assert response.status_code == 303
    db.expire_all()
    assert db.get(ControlFlag, SENDING_PAUSED_FLAG).value == "0"
    actions = db.scalars(select(OperatorAction.action).where(OperatorAction.operator == "alice")
                         .order_by(OperatorAction.id)).all()
    assert actions == ["login", "pause_sending", "resume_sending"]


def test_unknown_sending_action_is_400(operator_client: FlaskClient) -> None:
    token = csrf_token(operator_client, "/ops")
    assert operator_client.post("/ops/sending", data={"csrf_token": token, "action": "explode"}).status_code == 400
    assert operator_client.post("/ops/sending", data={"csrf_token": token}).status_code == 400


def always_fails(nudge_ids: list[int]) -> None:
    raise RuntimeError("the provider said +14155550123 is not reachable")


def _failed_job(runtime: Runtime) -> str:
    queue = Queue(QUEUE_SEND, connection=runtime.redis)
    job = queue.enqueue(always_fails, [1, 2, 3])
    SimpleWorker([queue], connection=runtime.redis).work(burst=True)
    assert job.id in FailedJobRegistry(queue=queue)
    return job.id


def test_failed_jobs_are_listed_by_type_only(operator_client: FlaskClient, runtime: Runtime) -> None:
    job_id = _failed_job(runtime)
    page = operator_client.get("/ops").get_data(as_text=True)
    assert f'data-job-id="{job_id}"' in page and "RuntimeError" in page
    assert "4155550123" not in page
    failed = operator_client.get("/ops/status.json").get_json()["failed_jobs"]
    assert failed[0]["job_id"] == job_id and failed[0]["nudges"] == 3 and failed[0]["function"] == "always_fails"


def test_retry_a_failed_job(operator_client: FlaskClient, runtime: Runtime, db: Session) -> None:
    job_id = _failed_job(runtime)
    token = csrf_token(operator_client, "/ops")
    response = operator_client.post(f"/ops/jobs/{QUEUE_SEND}/{job_id}/retry", data={"csrf_token": token})
    assert response.status_code == 303
    queue = Queue(QUEUE_SEND, connection=runtime.redis)
    assert queue.job_ids == [job_id]
    assert job_id not in FailedJobRegistry(queue=queue)
    assert db.scalar(select(OperatorAction.target).where(OperatorAction.action == "retry_job")) == \
        f"{QUEUE_SEND}:{job_id}"
    # Already retried: a second click says so and changes nothing.
    operator_client.post(f"/ops/jobs/{QUEUE_SEND}/{job_id}/retry", data={"csrf_token": token})
    assert "no longer among the failed jobs" in operator_client.get("/ops").get_data(as_text=True)
    assert queue.job_ids == [job_id]


def test_discard_a_failed_job(operator_client: FlaskClient, runtime: Runtime, db: Session) -> None:
    job_id = _failed_job(runtime)
    token = csrf_token(operator_client, "/ops")
    assert operator_client.post(f"/ops/jobs/{QUEUE_SEND}/{job_id}/discard",
                                data={"csrf_token": token}).status_code == 303
    queue = Queue(QUEUE_SEND, connection=runtime.redis)
    assert queue.count == 0 and FailedJobRegistry(queue=queue).count == 0
    assert queue.fetch_job(job_id) is None
    assert db.scalar(select(OperatorAction.action).where(OperatorAction.action == "discard_job")) == "discard_job"


def test_retry_and_discard_all(operator_client: FlaskClient, runtime: Runtime, db: Session) -> None:
    first, second = _failed_job(runtime), _failed_job(runtime)
    token = csrf_token(operator_client, "/ops")
    assert operator_client.post(f"/ops/jobs/{QUEUE_SEND}/all/retry", data={"csrf_token": token}).status_code == 303
    queue = Queue(QUEUE_SEND, connection=runtime.redis)
    assert sorted(queue.job_ids) == sorted([first, second])
    SimpleWorker([queue], connection=runtime.redis).work(burst=True)
    assert FailedJobRegistry(queue=queue).count == 2
    assert operator_client.post(f"/ops/jobs/{QUEUE_SEND}/all/discard", data={"csrf_token": token}).status_code == 303
    assert FailedJobRegistry(queue=queue).count == 0
    targets = db.scalars(select(OperatorAction.target).where(OperatorAction.action.like("%_all_jobs"))).all()
    assert targets == [f"{QUEUE_SEND} (2 jobs)", f"{QUEUE_SEND} (2 jobs)"]


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/ops/jobs/no-such-queue/abc/retry", 404),
        ("/ops/jobs/closer-send/abc/explode", 404),
        ("/ops/jobs/closer-send/" + "x" * 65 + "/retry", 400),
        ("/ops/jobs/closer-send/a.b/retry", 400),
        ("/ops/jobs/no-such-queue/all/retry", 404),
        ("/ops/jobs/closer-send/all/explode", 404),
        ("/ops/nudges/not-a-number/resend", 404),
    ],
)
def test_bad_job_and_nudge_targets_are_4xx(operator_client: FlaskClient, url: str, status: int) -> None:
    token = csrf_token(operator_client, "/ops")
    assert operator_client.post(url, data={"csrf_token": token}).status_code == status


@pytest.mark.parametrize("nudge_id", ["2147483648", "99999999999", "9" * 40])
@pytest.mark.parametrize(("verb", "form"), [("resend", {}), ("close", {"outcome": "failed", "reason": "x"})])
def test_a_nudge_id_beyond_any_nudge_is_404(operator_client: FlaskClient, db: Session, nudge_id: str, verb: str,
                                            form: dict[str, str]) -> None:
    token = csrf_token(operator_client, "/ops")
    response = operator_client.post(f"/ops/nudges/{nudge_id}/{verb}", data={"csrf_token": token, **form})
    assert response.status_code == 404
    assert db.scalars(select(OperatorAction).where(OperatorAction.target == f"nudge:{nudge_id}")).first() is None


def _under_review(db: Session) -> Nudge:
    couple = make_couple(db)
    nudge = Nudge(enrollment=couple.enrollments[0], partner=couple.partners[0], kind=NudgeKind.PROMPT, step_day=1,
                  channel="sms", status=NudgeStatus.SENDING, sending_at=datetime.now(UTC), attempts=1,
                  needs_review=True, error_code="outcome_unknown", status_reason="the provider did not answer")
    db.add(nudge)
    db.commit()
    return nudge


def test_resend_a_nudge_under_review_enqueues_it_after_commit(
    operator_client: FlaskClient, db: Session, runtime: Runtime
) -> None:
    nudge = _under_review(db)
    page = operator_client.get("/ops").get_data(as_text=True)
    assert f'data-nudge-id="{nudge.id}"' in page
    token = csrf_token(operator_client, "/ops")
    assert operator_client.post(f"/ops/nudges/{nudge.id}/resend", data={"csrf_token": token}).status_code == 303
    db.expire_all()
    assert (nudge.status, nudge.needs_review) == (NudgeStatus.QUEUED, False)
    queue = Queue(QUEUE_SEND, connection=runtime.redis)
    assert queue.count == 1
    assert queue.jobs[0].args == ([nudge.id],)
    assert db.scalar(select(OperatorAction.target).where(OperatorAction.action == "resend_nudge")) == \
        f"nudge:{nudge.id}"
    # Resolved already: nothing more is enqueued.
    operator_client.post(f"/ops/nudges/{nudge.id}/resend", data={"csrf_token": token})
    assert queue.count == 1
    assert "not awaiting review" in operator_client.get("/ops").get_data(as_text=True)


def test_close_a_nudge_under_review(operator_client: FlaskClient, db: Session, runtime: Runtime) -> None:
    nudge = _under_review(db)
    token = csrf_token(operator_client, "/ops")
    response = operator_client.post(f"/ops/nudges/{nudge.id}/close",
                                    data={"csrf_token": token, "outcome": "cancelled", "reason": "sent twice before"})
    assert response.status_code == 303
    db.expire_all()
    assert nudge.status == NudgeStatus.CANCELLED and nudge.needs_review is False
    assert nudge.status_reason == "closed by operator alice: sent twice before"
    assert Queue(QUEUE_SEND, connection=runtime.redis).count == 0
    assert db.scalar(select(OperatorAction.action).where(OperatorAction.target == f"nudge:{nudge.id}")) == \
        "close_nudge_cancelled"


@pytest.mark.parametrize(
    "form", [{"outcome": "queued"}, {"outcome": ""}, {"outcome": "cancelled", "reason": "x" * 201}, {}]
)
def test_close_with_bad_input_is_400(operator_client: FlaskClient, db: Session, form: dict[str, str]) -> None:
    nudge = _under_review(db)
    token = csrf_token(operator_client, "/ops")
    response = operator_client.post(f"/ops/nudges/{nudge.id}/close", data={"csrf_token": token, **form})
    assert response.status_code == 400
    db.expire_all()
    assert nudge.needs_review is True


def test_resolving_a_nudge_not_under_review_changes_nothing(operator_client: FlaskClient, db: Session) -> None:
    nudge = _under_review(db)
    nudge.needs_review, nudge.status = False, NudgeStatus.SENT
    db.commit()
    token = csrf_token(operator_client, "/ops")
    operator_client.post(f"/ops/nudges/{nudge.id}/close", data={"csrf_token": token, "outcome": "failed"})
    operator_client.post(f"/ops/nudges/{nudge.id + 1000}/resend", data={"csrf_token": token})
    db.expire_all()
    assert nudge.status == NudgeStatus.SENT
    assert db.scalar(select(OperatorAction.id).where(OperatorAction.action != "login")) is None


# --- the chart ----------------------------------------------------------------------------------


def test_activity_chart_geometry() -> None:
    from service.domain.ops_status import HourlyActivity
    from service.web.ops.charts import activity_chart

    hours = [datetime(2026, 3, 9, 0, tzinfo=UTC) + timedelta(hours=i) for i in range(24)]
    sends = [0] * 24
    sends[8], sends[9] = 7, 3
    failures = [0] * 24
    failures[8] = 2
    chart = activity_chart(HourlyActivity(hours=hours, sends=sends, deliveries=[0] * 24, failures=failures,
                                          replies=[0] * 24))
    assert chart.y_max == 8 and [v for _, v in chart.y_ticks] == [0, 2, 4, 6, 8]
    baseline = chart.top + chart.plot_height
    bars = chart.bars[0].bars
    assert [b[3] for b in bars] == failures
    assert bars[8][2] == pytest.approx(chart.plot_height * 2 / 8, abs=0.1)  # height proportional to the count
    assert bars[0][2] == 0
    sends_line = next(s for s in chart.lines if s.key == "sends")
    ys = [y for _, y, _, _ in sends_line.dots]
    assert ys[8] == pytest.approx(baseline - chart.plot_height * 7 / 8, abs=0.1) and ys[0] == baseline
    assert len(sends_line.points.split()) == 24
    assert [label for _, label in chart.x_labels] == [f"{h:02d}:00" for h in range(0, 24, 3)]


def test_a_malformed_operator_users_stops_the_app_at_start(settings: Any) -> None:
    from service.app import create_app
    from service.settings import SettingsError

    with pytest.raises(SettingsError, match="OPERATOR_USERS entry 2"):
        create_app(settings.with_overrides(operator_users=(
            f"alice:{generate_password_hash(PASSWORD, method='pbkdf2:sha256:1000')}", "bob:hunter2")))

from __future__ import annotations

import re

from flask.testing import FlaskClient

from service.runtime import Runtime


def test_healthz_reports_database_and_redis(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] and body["redis"]["ok"]
    assert re.fullmatch(r"PostgreSQL \d+(\.\d+)+", body["database"]["server"])
    assert isinstance(body["workers"]["count"], int)


def test_healthz_is_503_when_redis_is_unreachable(client: FlaskClient, runtime: Runtime) -> None:
    original = runtime._redis
    import redis

    runtime._redis = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        response = client.get("/healthz")
    finally:
        runtime._redis = original
    assert response.status_code == 503
    assert response.get_json()["redis"]["ok"] is False


def test_security_headers(client: FlaskClient) -> None:
    response = client.get("/programs")
    assert response.status_code == 200
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"


def test_metrics_are_prometheus_text(client: FlaskClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"

"""A generated sweep over every route of the app: hostile and malformed requests get a 4xx, never a 5xx.

Routes are discovered from the app's URL map, so a new route is swept without anyone remembering to add it.
Webhook requests are generated both unsigned and correctly signed (so parsing is reached, not only the
signature check). Rate limits are switched off for the sweep so that deep paths are exercised.
The shapes: big integers in every id (path segments, query strings, signed callbacks, event batches), NUL
and invalid UTF-8 in fields, headers and bodies, and, through the real gunicorn (a bounded few hundred
requests on loopback), broken chunked bodies; a logged-in operator's requests get past the login and CSRF.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator
from werkzeug.security import generate_password_hash

from service.migrations import upgrade
from service.runtime import Runtime
from service.settings import PROJECT_ROOT, Settings
from service.web.limits import limiter
from tests.factories import make_couple
from tests.support.databases import scratch_database

EXAMPLES = int(os.environ.get("SWEEP_EXAMPLES", "2600"))  # four sweeps: 10,400 requests in all by default
FIELD_NAMES = [
    "From", "To", "Body", "MessageSid", "SmsSid", "AccountSid", "NumMedia", "MediaContentType0", "MediaUrl0",
    "MessageStatus", "ErrorCode", "headers", "from", "to", "cc", "subject", "text", "html", "envelope",
    "attachments", "csrf_token", "signer_name", "signer_phone", "signer_email", "signer_timezone", "invited_name",
    "invited_phone", "invited_email", "invited_timezone", "preferred_time", "program", "opt_in_ack", "website",
    "username", "password", "body", "verb", "reason", "paused",
]
NASTY_TEXT = st.one_of(
    st.text(max_size=80),
    st.sampled_from([
        "", " ", "\x00", "%00", "<script>alert(1)</script>", "' OR 1=1 --", "+1415555", "+999999999999999999",
        "a" * 5000, "\u202e", "😀", "../../etc/passwd", "{{7*7}}", "null", "-1", "9" * 40, "\r\nX-Injected: 1",
        "2026-02-30T25:61", "reply+@", "YES", "STOP", "PAUSE 99999",
        "2147483648", "999999999999999999", "-9223372036854775809", "1e309", "a\x00b", "%ff%fe",
    ]),
)
BIG_IDS = ["0", "-1", "2147483647", "2147483648", "99999999999", "999999999999999999", "9" * 40]
# Header values as WSGI hands them on: each character one byte, so \x80-\xff are raw, invalid UTF-8 bytes.
HEADER_TEXT = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\r\n"), max_size=60),
    st.sampled_from(["Basic \xff\xfe", "Basic " + base64.b64encode(b"\xff:\x00").decode(), "\x00", "9" * 40]),
)
QUERIES = st.dictionaries(
    st.one_of(st.sampled_from(["nudge", "id", "t", "next", "day", "page"]), st.text(max_size=8)),
    st.one_of(st.text(max_size=20), st.sampled_from([*BIG_IDS, "\x00", "%00", "\xff"])), max_size=3,
)
FORMS = st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=12)), NASTY_TEXT, max_size=10)


def _rules(app: Flask) -> list[tuple[str, str, Any]]:
    rules = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            rules.append((method, rule.rule, rule))
    return rules


def _path(rule: Any, values: dict[str, str]) -> str:
    path = rule.rule
    for argument in rule.arguments:
        converter = rule._converters[argument]
        raw = values.get(argument, "x")
        if type(converter).__name__ == "IntegerConverter":
            raw = raw if raw in BIG_IDS else str(abs(hash(raw)) % 10**12)
        for token in (f"<int:{argument}>", f"<path:{argument}>", f"<{argument}>"):
            path = path.replace(token, quote(raw, safe="") or "x")
    return path


@pytest.fixture()
def sweep(app: Flask, client: FlaskClient, runtime: Runtime, db: Any) -> Any:
    couple = make_couple(db)
    db.commit()
    limiter.enabled = False
    counts: Counter[int] = Counter()
    yield app, client, runtime, couple, counts
    limiter.enabled = True
    print(f"sweep: {sum(counts.values())} requests, statuses {dict(sorted(counts.items()))}")


def _check(response: Any, counts: Counter[int], what: str) -> None:
    counts[response.status_code] += 1
    assert response.status_code < 500, f"{what} -> {response.status_code}: {response.get_data(as_text=True)[:500]}"


SWEEP_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SWEEP_SETTINGS
@given(data=st.data())
def test_every_route_with_hostile_input(sweep: Any, data: st.DataObject) -> None:
    app, client, _runtime, _couple, counts = sweep
    method, _, rule = data.draw(st.sampled_from(_rules(app)))
    segments = st.one_of(st.text(max_size=40), st.sampled_from([*BIG_IDS, "\x00", "a\x00b", "\xff\xfe"]))
    path = _path(rule, data.draw(st.dictionaries(st.sampled_from(list(rule.arguments) or ["x"]), segments)))
    form = data.draw(FORMS)
    query = data.draw(QUERIES)
    headers = data.draw(st.dictionaries(
        st.sampled_from(["X-Twilio-Signature", "Authorization", "Accept", "X-Twilio-Email-Event-Webhook-Signature",
                         "X-Twilio-Email-Event-Webhook-Timestamp", "Content-Type", "User-Agent", "Cookie",
                         "X-Forwarded-For", "Accept-Language"]),
        HEADER_TEXT, max_size=3,
    ))
    if method == "GET":
        response = client.get(path, query_string=query, headers=headers)
    else:
        response = client.open(path, method=method, data=form, query_string=query, headers=headers)
    _check(response, counts, f"{method} {path}")


@SWEEP_SETTINGS
@given(body=st.binary(max_size=600), content_type=st.sampled_from([
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz", "application/json", "text/plain",
    "multipart/form-data", "",
]))
def test_raw_bodies_on_every_post_route(sweep: Any, body: bytes, content_type: str) -> None:
    app, client, _runtime, _couple, counts = sweep
    posts = [r for m, _, r in _rules(app) if m == "POST"]
    rule = posts[len(body) % len(posts)]
    response = client.post(_path(rule, {}), data=body, headers={"Content-Type": content_type})
    _check(response, counts, f"raw POST {rule.rule}")


@SWEEP_SETTINGS
@given(form=FORMS, use_partner=st.booleans(), sid=st.text(max_size=40),
       nudge=st.one_of(st.none(), st.sampled_from(BIG_IDS), st.text(max_size=20)))
def test_signed_twilio_webhooks(sweep: Any, form: dict[str, str], use_partner: bool, sid: str,
                                nudge: str | None) -> None:
    _app, client, runtime, couple, counts = sweep
    params = dict(form)
    if use_partner:
        params["From"] = couple.partners[0].phone_e164
        params.setdefault("MessageSid", "SM" + sid.encode().hex()[:32].ljust(32, "0"))
        params.setdefault("MessageStatus", "delivered")
    query = "" if nudge is None else "?nudge=" + quote(nudge, safe="")
    validator = RequestValidator(runtime.settings.twilio_auth_token)
    for path in ("/webhooks/twilio/sms", "/webhooks/twilio/status"):
        url = runtime.settings.public_base_url + path + query
        signature = validator.compute_signature(url, params)
        response = client.post(path + query, data=params, headers={"X-Twilio-Signature": signature})
        _check(response, counts, f"signed POST {path}{query} {params!r}")


@SWEEP_SETTINGS
@given(form=FORMS, use_partner=st.booleans())
def test_authenticated_inbound_parse(sweep: Any, form: dict[str, str], use_partner: bool) -> None:
    _app, client, runtime, couple, counts = sweep
    fields = dict(form)
    if use_partner:
        partner = couple.partners[1]
        fields.setdefault("from", partner.email)
        fields["to"] = f"reply+{partner.reply_token}@{runtime.settings.inbound_email_domain}"
    auth = base64.b64encode(f"closer:{runtime.settings.inbound_parse_secret}".encode()).decode()
    response = client.post("/webhooks/sendgrid/inbound", data=fields, headers={"Authorization": f"Basic {auth}"})
    _check(response, counts, f"inbound parse {fields!r}")


EVENT_FIELDS = ["sg_event_id", "event", "sg_message_id", "status", "type", "email", "nudge_id", "timestamp",
                "reason", "category"]
EVENT_VALUES = st.one_of(
    NASTY_TEXT, st.sampled_from([*BIG_IDS, "bounce", "delivered", "unsubscribe", "dropped", "processed", "\udc80"]),
    st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True), st.none(), st.booleans(),
    st.lists(st.text(max_size=4), max_size=2),
)
EVENTS = st.lists(st.dictionaries(st.sampled_from(EVENT_FIELDS), EVENT_VALUES, max_size=8), max_size=6)


@SWEEP_SETTINGS
@given(events=EVENTS, use_partner=st.booleans())
def test_signed_sendgrid_event_batches(sweep: Any, events: list[dict[str, Any]], use_partner: bool) -> None:
    _app, client, runtime, couple, counts = sweep
    key = _event_key()
    batch = [dict(e) for e in events]
    if use_partner:
        batch.append({"sg_event_id": f"ev-{len(batch)}", "event": "delivered", "email": couple.partners[0].email})
    body = json.dumps(batch)
    stamp = str(int(time.time()))
    signature = base64.b64encode(key.sign((stamp + body).encode(), ec.ECDSA(hashes.SHA256()))).decode()
    original = runtime.settings
    runtime.settings = original.with_overrides(sendgrid_event_public_key=_public_key(key))
    try:
        response = client.post("/webhooks/sendgrid/events", data=body, content_type="application/json", headers={
            "X-Twilio-Email-Event-Webhook-Signature": signature, "X-Twilio-Email-Event-Webhook-Timestamp": stamp})
    finally:
        runtime.settings = original
    _check(response, counts, f"signed events {body[:300]}")


_EVENT_KEY: list[ec.EllipticCurvePrivateKey] = []


def _event_key() -> ec.EllipticCurvePrivateKey:
    if not _EVENT_KEY:
        _EVENT_KEY.append(ec.generate_private_key(ec.SECP256R1()))
    return _EVENT_KEY[0]


def _public_key(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def test_every_id_in_every_route_as_a_logged_in_operator(sweep: Any) -> None:
    """Past the login and the CSRF check, every path argument gets each big or broken id (bounded)."""
    app, client, runtime, _couple, counts = sweep
    original = runtime.settings
    password = "sweep-operator-password"
    runtime.settings = original.with_overrides(
        operator_users=(f"sweeper:{generate_password_hash(password, method='pbkdf2:sha256:1000')}",))
    try:
        token = _csrf_token(client, "/ops/login")
        limiter.enabled = True  # the login refuses to run when its attempts cannot be counted
        try:
            login = client.post("/ops/login", data={"csrf_token": token, "username": "sweeper",
                                                    "password": password})
        finally:
            limiter.enabled = False
        assert login.status_code == 303, login.get_data(as_text=True)[:300]
        token = _csrf_token(client, "/ops")
        for method, _, rule in _rules(app):
            if not rule.arguments:
                continue
            for raw in [*BIG_IDS, "\x00", "\xff\xfe", "a" * 300]:
                path = _path(rule, dict.fromkeys(rule.arguments, raw))
                for query in ({}, {"nudge": raw, "id": raw}):
                    if method == "GET":
                        response = client.get(path, query_string=query)
                    else:
                        response = client.open(path, method=method, query_string=query,
                                               data={"csrf_token": token, "outcome": "failed", "reason": raw})
                    _check(response, counts, f"operator {method} {path} {query!r}")
    finally:
        runtime.settings = original


def _csrf_token(client: FlaskClient, path: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)

# --- through the real gunicorn ---------------------------------------------------------------------
# Some shapes never reach the test client: a broken chunked body is parsed by gunicorn while the view
# reads the stream. A bounded sweep (a few hundred requests, loopback only) runs the Procfile's `web`.

CHUNKED_POSTS = ["/signup", "/webhooks/sendgrid/events", "/ops/login", "/confirm/x", "/log/x/erase-mine"]
BROKEN_CHUNKS = [
    b"zz\r\nabc\r\n0\r\n\r\n",  # a chunk size that is no hex number
    b"3\r\nabcdef\r\n0\r\n\r\n",  # a chunk longer than it said: no CRLF where one must be
    b"-1\r\nabc\r\n0\r\n\r\n",
    b"3;\x00\xff\r\nabc\r\n0\r\n\r\n",  # a chunk extension with a NUL and invalid UTF-8
    b"ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def gunicorn_port(settings: Settings, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`web` as the Procfile runs it (its gunicorn config, gthread workers), on a database of its own, in
    production mode: the testing app lets a view's exception propagate to gunicorn, production does not."""
    with scratch_database(settings.database_url, "sweep") as database_url:
        upgrade(settings.with_overrides(database_url=database_url))
        port = _free_port()
        env = {**os.environ, "CLOSER_ENV": "production", "DATABASE_URL": database_url, "REDIS_URL": redis_url,
               "SECRET_KEY": secrets.token_urlsafe(48), "DATA_ENCRYPTION_KEY": Fernet.generate_key().decode(),
               "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("prometheus")),
               "PUBLIC_BASE_URL": settings.public_base_url, "INBOUND_PARSE_SECRET": "sweep-secret",
               "TWILIO_AUTH_TOKEN": settings.twilio_auth_token}
        env.pop("TEST_DATABASE_URL", None)
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "python:service.gunicorn_conf", "--workers", "1",
             "--threads", "4", "--bind", f"127.0.0.1:{port}", "service.app:create_app()"],
            cwd=Path(PROJECT_ROOT), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            while _raw(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n") is None:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(process.stderr.read().decode() if process.stderr else "no output")
                time.sleep(0.2)
            yield port
        finally:
            process.terminate()
            process.wait(timeout=30)


def _raw(port: int, request: bytes) -> int | None:
    """Send `request` as bytes on a fresh connection; the status code, or None if there was no answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)  # all there is: a server waiting for more of a body gets EOF
            answer = b""
            while b"\r\n" not in answer:
                data = sock.recv(4096)
                if not data:
                    break
                answer += data
    except OSError:
        return None
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def _post_raw(port: int, path: bytes, body: bytes, *, headers: bytes = b"", chunked: bool = False) -> int | None:
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: %d\r\n" % len(body)
    return _raw(port, b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n" + framing + headers + b"\r\n" + body)


@pytest.mark.parametrize("path", CHUNKED_POSTS)
def test_a_broken_chunked_body_through_gunicorn_is_400(gunicorn_port: int, path: str) -> None:
    for body in BROKEN_CHUNKS:
        assert _post_raw(gunicorn_port, path.encode(), body, chunked=True) == 400, body
    well_formed = _post_raw(gunicorn_port, path.encode(), b"5\r\na=1&b\r\n0\r\n\r\n", chunked=True)
    assert well_formed is not None and well_formed < 500


def test_hostile_requests_through_gunicorn(gunicorn_port: int, app: Flask) -> None:
    """Every route through the Procfile's gunicorn, a bounded few requests each (about 500 in all): big and
    broken ids in path and query, raw invalid UTF-8 and NUL in headers and bodies, broken chunked bodies."""
    ids = ["2147483648", "999999999999999999", "9" * 40, "%00", "%ff%fe", "a%00b"]
    queries = [b"?nudge=999999999999999999&id=2147483648", b"?t=%00&nudge=%ff%fe", b"?%ff=%00"]
    headers = [b"User-Agent: caf\xe9 \xff\xfe\r\n", b"Authorization: Basic \xff\xfe\xfd\r\n",
               b"Cookie: session=\xff\x80; x=\xc3\r\n", b"Accept-Language: \xff\r\n", b"X-Forwarded-For: \x00\r\n"]
    bodies = [b"a=%00&b=%ff%fe&csrf_token=%00", b"from=\xff\xfe&text=\x00&to=\xc3(", b"\xff" * 64]
    failures: list[str] = []
    statuses: Counter[int | None] = Counter()
    sent = 0

    def send(method: bytes, target: bytes, head: bytes = b"", body: bytes | None = None, chunked: bool = False) -> None:
        nonlocal sent
        sent += 1
        if method == b"GET":
            status = _raw(gunicorn_port, b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                          + head + b"\r\n")
        else:
            status = _post_raw(gunicorn_port, target, body or b"", headers=head, chunked=chunked)
        statuses[status] += 1
        if status is None or status >= 500:
            failures.append(f"{method.decode()} {target!r} {head!r} {(body or b'')[:40]!r} -> {status}")

    for method, _, rule in _rules(app):
        verb = method.encode()
        if verb not in (b"GET", b"POST"):
            continue
        plain = _path(rule, {}).encode()
        for raw in ids if rule.arguments else []:
            path = rule.rule
            for argument in rule.arguments:
                for token in (f"<int:{argument}>", f"<path:{argument}>", f"<{argument}>"):
                    path = path.replace(token, raw)
            send(verb, path.encode())
        for query in queries:
            send(verb, plain + query)
        for head in headers:
            send(verb, plain, head)
        if verb == b"POST":
            for body in bodies:
                send(verb, plain, body=body)
            for body in BROKEN_CHUNKS:
                send(verb, plain, body=body, chunked=True)
    print(f"gunicorn sweep: {sent} requests, statuses {dict(statuses)}")
    assert sent < 2000
    assert failures == [], "\n".join(failures[:20])

"""A local fake of Twilio's Messages API and SendGrid's Mail Send API, for fault tests and the benchmark.

It answers the two calls Closer makes, in the shapes the official OpenAPI specs describe (a test runs
Prism's proxy in front of it to prove that), and keeps its own record of every request it received:
that record, not Closer's database, is what judges "no nudge lost, none doubled".

Faults are rules matched in order against each request: a status storm (429 with Retry-After, 5xx),
hung connections, or latency. Run it in-process (`FakeProviders().start()`) or as its own process
(`python -m tests.support.fake_providers --port 0 --latency 0.1`), which prints its URL and serves its
record at `GET /_fake/records` and takes rules at `POST /_fake/config`.

With `upstream=` it relays every provider request to another server (a Prism mock) and still records
it, so a test can have Prism check the contract and the fake count the calls.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email.utils
import http.client
import json
import secrets
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TWILIO_PATH_PREFIX = "/2010-04-01/Accounts/"
SENDGRID_PATH = "/v3/mail/send"
ACCEPTED = (200, 201, 202)


@dataclass
class Received:
    """One request as the fake saw it. `outcome` is what the client was (or would have been) told."""

    seq: int
    channel: str  # sms, email or other
    method: str
    path: str
    received_at: float
    status: int
    outcome: str  # accepted, rejected, hung
    nudge_id: int | None
    to: str | None
    form: dict[str, str] = field(default_factory=dict)
    json_body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    provider_id: str | None = None
    peer: str = ""  # the client's address and port: one per connection, so it shows keep-alive

    @property
    def may_have_sent(self) -> bool:
        """A hung request may have been sent by the real provider: it counts against doubling."""
        return self.outcome in ("accepted", "hung")


@dataclass
class Rule:
    """A fault: answer `status` (or hang for `hang_seconds`) to matching requests."""

    channel: str | None = None  # None matches both
    status: int | None = None
    retry_after: float | None = None
    error_code: int | None = None
    hang_seconds: float | None = None
    remaining: int | None = None  # None: until `until`, or forever
    until: float | None = None  # time.time() deadline
    every: int = 1  # apply to one request in `every` (a partial storm)
    body: Any = None  # answer exactly this JSON instead (to prove the Prism check catches a bad answer)
    _seen: int = 0

    def take(self, channel: str, now: float) -> bool:
        if self.channel is not None and self.channel != channel:
            return False
        if self.until is not None and now >= self.until:
            return False
        if self.remaining is not None and self.remaining <= 0:
            return False
        self._seen += 1
        if (self._seen - 1) % self.every:
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True


class FakeProviders:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        upstream: dict[str, str] | None = None,
    ) -> None:
        self.latency = latency
        self.upstream = upstream or {}  # channel -> base URL to relay to
        self._lock = threading.Lock()
        self._records: list[Received] = []
        self._rules: list[Rule] = []
        self._seq = 0
        self._server = _Server((host, port), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeProviders:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-providers", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeProviders:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- faults ------------------------------------------------------------------------------

    def add_rule(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def storm(
        self, status: int, *, channel: str | None = None, count: int | None = None, seconds: float | None = None,
        retry_after: float | None = None, error_code: int | None = None, every: int = 1,
    ) -> Rule:
        until = time.time() + seconds if seconds is not None else None
        return self.add_rule(Rule(channel=channel, status=status, retry_after=retry_after, error_code=error_code,
                                  remaining=count, until=until, every=every))

    def hang(self, seconds: float, *, channel: str | None = None, count: int | None = None) -> Rule:
        return self.add_rule(Rule(channel=channel, hang_seconds=seconds, remaining=count))

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def reset(self) -> None:
        with self._lock:
            self._rules.clear()
            self._records.clear()

    def _match(self, channel: str) -> Rule | None:
        now = time.time()
        with self._lock:
            for rule in self._rules:
                if rule.take(channel, now):
                    return rule
        return None

    # --- the record --------------------------------------------------------------------------

    def records(self, channel: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._records if channel is None or r.channel == channel]

    def sent_counts(self) -> Counter[tuple[str, int]]:
        """How many times each (channel, nudge id) may have gone out: accepted or hung."""
        return Counter((r.channel, r.nudge_id) for r in self.records() if r.may_have_sent and r.nudge_id is not None)

    def _record(self, **values: Any) -> Received:
        with self._lock:
            self._seq += 1
            record = Received(seq=self._seq, **values)
            self._records.append(record)
            return record


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    fake: FakeProviders

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and closed its socket is expected here, not an error worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError | socket.timeout | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Headers(dict[str, str]):
    """A request's headers, looked up without regard to case: all the handler needs of them."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        lowered = name.lower()
        return next((v for k, v in self.items() if k.lower() == lowered), default)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return str(value)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def parse_request(self) -> bool:
        """HTTP/1.1 requests parsed directly: the standard library's route through `email.parser` was
        half of this server's CPU per request, and the benchmark's ceiling and Closer both pay for it.
        Anything unusual goes the standard way."""
        requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = requestline.split()
        if len(words) != 3 or words[2] != "HTTP/1.1":
            return super().parse_request()
        self.requestline = requestline
        self.command, self.path, self.request_version = words
        headers = _Headers()
        while True:
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("iso-8859-1").partition(":")
            headers[name.strip()] = value.strip()
            if len(headers) > 100:
                self.send_error(431, "Too many headers")
                return False
        self.headers = headers  # type: ignore[assignment]
        self.close_connection = headers.get("Connection", "").lower() == "close"
        if headers.get("Expect", "").lower() == "100-continue":
            return self.handle_expect_100()
        return True

    def date_time_string(self, timestamp: float | None = None) -> str:
        return _http_date() if timestamp is None else super().date_time_string(timestamp)

    def do_GET(self) -> None:
        if self.path.startswith("/_fake/records"):
            records = self.server.fake.records()
            if "light=1" in self.path:
                rows: list[Any] = [[r.channel, r.nudge_id, r.received_at, r.outcome, r.status] for r in records]
            else:
                rows = [asdict(r) for r in records]
            self._send_json(200, rows)
            return
        self._send_json(404, {"code": 20404, "message": "not found", "status": 404})

    def do_POST(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        if path == "/_fake/config":
            self._configure(json.loads(raw or b"{}"))
            return
        if path == "/_fake/reset":
            fake.reset()
            self._send_json(200, {"ok": True})
            return
        if path.startswith(TWILIO_PATH_PREFIX) and path.endswith("/Messages.json"):
            self._twilio(fake, path, raw)
        elif path == SENDGRID_PATH:
            self._sendgrid(fake, raw)
        else:
            self._send_json(404, {"code": 20404, "message": "The requested resource was not found", "status": 404})

    # --- Twilio ------------------------------------------------------------------------------

    def _twilio(self, fake: FakeProviders, path: str, raw: bytes) -> None:
        received_at = time.time()
        form = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True).items()}
        account_sid = path[len(TWILIO_PATH_PREFIX):].split("/", 1)[0]
        nudge_id = _nudge_from_callback(form.get("StatusCallback"))
        base = {"channel": "sms", "method": "POST", "path": path, "received_at": received_at, "peer": self._peer(),
                "nudge_id": nudge_id, "to": form.get("To"), "form": form,
                "headers": {k: v for k, v in self.headers.items() if k.lower() != "authorization"}}
        if not self._authorized_basic(account_sid):
            fake._record(status=401, outcome="rejected", **base)
            self._send_json(401, _twilio_error(20003, "Authenticate", 401))
            return
        rule = fake._match("sms")
        if rule is not None and rule.hang_seconds is not None:
            fake._record(status=0, outcome="hung", **base)
            self._hang(rule.hang_seconds)
            return
        if rule is not None and rule.status is not None and rule.body is not None:
            fake._record(status=rule.status, outcome="rejected", **base)
            self._send_json(rule.status, rule.body)
            return
        if rule is not None and rule.status is not None:
            status = rule.status
            code = rule.error_code or {429: 20429, 500: 20500, 503: 20503}.get(status, 21211)
            fake._record(status=status, outcome="rejected", **base)
            self._delay(fake)
            headers = {"Retry-After": _seconds(rule.retry_after)} if rule.retry_after is not None else {}
            self._send_json(status, _twilio_error(code, _TWILIO_MESSAGES.get(code, "Error"), status), headers)
            return
        if "sms" in fake.upstream:
            self._relay(fake, fake.upstream["sms"], raw, base)
            return
        sid = "SM" + secrets.token_hex(16)
        fake._record(status=201, outcome="accepted", provider_id=sid, **base)
        self._delay(fake)
        self._send_json(201, _twilio_message(account_sid, sid, form))

    def _authorized_basic(self, account_sid: str) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user = base64.b64decode(header[6:]).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            return False
        return bool(user) and (user == account_sid or user.startswith("SK"))

    # --- SendGrid ----------------------------------------------------------------------------

    def _sendgrid(self, fake: FakeProviders, raw: bytes) -> None:
        received_at = time.time()
        try:
            payload = json.loads(raw or b"null")
        except ValueError:
            payload = None
        nudge_id, to = _sendgrid_identity(payload)
        base = {"channel": "email", "method": "POST", "path": SENDGRID_PATH, "received_at": received_at,
                "peer": self._peer(),
                "nudge_id": nudge_id, "to": to, "json_body": payload,
                "headers": {k: v for k, v in self.headers.items() if k.lower() != "authorization"}}
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            fake._record(status=401, outcome="rejected", **base)
            self._send_json(401, _sendgrid_error("authorization required"))
            return
        if not isinstance(payload, dict) or "personalizations" not in payload or "from" not in payload:
            fake._record(status=400, outcome="rejected", **base)
            self._send_json(400, _sendgrid_error("The personalizations field is required.", "personalizations"))
            return
        rule = fake._match("email")
        if rule is not None and rule.hang_seconds is not None:
            fake._record(status=0, outcome="hung", **base)
            self._hang(rule.hang_seconds)
            return
        if rule is not None and rule.status is not None:
            status = rule.status
            fake._record(status=status, outcome="rejected", **base)
            self._delay(fake)
            headers = {"Retry-After": _seconds(rule.retry_after)} if rule.retry_after is not None else {}
            message = "too many requests" if status == 429 else f"error {status}"
            self._send_json(status, _sendgrid_error(message), headers)
            return
        if "email" in fake.upstream:
            self._relay(fake, fake.upstream["email"], raw, base)
            return
        message_id = secrets.token_urlsafe(16)
        fake._record(status=202, outcome="accepted", provider_id=message_id, **base)
        self._delay(fake)
        self._send(202, b"", {"X-Message-Id": message_id})

    # --- plumbing ----------------------------------------------------------------------------

    def _relay(self, fake: FakeProviders, upstream: str, raw: bytes, base: dict[str, Any]) -> None:
        target = urlsplit(upstream)
        conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port or 80, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        try:
            conn.request("POST", self.path, body=raw, headers=headers)
            response = conn.getresponse()
            body = response.read()
            relayed = {k: v for k, v in response.getheaders()
                       if k.lower() not in ("connection", "content-length", "transfer-encoding")}
        finally:
            conn.close()
        provider_id = None
        if response.status in ACCEPTED and base["channel"] == "sms":
            provider_id = json.loads(body).get("sid")
        outcome = "accepted" if response.status in ACCEPTED else "rejected"
        fake._record(status=response.status, outcome=outcome, provider_id=provider_id, **base)
        self._delay(fake)
        self._send(response.status, body, relayed)

    def _configure(self, config: dict[str, Any]) -> None:
        fake = self.server.fake
        if "latency" in config:
            fake.latency = float(config["latency"])
        if config.get("clear_rules"):
            fake.clear_rules()
        for rule in config.get("rules", []):
            seconds = rule.pop("seconds", None)
            if seconds is not None:
                rule["until"] = time.time() + float(seconds)
            fake.add_rule(Rule(**rule))
        self._send_json(200, {"ok": True})

    def _peer(self) -> str:
        host, port = self.client_address[:2]
        return f"{host}:{port}"

    def _delay(self, fake: FakeProviders) -> None:
        if fake.latency > 0:
            time.sleep(fake.latency)

    def _hang(self, seconds: float) -> None:
        time.sleep(seconds)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def setup(self) -> None:
        super().setup()
        # Each answer goes out in one segment, and nothing waits on Nagle's algorithm for an ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Date: {self.date_time_string()}",
                 f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if self.close_connection:
            lines.append("Connection: close")
        try:
            self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
_TWILIO_MESSAGES = {
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    20503: "Service Unavailable",
    21211: "The 'To' number is not a valid phone number.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
}


def _twilio_error(code: int, message: str, status: int) -> dict[str, Any]:
    return {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}


_dates: tuple[int, str, str] = (0, "", "")


def _formatted_now() -> tuple[str, str]:
    """(HTTP date, Twilio's RFC 2822 date) for the current second, formatted once a second."""
    global _dates
    second = int(time.time())
    if _dates[0] != second:
        http_date = email.utils.formatdate(second, usegmt=True)
        _dates = (second, http_date, http_date.replace("GMT", "+0000"))
    return _dates[1], _dates[2]


def _http_date() -> str:
    return _formatted_now()[0]


def _twilio_message(account_sid: str, sid: str, form: dict[str, str]) -> dict[str, Any]:
    now = _formatted_now()[1]
    uri = f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json"
    return {
        "account_sid": account_sid, "api_version": "2010-04-01", "body": form.get("Body"),
        "date_created": now, "date_sent": None, "date_updated": now, "direction": "outbound-api",
        "error_code": None, "error_message": None, "from": form.get("From"),
        "messaging_service_sid": form.get("MessagingServiceSid"), "num_media": "0", "num_segments": "1",
        "price": None, "price_unit": "USD", "sid": sid, "status": "queued",
        "subresource_uris": {"media": uri.replace(".json", "/Media.json")}, "to": form.get("To"), "uri": uri,
    }


def _sendgrid_error(message: str, field_name: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message}
    if field_name is not None:
        error["field"] = field_name
    return {"errors": [error]}


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _nudge_from_callback(url: str | None) -> int | None:
    if not url:
        return None
    values = parse_qs(urlsplit(url).query).get("nudge")
    return int(values[0]) if values and values[0].isdigit() else None


def _sendgrid_identity(payload: Any) -> tuple[int | None, str | None]:
    try:
        personalization = payload["personalizations"][0]
        to = personalization["to"][0]["email"]
        raw = (personalization.get("custom_args") or {}).get("nudge_id")
        return (int(raw) if raw is not None and str(raw).isdigit() else None), to
    except (KeyError, IndexError, TypeError):
        return None, None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(argv)
    # Hundreds of connection threads share the GIL: a short slice keeps the time stamped on each request
    # close to its arrival (the rate-limit benchmark reads those stamps).
    sys.setswitchinterval(0.001)
    fake = FakeProviders(host=args.host, port=args.port, latency=args.latency)
    print(fake.url, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        fake._server.serve_forever()


if __name__ == "__main__":
    main()

"""Keep-alive HTTP for the providers' SDKs: one `http.client` connection per sending thread and host.

Why: the SDKs' own HTTP layers (a new connection per message, or `requests`) are most of a send's CPU.
The SDKs still build every request (and Twilio's parses every answer): Twilio's through its documented
custom `HttpClient` hook, SendGrid's by posting its own `Mail.get()` payload with its own headers. Only
the transport differs from their defaults: measured on this kind of
machine, a Twilio call through `requests` took 0.7-0.8 ms of CPU and 0.30 ms here; a SendGrid call
through python_http_client (urllib, a new connection per message) 0.63 ms and 0.24 ms here.

Failures are classified by how far the request got, which decides whether a retry could send twice:
- `NotSent`: the connection could not be made, or broke while the request was being written (a server
  never acts on half a request): retrying is safe;
- `NoAnswer`: the whole request went out and no complete answer came back: it may have been sent.

The rate limit's admission (service.providers.admission) runs right before the request is written.

Measured against urllib3 2.8 doing the same job (a pool of one keep-alive connection per thread, the
gate in its connection's `request`, the same NotSent/NoAnswer split): 0.28 ms of CPU a call against
0.12 ms here (3000 calls to the local fake, three interleaved pairs), and in `bench.dispatch` the
workers used 1.71-2.43 ms a nudge against 1.07-1.46 (interleaved, load 2-14). It writes headers and
body in two sends and parses headers with `email`, so this one stays.
"""

from __future__ import annotations

import email.parser
import http.client
import socket
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from service.providers.admission import pass_gate

# Idle keep-alive connections get closed by the far end; one reused after that fails in a way that
# looks like "the request may have gone out". Connections idle this long are replaced first.
MAX_IDLE_SECONDS = 20.0


class NotSent(Exception):
    """Nothing reached the provider: safe to try again."""


class NoAnswer(Exception):
    """The request went out and no answer came back: the provider may have acted on it."""


_MAX_HEADERS, _MAX_LINE = 100, 65536  # http.client's own limits


def _read_header_lines(fp: Any) -> list[bytes]:
    lines: list[bytes] = []
    while True:
        line = fp.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            return lines
        lines.append(line)
        if len(lines) > _MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")


def _parse_headers(fp: Any) -> http.client.HTTPMessage:
    """The same `HTTPMessage` `http.client` builds, without going through `email.parser` for the plain
    `Name: value` lines every provider answer has (that parser was a tenth of a send's CPU); anything
    else (folded or malformed lines) still goes through it."""
    lines = _read_header_lines(fp)
    message = http.client.HTTPMessage()
    for line in lines:
        text = line.decode("iso-8859-1")
        name, colon, value = text.partition(":")
        if not colon or not name or text[0] in " \t" or name != name.strip():
            parsed: http.client.HTTPMessage = email.parser.Parser(_class=http.client.HTTPMessage).parsestr(
                b"".join(lines).decode("iso-8859-1"))
            return parsed
        # As `email`'s compat32 policy stores a header: leading blanks and the line ending dropped.
        message.set_raw(name, value.lstrip(" \t").rstrip("\r\n"))
    return message


class _Response(http.client.HTTPResponse):
    """`http.client`'s response, its headers read by `_parse_headers`; everything else (chunked bodies,
    keep-alive rules) is the standard library's."""

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            _read_header_lines(self.fp)  # a 100 Continue's headers
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = _parse_headers(self.fp)
        encoding = self.headers.get("transfer-encoding")
        self.chunked = bool(encoding and encoding.lower() == "chunked")
        self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) or 100 <= status < 200 \
                or self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)


class KeepAlive:
    """Per-thread keep-alive connections to one base URL (http or https, through HTTPS_PROXY if set)."""

    def __init__(self, base_url: str, timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        # Read once: scanning the environment for proxies on every request is a measurable cost.
        self._proxy = urllib.request.getproxies().get(parts.scheme)
        self._context = ssl.create_default_context() if parts.scheme == "https" else None
        self._local = threading.local()

    def _new_connection(self) -> http.client.HTTPConnection:
        host, port = self.host, self.port
        if self._proxy:
            proxy = urlsplit(self._proxy)
            host, port = proxy.hostname or host, proxy.port or 80
        connection: http.client.HTTPConnection
        if self._context is not None:
            connection = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._context)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=self.timeout)
        connection.response_class = _Response
        if self._proxy:
            connection.set_tunnel(self.host, self.port)
        try:
            connection.connect()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise NotSent(f"could not connect to {self.host}: {type(exc).__name__}") from exc
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it was used before (and may have gone stale)."""
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        last_used: float = getattr(self._local, "last_used", 0.0)
        if connection is not None and time.monotonic() - last_used > MAX_IDLE_SECONDS:
            connection.close()
            connection = None
        if connection is None:
            connection = self._new_connection()
            self._local.connection = connection
            return connection, False
        return connection, True

    def _drop(self) -> None:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
        self._local.connection = None

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Answer:
        for attempt in (1, 2):
            connection, reused = self._connection()
            pass_gate()
            try:
                connection.putrequest(method, self.prefix + path, skip_accept_encoding=True)
                for name, value in headers.items():
                    connection.putheader(name, value)
                connection.putheader("Content-Length", str(len(body or b"")))
                # Headers and body leave in one write: no small segment waiting on the peer's delayed ACK.
                connection.endheaders(body)
            except (OSError, http.client.HTTPException) as exc:
                # Writing failed, so the request is incomplete on the far side: nothing was acted on.
                self._drop()
                if reused and attempt == 1:
                    continue  # a keep-alive connection the server had closed: once more, on a new one
                raise NotSent(f"could not send to {self.host}: {type(exc).__name__}") from exc
            try:
                response = connection.getresponse()
                answer = Answer(response.status, dict(response.getheaders()), response.read())
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise NoAnswer(f"no answer from {self.host}: {type(exc).__name__}") from exc
            if response.will_close:
                self._drop()
            else:
                self._local.last_used = time.monotonic()
            return answer
        raise AssertionError("unreachable")

"""The keep-alive transport reads answers' headers as `http.client` would, only faster."""

from __future__ import annotations

import http.client
import io

import pytest

from service.providers.keep_alive import _parse_headers

HEADERS = [
    b"Content-Type: application/json; charset=utf-8\r\nContent-Length: 12\r\nX-Message-Id:abc\r\n"
    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nRetry-After:  30 \r\n\r\nbody",
    # Obsolete line folding and a line without a colon go through the standard parser, as before.
    b"X-Long: first\r\n  continued\r\nContent-Length: 0\r\n\r\n",
    b"Content-Length: 0\r\nnot a header\r\nX-After: 1\r\n\r\n",
    b"\r\n",
    b"Connection: close\nTransfer-Encoding: chunked\n\n",
]


@pytest.mark.parametrize("raw", HEADERS)
def test_headers_read_as_http_client_reads_them(raw: bytes) -> None:
    ours, theirs = io.BytesIO(raw), io.BytesIO(raw)
    fast, standard = _parse_headers(ours), http.client.parse_headers(theirs)
    assert fast.items() == standard.items()
    for name in ("content-length", "set-cookie", "retry-after", "x-long", "connection", "transfer-encoding"):
        assert fast.get(name) == standard.get(name) and fast.get_all(name) == standard.get_all(name)
    assert ours.read() == theirs.read(), "the body is left where it was"


def test_too_many_headers_are_refused() -> None:
    raw = b"".join(b"X-%d: v\r\n" % n for n in range(101)) + b"\r\n"
    with pytest.raises(http.client.HTTPException):
        _parse_headers(io.BytesIO(raw))

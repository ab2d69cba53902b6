from __future__ import annotations

from types import SimpleNamespace

from gunicorn.config import Config

from service.gunicorn_conf import RedactingLogger


def test_access_log_hides_private_link_tokens() -> None:
    logger = RedactingLogger(Config())
    request = SimpleNamespace(method="GET", path="/log/SECRETTOKEN123", query="t=SECRET2", uri="/log/SECRETTOKEN123",
                              version=(1, 1), headers=[])
    response = SimpleNamespace(status="200 OK", response_length=10, sent=10, headers=[])
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/log/SECRETTOKEN123?t=SECRET2", "SERVER_PROTOCOL": "HTTP/1.1",
               "REMOTE_ADDR": "127.0.0.1", "PATH_INFO": "/log/SECRETTOKEN123", "QUERY_STRING": "t=SECRET2"}
    atoms = logger.atoms(response, request, environ, SimpleNamespace(seconds=0, microseconds=1000))
    rendered = " ".join(str(v) for v in atoms.values())
    assert "SECRETTOKEN123" not in rendered and "SECRET2" not in rendered
    assert atoms["U"] == "/log/[token]"

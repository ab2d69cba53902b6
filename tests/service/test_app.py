"""The app factory's per-request hooks."""

from __future__ import annotations

from flask import Flask, Response


def _security_headers(app: Flask) -> object:
    return next(f for f in app.after_request_funcs[None] if getattr(f, "__name__", "") == "_security_headers")


def test_security_headers_are_added_once_and_a_views_own_are_kept(app: Flask) -> None:
    hook = _security_headers(app)
    plain = hook(Response("ok"))  # type: ignore[operator]
    assert plain.headers["X-Frame-Options"] == "DENY"
    assert plain.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'self'" in plain.headers["Content-Security-Policy"]
    assert len(plain.headers.getlist("X-Content-Type-Options")) == 1
    own = Response("ok", headers={"content-security-policy": "default-src 'none'"})
    kept = hook(own)  # type: ignore[operator]
    assert kept.headers.getlist("Content-Security-Policy") == ["default-src 'none'"]

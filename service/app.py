"""The app factory: each `register_*` helper wires one concern onto the app."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, Response

from service.logging_setup import configure_logging
from service.runtime import build_runtime
from service.settings import PROJECT_ROOT, Settings
from service.web.context import close_db_session

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, programs_dir: Path | None = None) -> Flask:
    """`programs_dir` replaces message_templates/programs/ (tests, content drafts)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__, instance_path=str(PROJECT_ROOT / "instance"))
    settings = register_runtime(app, settings, programs_dir)
    register_settings(app, settings)
    register_security(app, settings)
    register_blueprints(app, settings)
    register_metrics(app, settings)
    return app


def register_settings(app: Flask, settings: Settings) -> None:
    configure_logging(settings.log_level)
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
    app.config.update(
        SECRET_KEY=settings.secret_key,
        TESTING=settings.is_testing,
        MAX_CONTENT_LENGTH=2 * 1024 * 1024,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.is_production,
        WTF_CSRF_TIME_LIMIT=None,
        CLOSER_SETTINGS=settings,
    )


def register_runtime(app: Flask, settings: Settings, programs_dir: Path | None = None) -> Settings:
    """The app only holds the runtime that web, worker, scheduler and CLI build alike; its settings (with
    the database URL it resolved) are the ones the rest of the app is set up with."""
    runtime = build_runtime(settings, programs_dir=programs_dir)
    app.extensions["closer"] = runtime
    app.teardown_appcontext(close_db_session)
    return runtime.settings


def register_security(app: Flask, settings: Settings) -> None:
    from flask_wtf.csrf import CSRFProtect

    from service.web.limits import limiter

    CSRFProtect(app)
    app.config["RATELIMIT_STORAGE_URI"] = app.extensions["closer"].redis_url
    app.config["RATELIMIT_HEADERS_ENABLED"] = True
    # With Redis down, limits cannot be counted; the daily confirmation cap in SQL still holds, so
    # signups keep working rather than failing with a 500.
    app.config["RATELIMIT_SWALLOW_ERRORS"] = True
    limiter.init_app(app)

    security_headers = [
        ("Content-Security-Policy",
         "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
         "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
    ]
    if settings.is_production:
        security_headers.append(("Strict-Transport-Security", "max-age=31536000; includeSubDomains"))

    @app.after_request
    def _security_headers(response: Response) -> Response:
        # One pass over the response's few headers instead of a scan per header: this runs on every
        # request, the webhooks' included. A view that set one of these keeps its own.
        present = {name.lower() for name, _value in response.headers}
        for name, value in security_headers:
            if name.lower() not in present:
                response.headers.add(name, value)
        return response


def register_blueprints(app: Flask, settings: Settings) -> None:
    from service.web import dev, errors, health, ops, pages, signup
    from service.web import log as shared_log
    from service.web.unsubscribe import bp as unsubscribe_bp
    from service.web.unsubscribe import unsubscribe_post
    from service.web.webhooks import bp as webhooks_bp
    from service.web.webhooks import (
        sendgrid_events,  # noqa: F401 - attaches its route to the blueprint
        sendgrid_inbound,  # noqa: F401 - attaches its route to the blueprint
        twilio_sms,  # noqa: F401 - attaches its route to the blueprint
        twilio_status,  # noqa: F401 - attaches its route to the blueprint
    )

    errors.register(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(signup.bp)
    app.register_blueprint(shared_log.bp)
    app.register_blueprint(ops.bp)
    # RFC 8058 one-click unsubscribes come from mail clients, without a session or CSRF token.
    app.extensions["csrf"].exempt(unsubscribe_post)
    app.register_blueprint(unsubscribe_bp)
    app.extensions["csrf"].exempt(webhooks_bp)
    app.register_blueprint(webhooks_bp)
    if settings.is_development or settings.is_testing:
        app.register_blueprint(dev.bp)


def register_metrics(app: Flask, settings: Settings) -> None:
    from service.web.metrics import bp

    app.register_blueprint(bp)

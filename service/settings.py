"""One typed settings object, read from the environment, shared by web, worker and migrations."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

ENVIRONMENTS = ("production", "development", "testing")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(RuntimeError):
    """Raised when the environment cannot produce a safe configuration."""


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    closer_env: str = "production"
    # Empty: in development, an embedded PostgreSQL under instance/ (service/embedded_postgres.py).
    database_url: str = ""
    # Development only: where the embedded PostgreSQL keeps its data when DATABASE_URL is unset.
    embedded_postgres_dir: str = str(PROJECT_ROOT / "instance" / "postgres")
    redis_url: str | None = None
    secret_key: str = ""
    data_encryption_key: tuple[str, ...] = ()
    public_base_url: str = "http://127.0.0.1:5000"

    sms_provider: str = ""
    email_provider: str = ""
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_from_number: str = ""
    twilio_messaging_service_sid: str = ""
    twilio_api_base_url: str = ""
    sendgrid_api_key: str = ""
    sendgrid_from_email: str = ""
    sendgrid_api_host: str = ""
    sendgrid_event_public_key: str = ""
    inbound_email_domain: str = "reply.closer.invalid"
    inbound_parse_secret: str = ""

    operator_users: tuple[str, ...] = ()
    sms_rate_per_second: float = 10.0
    email_rate_per_second: float = 50.0
    allowed_countries: tuple[str, ...] = ("US", "CA")

    sender_name: str = "Closer"
    sender_postal_address: str = ""
    support_contact: str = ""

    # Not in DESIGN.md's table: operational knobs with safe defaults.
    scheduler_interval_seconds: float = 5.0
    send_batch_size: int = 50
    send_concurrency: int = 16
    # How often a worker tells Redis it is alive; one silent for a minute is no longer counted (ops_queues).
    worker_heartbeat_seconds: float = 10.0
    confirmation_texts_per_number_per_day: int = 3
    signup_rate_limit: str = "5 per minute;30 per hour"
    log_level: str = "INFO"
    # How many reverse proxies (load balancers) stand in front of the web processes: their
    # X-Forwarded-For entries are trusted, so rate limits see each client's own address.
    trusted_proxies: int = 0

    @property
    def is_development(self) -> bool:
        return self.closer_env == "development"

    @property
    def is_testing(self) -> bool:
        return self.closer_env == "testing"

    @property
    def is_production(self) -> bool:
        return self.closer_env == "production"

    @property
    def effective_sms_provider(self) -> str:
        if self.sms_provider:
            return self.sms_provider
        return "twilio" if self.twilio_account_sid and self.twilio_auth_token else "console"

    @property
    def effective_email_provider(self) -> str:
        if self.email_provider:
            return self.email_provider
        return "sendgrid" if self.sendgrid_api_key else "console"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, load_dotenv: bool = True) -> Settings:
        """Read settings from the environment; a `.env` file is read in development only."""
        env = dict(os.environ if environ is None else environ)
        closer_env = env.get("CLOSER_ENV", "production").strip() or "production"
        if load_dotenv and closer_env == "development" and environ is None:
            from dotenv import dotenv_values

            for key, value in dotenv_values(PROJECT_ROOT / ".env").items():
                if value is not None:
                    env.setdefault(key, value)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or raw == "":
                continue
            default = f.default
            if isinstance(default, tuple):
                values[f.name] = _csv(raw)
            elif isinstance(default, bool):
                values[f.name] = _bool(raw)
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, float):
                values[f.name] = float(raw)
            else:
                values[f.name] = raw.strip()
        values["closer_env"] = closer_env
        return cls(**values).validated()

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes).validated()

    def validated(self) -> Settings:
        if self.closer_env not in ENVIRONMENTS:
            raise SettingsError(f"CLOSER_ENV must be one of {', '.join(ENVIRONMENTS)}, not {self.closer_env!r}.")
        missing = []
        if not self.secret_key:
            missing.append("SECRET_KEY (any long random string, e.g. `python -c 'import secrets; "
                           "print(secrets.token_urlsafe(48))'`)")
        if not self.data_encryption_key:
            missing.append("DATA_ENCRYPTION_KEY (Fernet keys, newest first, e.g. `python -c 'from "
                           "cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)")
        if missing and self.closer_env == "production":
            raise SettingsError(
                "Closer will not start in production without its secrets. Set " + " and ".join(missing)
                + ", or set CLOSER_ENV=development for a throwaway local setup."
            )
        changes: dict[str, Any] = {}
        if not self.secret_key:
            changes["secret_key"] = _throwaway_secret("dev-secret.key", lambda: secrets.token_urlsafe(48))
        if not self.data_encryption_key:
            changes["data_encryption_key"] = (
                _throwaway_secret("dev-encryption.key", lambda: Fernet.generate_key().decode()),
            )
        for key in changes.get("data_encryption_key", self.data_encryption_key):
            try:
                Fernet(key.encode())
            except ValueError as exc:
                raise SettingsError("DATA_ENCRYPTION_KEY holds a value that is not a Fernet key.") from exc
        for provider, allowed in (("sms_provider", ("twilio", "console")), ("email_provider", ("sendgrid", "console"))):
            value = getattr(self, provider)
            if value and value not in allowed:
                raise SettingsError(f"{provider.upper()} must be one of {', '.join(allowed)}, not {value!r}.")
        if self.closer_env == "production":
            if not self.database_url:
                raise SettingsError("Set DATABASE_URL to your PostgreSQL (postgresql://user:password@host/db).")
            if self.effective_sms_provider == "twilio" and not (
                self.twilio_from_number or self.twilio_messaging_service_sid
            ):
                raise SettingsError("Set TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID to send SMS.")
            if self.effective_email_provider == "sendgrid" and not self.inbound_parse_secret:
                raise SettingsError("Set INBOUND_PARSE_SECRET to guard the SendGrid Inbound Parse webhook.")
            if self.effective_email_provider == "sendgrid" and not self.sender_postal_address:
                raise SettingsError("Set SENDER_POSTAL_ADDRESS: CAN-SPAM requires it in every email footer.")
        return replace(self, **changes) if changes else self


def _throwaway_secret(name: str, make: Callable[[], str]) -> str:
    """A development secret kept in instance/, so every local process and restart agrees on it."""
    path = PROJECT_ROOT / "instance" / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            return path.read_text().strip()
        value = make()
        path.write_text(value)
        path.chmod(0o600)
        return value
    except OSError:
        return make()

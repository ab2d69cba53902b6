from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from service.settings import Settings, SettingsError


def test_production_refuses_to_start_without_secrets() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"CLOSER_ENV": "production"})
    message = str(info.value)
    assert "SECRET_KEY" in message and "DATA_ENCRYPTION_KEY" in message


def test_production_with_secrets_reads_every_setting() -> None:
    key = Fernet.generate_key().decode()
    old = Fernet.generate_key().decode()
    settings = Settings.from_env({
        "CLOSER_ENV": "production", "SECRET_KEY": "s" * 40, "DATA_ENCRYPTION_KEY": f"{key}, {old}",
        "REDIS_URL": "redis://example:6379/0", "DATABASE_URL": "postgresql://db.example/closer",
        "ALLOWED_COUNTRIES": "US,CA,GB", "SMS_RATE_PER_SECOND": "2.5",
    })
    assert settings.data_encryption_key == (key, old)
    assert settings.allowed_countries == ("US", "CA", "GB")
    assert settings.sms_rate_per_second == 2.5
    assert settings.effective_sms_provider == "console"


def test_development_generates_throwaway_secrets() -> None:
    settings = Settings.from_env({"CLOSER_ENV": "development"}, load_dotenv=False)
    assert len(settings.secret_key) >= 32
    Fernet(settings.data_encryption_key[0].encode())


def test_bad_encryption_key_is_refused() -> None:
    with pytest.raises(SettingsError, match="not a Fernet key"):
        Settings.from_env({"CLOSER_ENV": "testing", "DATA_ENCRYPTION_KEY": "nope"})


def test_unknown_environment_is_refused() -> None:
    with pytest.raises(SettingsError, match="CLOSER_ENV"):
        Settings.from_env({"CLOSER_ENV": "staging"})


def test_twilio_credentials_select_twilio() -> None:
    settings = Settings.from_env({
        "CLOSER_ENV": "development", "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "t",
        "TWILIO_FROM_NUMBER": "+15005550006",
    }, load_dotenv=False)
    assert settings.effective_sms_provider == "twilio"


def test_production_email_needs_a_postal_address() -> None:
    base = {"CLOSER_ENV": "production", "SECRET_KEY": "s" * 40, "DATA_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "SENDGRID_API_KEY": "SG.x", "SENDGRID_FROM_EMAIL": "hi@example.com", "INBOUND_PARSE_SECRET": "p",
            "DATABASE_URL": "postgresql://db.example/closer"}
    with pytest.raises(SettingsError, match="SENDER_POSTAL_ADDRESS"):
        Settings.from_env(base)
    assert Settings.from_env({**base, "SENDER_POSTAL_ADDRESS": "1 Main St"}).effective_email_provider == "sendgrid"


def test_production_needs_a_database_url() -> None:
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        Settings.from_env({"CLOSER_ENV": "production", "SECRET_KEY": "s" * 40,
                           "DATA_ENCRYPTION_KEY": Fernet.generate_key().decode()})

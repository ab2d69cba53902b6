"""Private links: bearer tokens of 128+ random bits, stored hashed (and encrypted to text them back)."""

from __future__ import annotations

import secrets
from datetime import datetime

from service.crypto import token_digest
from service.models import Partner
from service.settings import Settings


def new_token() -> str:
    return secrets.token_urlsafe(24)  # 192 bits


def issue_log_token(partner: Partner, now: datetime) -> str:
    token = new_token()
    partner.log_token = token
    partner.log_token_hash = token_digest(token)
    partner.log_token_issued_at = now
    return token


rotate_log_token = issue_log_token


def log_url(settings: Settings, token: str) -> str:
    return f"{settings.public_base_url.rstrip('/')}/log/{token}"

"""When the database is down, an authenticated inbound message waits in Redis (encrypted), so no
accepted reply is lost; the scheduler replays the spool through the same domain code once it is back.
A record's kind names the webhook it came to; jobs.inbound maps each kind to its replay."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import redis

from service.crypto import active_cipher

SPOOL_KEY = "closer:inbound-spool"

# The kinds of record (jobs.inbound.HANDLERS has one replay for each).
TWILIO_SMS = "twilio_sms"
SENDGRID_INBOUND = "sendgrid_inbound"


def spool_inbound(connection: redis.Redis, kind: str, payload: dict[str, Any]) -> None:
    record = json.dumps({"kind": kind, "payload": payload, "spooled_at": datetime.now(UTC).isoformat()})
    connection.rpush(SPOOL_KEY, active_cipher().encrypt(record))


def peek(connection: redis.Redis) -> tuple[bytes, dict[str, Any]] | None:
    raw = connection.lindex(SPOOL_KEY, 0)
    if raw is None:
        return None
    return raw, json.loads(active_cipher().decrypt(raw))


def done(connection: redis.Redis, raw: bytes) -> None:
    connection.lrem(SPOOL_KEY, 1, raw)


def depth(connection: redis.Redis) -> int:
    return int(connection.llen(SPOOL_KEY))

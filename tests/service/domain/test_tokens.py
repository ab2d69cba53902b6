"""Confirm and unsubscribe tokens: opaque (the partner's id cannot be read out of a link), unforgeable
for another partner, and links sent before they became opaque keep working until they expire."""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
from itsdangerous import URLSafeTimedSerializer

from service.domain.tokens import CONFIRM_MAX_AGE, TokenError, make_token, read_token

SECRET = "a-test-secret-key-that-is-long-enough"
PURPOSES = ("confirm", "unsubscribe")


def _decoded_parts(token: str) -> list[str]:
    parts = []
    for part in token.split("."):
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        parts.append(raw.decode("latin-1"))
    return parts


@pytest.mark.parametrize("purpose", PURPOSES)
@pytest.mark.parametrize("partner_id", [7, 31, 123457, 2**40 + 3])
def test_a_token_decoded_with_base64_reveals_no_partner_id(purpose: str, partner_id: int) -> None:
    token = make_token(SECRET, purpose, partner_id)
    payload = _decoded_parts(token)[0]  # what the link carries; the rest is a timestamp and a signature
    assert not re.search(rf"(?<![0-9A-Za-z]){partner_id}(?![0-9A-Za-z])", payload), (token, payload)
    assert not isinstance(json.loads(payload), int)
    assert read_token(SECRET, purpose, token) == partner_id


@pytest.mark.parametrize("purpose", PURPOSES)
def test_tokens_of_neighbouring_partners_share_nothing_readable(purpose: str) -> None:
    payloads = {_decoded_parts(make_token(SECRET, purpose, pid))[0] for pid in range(100, 110)}
    assert len(payloads) == 10
    assert not any(p.strip('"').isdigit() for p in payloads)


@pytest.mark.parametrize("purpose", PURPOSES)
def test_a_made_up_token_for_another_partner_is_refused(purpose: str) -> None:
    mine = make_token(SECRET, purpose, 41)
    theirs_elsewhere = make_token("some-other-secret-key-entirely", purpose, 42)
    _mine, stamp, signature = mine.split(".")
    other_payload = theirs_elsewhere.split(".")[0]
    forged = [
        f"{other_payload}.{stamp}.{signature}",  # another partner's opaque id with my signature
        theirs_elsewhere,  # signed with the wrong key
        URLSafeTimedSerializer("wrong-key", salt=f"closer.{purpose}").dumps(42),  # an old-style token, forged
        f"{base64.urlsafe_b64encode(json.dumps(42).encode()).decode().rstrip('=')}.{stamp}.{signature}",
        make_token(SECRET, "log" if purpose == "confirm" else "confirm", 42),  # another purpose
    ]
    for token in forged:
        with pytest.raises(TokenError):
            read_token(SECRET, purpose, token)


@pytest.mark.parametrize("purpose", PURPOSES)
def test_links_sent_before_tokens_became_opaque_keep_working(purpose: str) -> None:
    legacy = URLSafeTimedSerializer(SECRET, salt=f"closer.{purpose}").dumps(31)
    assert read_token(SECRET, purpose, legacy) == 31
    assert read_token(SECRET, purpose, legacy, max_age=CONFIRM_MAX_AGE) == 31


def test_an_old_confirm_link_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    legacy = URLSafeTimedSerializer(SECRET, salt="closer.confirm").dumps(31)
    token = make_token(SECRET, "confirm", 31)
    later = time.time() + CONFIRM_MAX_AGE + 60
    monkeypatch.setattr(time, "time", lambda: later)
    for old in (legacy, token):
        with pytest.raises(TokenError) as caught:
            read_token(SECRET, "confirm", old, max_age=CONFIRM_MAX_AGE)
        assert caught.value.expired

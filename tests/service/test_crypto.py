from __future__ import annotations

from cryptography.fernet import Fernet
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from service.crypto import Cipher, install_cipher
from service.models import LogEntry
from service.runtime import Runtime
from tests.factories import make_couple


def test_words_are_encrypted_at_rest(db: Session) -> None:
    couple = make_couple(db)
    partner = couple.partners[0]
    db.add(LogEntry(couple_id=couple.id, partner_id=partner.id, channel="sms",
                    provider_message_id="SMsecret1", body="I loved our walk by the river"))
    db.flush()
    raw = db.execute(text("SELECT body FROM log_entries WHERE provider_message_id = 'SMsecret1'")).scalar_one()
    assert b"river" not in bytes(raw)
    db.expire_all()
    entry = db.scalar(select(LogEntry).where(LogEntry.provider_message_id == "SMsecret1"))
    assert entry is not None and entry.body == "I loved our walk by the river"


def test_rotation_keeps_old_tokens_readable() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = Cipher([old]).encrypt("hello")
    rotated_cipher = Cipher([new, old])
    assert rotated_cipher.decrypt(token) == "hello"
    rotated = rotated_cipher.rotate(token)
    assert Cipher([new]).decrypt(rotated) == "hello"


def test_rotating_the_app_key_keeps_rows_readable(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db)
    db.flush()
    original = runtime.settings.data_encryption_key
    new_key = Fernet.generate_key().decode()
    try:
        install_cipher((new_key, *original))
        db.expire_all()
        assert db.get(type(couple.partners[0]), couple.partners[0].id).first_name == "Alex"  # type: ignore[union-attr]
    finally:
        install_cipher(original)


def test_rotate_all_rewrites_rows_under_the_newest_key(db: Session, runtime: Runtime) -> None:
    from service.domain.keys import rotate_all

    couple = make_couple(db)
    db.add(LogEntry(couple_id=couple.id, partner_id=couple.partners[0].id, channel="sms",
                    provider_message_id="SMrotate", body="words to keep"))
    db.flush()
    original = runtime.settings.data_encryption_key
    new_key = Fernet.generate_key().decode()
    try:
        cipher = install_cipher((new_key, *original))
        assert rotate_all(db, cipher) >= 5  # two names, two log tokens, one answer at least
        install_cipher((new_key,))  # the old key is gone: everything must still read
        db.expire_all()
        entry = db.scalar(select(LogEntry).where(LogEntry.provider_message_id == "SMrotate"))
        assert entry is not None and entry.body == "words to keep"
        assert db.get(type(couple.partners[0]), couple.partners[0].id).first_name == "Alex"  # type: ignore[union-attr]
    finally:
        install_cipher(original)

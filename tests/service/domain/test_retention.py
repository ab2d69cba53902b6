"""Consent evidence keeps the signer's address and browser for CONSENT_EVIDENCE_RETENTION, then loses them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.domain.retention import CONSENT_EVIDENCE_RETENTION, PURGED, purge_consent_evidence
from service.models import Channel, ConsentAction, ConsentRecord, ConsentSource
from tests.factories import make_couple


def _record(db: Session, partner_id: int, at: datetime, source: ConsentSource, detail: str) -> ConsentRecord:
    record = ConsentRecord(partner_id=partner_id, channel=Channel.EMAIL, action=ConsentAction.CONFIRMED,
                           occurred_at=at, source=source, source_detail=detail, disclosure_version="v1")
    db.add(record)
    return record


def test_ip_and_user_agent_are_purged_after_the_retention_period(db: Session) -> None:
    now = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)
    partner_id = make_couple(db).partners[0].id
    old = now - CONSENT_EVIDENCE_RETENTION - timedelta(days=1)
    recent = now - CONSENT_EVIDENCE_RETENTION + timedelta(days=1)
    web = _record(db, partner_id, old, ConsentSource.WEB, "ip=203.0.113.9; ua=Mozilla/5.0 (X11; Linux)")
    link = _record(db, partner_id, old, ConsentSource.EMAIL, "link; ip=2001:db8::7; ua=Firefox/120")
    sms = _record(db, partner_id, old, ConsentSource.SMS, "SM0123456789abcdef0123456789abcdef")
    kept = _record(db, partner_id, recent, ConsentSource.WEB, "ip=198.51.100.4; ua=Safari")
    db.flush()

    assert purge_consent_evidence(db, now) == 2
    db.expire_all()
    assert web.source_detail == PURGED and link.source_detail == f"link; {PURGED}"
    assert sms.source_detail == "SM0123456789abcdef0123456789abcdef"  # a MessageSid is no personal data
    assert kept.source_detail == "ip=198.51.100.4; ua=Safari"
    # What the record proves stays: who, which channel, when, how and to which text.
    assert (web.action, web.source, web.occurred_at, web.disclosure_version) == (
        ConsentAction.CONFIRMED, ConsentSource.WEB, old, "v1")
    assert purge_consent_evidence(db, now) == 0
    # The recent record goes once its time has come.
    assert purge_consent_evidence(db, now + timedelta(days=2)) == 1
    db.expire_all()
    assert kept.source_detail == PURGED


def test_the_purge_works_through_a_backlog_in_bounded_batches(db: Session) -> None:
    now = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)
    partner_id = make_couple(db).partners[0].id
    old = now - CONSENT_EVIDENCE_RETENTION - timedelta(days=30)
    for i in range(7):
        _record(db, partner_id, old + timedelta(minutes=i), ConsentSource.WEB, f"ip=192.0.2.{i}; ua=Bot")
    db.flush()
    assert [purge_consent_evidence(db, now, limit=3) for _ in range(4)] == [3, 3, 1, 0]
    cutoff = now - CONSENT_EVIDENCE_RETENTION
    details = db.scalars(select(ConsentRecord.source_detail)
                         .where(ConsentRecord.partner_id == partner_id, ConsentRecord.occurred_at < cutoff))
    assert set(details) == {PURGED}

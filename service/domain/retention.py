"""Housekeeping for personal data we keep only for a while, run by each scheduler pass.

Consent records are kept for as long as the partner's history needs them (an opt-out must keep holding),
but the signer's IP address and browser (user agent), kept as evidence of a web or email-link consent,
are needed only while a consent could still be disputed: CONSENT_EVIDENCE_RETENTION (13 months) after
the consent, they are replaced with a placeholder. The rest of the record (who, channel, when, how, the
disclosure version) stays.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.db import affected_rows
from service.models import ConsentRecord, ControlFlag

CONSENT_EVIDENCE_RETENTION = timedelta(days=396)  # 13 months
PURGE_BATCH = 1000
PURGED = "ip and user agent purged"
# Everything older than this instant is purged already, so a pass only reads what crossed the line since.
PURGED_THROUGH_FLAG = "consent_evidence_purged_through"
_EVIDENCE = "%ip=%"  # how web and email-link consents record the address: "[link; ]ip=...; ua=..."


def purge_consent_evidence(session: Session, now: datetime, *, limit: int = PURGE_BATCH) -> int:
    """Replace the IP address and user agent of consent records older than the retention period with
    PURGED, at most `limit` records per call (one UPDATE); returns how many were purged."""
    cutoff = now - CONSENT_EVIDENCE_RETENTION
    flag = session.get(ControlFlag, PURGED_THROUGH_FLAG, with_for_update=True)
    purged_through = _parse(flag.value) if flag is not None else None
    due = select(ConsentRecord.id).where(
        ConsentRecord.occurred_at < cutoff, ConsentRecord.source_detail.like(_EVIDENCE))
    if purged_through is not None:
        due = due.where(ConsentRecord.occurred_at >= purged_through)
    due = due.order_by(ConsentRecord.occurred_at).limit(limit)
    result = session.execute(
        update(ConsentRecord)
        .where(ConsentRecord.id.in_(due.scalar_subquery()))
        .values(source_detail=func.regexp_replace(ConsentRecord.source_detail, "ip=.*$", PURGED))
        .execution_options(synchronize_session=False)
    )
    purged = affected_rows(result)
    if purged < limit:
        # Nothing older than the cutoff is left to purge: later passes start from here.
        if flag is None:
            session.add(ControlFlag(key=PURGED_THROUGH_FLAG, value=cutoff.isoformat(), updated_at=now))
        elif purged_through is None or cutoff > purged_through:
            flag.value, flag.updated_at = cutoff.isoformat(), now
    session.flush()
    return purged


def _parse(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None

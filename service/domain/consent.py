"""Consent per partner and channel: every change is recorded with when, how and to which wording."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, joinedload

from service.db import affected_rows
from service.models import (
    Channel,
    ConsentAction,
    ConsentRecord,
    ConsentSource,
    ConsentState,
    Couple,
    Nudge,
    NudgeStatus,
    Partner,
)
from service.providers import SendFailure

# Bump when the consent disclosure shown at signup changes; each record keeps the version agreed to.
DISCLOSURE_VERSION = "2026-11-25"


def set_consent(
    session: Session,
    partner: Partner,
    channel: Channel,
    state: ConsentState,
    *,
    action: str,
    source: str,
    source_detail: str | None,
    now: datetime,
    disclosure_version: str | None = DISCLOSURE_VERSION,
) -> None:
    """Move `partner` to `state` on `channel`, with a consent record of what happened and where from.

    `action` and `source` are `ConsentAction` and `ConsentSource` values (a plain string is checked
    against them here, so a typo fails at the call rather than at the flush)."""
    if channel is Channel.SMS:
        partner.sms_consent, partner.sms_consent_at = state, now
    else:
        partner.email_consent, partner.email_consent_at = state, now
    session.add(
        ConsentRecord(
            partner=partner, channel=channel, action=ConsentAction(action), occurred_at=now,
            source=ConsentSource(source),
            source_detail=(source_detail or "")[:512] or None, disclosure_version=disclosure_version,
        )
    )
    if state in (ConsentState.OPTED_OUT, ConsentState.BOUNCED):
        cancel_pending(session, partner.id, channel, reason=f"{channel} {state}")


# What a provider's word about an address does to consent on that channel.
PROVIDER_STOPS: dict[SendFailure, tuple[ConsentState, ConsentAction]] = {
    SendFailure.OPTED_OUT: (ConsentState.OPTED_OUT, ConsentAction.WITHDRAWN),
    SendFailure.BOUNCED: (ConsentState.BOUNCED, ConsentAction.BOUNCED),
}


def provider_stop(
    session: Session, partner: Partner, channel: Channel, failure: SendFailure | None, *, detail: str, now: datetime
) -> bool:
    """Stop `channel` for `partner` when a provider says their address opted out or bounced for good.

    `detail` is the provider's own word for it (its name and code or event, as the provider module gives
    it), kept on the consent record. True when consent changed (a partner who had none, or had already
    stopped, is left alone)."""
    stop = PROVIDER_STOPS.get(failure) if failure is not None else None
    if stop is None or partner.consent(channel) not in (ConsentState.CONFIRMED, ConsentState.PENDING):
        return False
    state, action = stop
    set_consent(session, partner, channel, state, action=action, source=ConsentSource.PROVIDER, source_detail=detail,
                now=now)
    return True


def cancel_pending(session: Session, partner_id: int, channel: Channel | None, *, reason: str) -> int:
    """Cancel what has not reached a provider yet; a nudge already `sending` is left to finish."""
    query = (
        update(Nudge)
        .where(Nudge.partner_id == partner_id)
        .where(Nudge.status.in_([NudgeStatus.SCHEDULED, NudgeStatus.QUEUED]))
        .values(status=NudgeStatus.CANCELLED, status_reason=reason)
    )
    if channel is not None:
        query = query.where(Nudge.channel == channel)
    return affected_rows(session.execute(query))


def partners_by_phone(session: Session, phone: str) -> list[Partner]:
    """Newest first: the same person may belong to more than one couple over time."""
    query = (
        select(Partner).where(Partner.phone_e164 == phone).order_by(Partner.id.desc())
        .options(joinedload(Partner.couple).selectinload(Couple.enrollments))
    )
    return list(session.scalars(query).unique())

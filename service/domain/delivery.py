"""Delivery rules that act on a partner's schedule, and the providers' word on what happened next.

Provider status reports (status callbacks, event webhooks), translated by their provider module into a
`DeliveryReport`, are stored once each, keyed by the provider's own event identity, and only ever move
a nudge forward along `NUDGE_STATUS_RANK`: a repeated or late report changes nothing. A report may also
settle a nudge whose worker died after the provider accepted it (the nudge id travels with the
message), taking it out of operator review.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db import affected_rows, insert_or_ignore, is_row_id
from service.domain.consent import PROVIDER_STOPS, partners_by_phone, provider_stop, set_consent
from service.domain.scheduling import local_date, send_instant
from service.models import (
    NUDGE_STATUS_RANK,
    Channel,
    ConsentState,
    DeliveryEvent,
    EnrollmentStatus,
    Nudge,
    NudgeStatus,
    Partner,
    PartnerSchedule,
)
from service.providers import DeliveryReport, DeliveryStatus

log = logging.getLogger(__name__)

_NO_SYNC = {"synchronize_session": False}


def skip_today(session: Session, partner: Partner, now: datetime) -> bool:
    """Skip the step due later today (local), moving the schedule to the next day's step."""
    schedules = session.scalars(
        select(PartnerSchedule).where(
            PartnerSchedule.partner_id == partner.id, PartnerSchedule.next_send_at.is_not(None)
        )
    ).all()
    today = local_date(partner, now)
    skipped = False
    for schedule in schedules:
        if schedule.enrollment.status != EnrollmentStatus.ACTIVE or schedule.next_send_at is None:
            continue
        if local_date(partner, schedule.next_send_at) == today:
            # Past the last day the planner closes the schedule and sends the invitation instead.
            schedule.next_day += 1
            schedule.next_send_at = send_instant(partner, today + timedelta(days=1))
            skipped = True
    return skipped


# --- provider callbacks --------------------------------------------------------------------------

NUDGE_STATUSES: dict[DeliveryStatus, NudgeStatus] = {
    DeliveryStatus.SENT: NudgeStatus.SENT,
    DeliveryStatus.DELIVERED: NudgeStatus.DELIVERED,
    DeliveryStatus.UNDELIVERED: NudgeStatus.UNDELIVERED,
    DeliveryStatus.FAILED: NudgeStatus.FAILED,
    DeliveryStatus.CANCELLED: NudgeStatus.CANCELLED,
}


@dataclass(frozen=True)
class CallbackResult:
    fresh: bool  # False: seen before, nothing changed
    nudge_id: int | None = None
    moved_to: NudgeStatus | None = None
    suppressed: bool = False
    channel: str | None = None  # the nudge's, when the callback names one
    kind: str | None = None


def record_event_once(
    session: Session, *, provider: str, event_id: str, message_id: str | None, nudge_id: int | None,
    event: str, error_code: str | None, occurred_at: datetime,
) -> bool:
    """Store a provider event unless its id was stored before; True when it is new."""
    values = {"provider": provider, "provider_event_id": event_id[:255],
              "provider_message_id": (message_id or None) and message_id[:128], "nudge_id": nudge_id,
              "event": event[:32], "error_code": error_code, "occurred_at": occurred_at}
    return insert_or_ignore(session, DeliveryEvent, values, conflict=["provider", "provider_event_id"]) is not None


def advance(
    session: Session, nudge_id: int, status: NudgeStatus, *, now: datetime, provider_message_id: str | None = None,
    error_code: str | None = None, reason: str | None = None,
) -> bool:
    """Move a nudge to `status` only if that is forward; True when it moved."""
    earlier = [s for s, rank in NUDGE_STATUS_RANK.items() if rank < NUDGE_STATUS_RANK[status]]
    values: dict[str, Any] = {"status": status, "needs_review": False}
    if status is NudgeStatus.SENT:
        values["sent_at"] = now
    if status is NudgeStatus.DELIVERED:
        values["delivered_at"] = now
    if error_code is not None or status in (NudgeStatus.FAILED, NudgeStatus.UNDELIVERED):
        values["error_code"] = error_code
    if reason is not None:
        values["status_reason"] = reason[:255]
    moved = affected_rows(session.execute(
        update(Nudge).where(Nudge.id == nudge_id, Nudge.status.in_(earlier)).values(**values),
        execution_options=_NO_SYNC,
    ))
    if provider_message_id:
        session.execute(
            update(Nudge).where(Nudge.id == nudge_id, Nudge.provider_message_id.is_(None))
            .values(provider_message_id=provider_message_id),
            execution_options=_NO_SYNC,
        )
    return bool(moved)


def _reported_nudge(session: Session, report: DeliveryReport) -> Nudge | None:
    """The nudge a report is about: by the message id the send stored, else by the nudge id the message
    carried, if that nudge went on the report's channel and stored no other message id."""
    if report.sent_message_id:
        nudge = session.scalars(
            select(Nudge).where(Nudge.provider_message_id == report.sent_message_id).limit(1)).first()
        if nudge is not None:
            return nudge
    if report.nudge_id is None or not is_row_id(report.nudge_id):
        return None  # an id no nudge can have (the callback URL or custom argument was altered) names none
    hinted = session.get(Nudge, report.nudge_id)
    if hinted is None or hinted.channel != report.channel:
        return None
    if report.sent_message_id is not None and hinted.provider_message_id not in (None, report.sent_message_id):
        return None
    return hinted


def apply_delivery_status(session: Session, report: DeliveryReport, *, now: datetime) -> CallbackResult:
    """A provider's status report (already authenticated, translated by its provider module).

    Stored once by (provider, event id). A report with a status moves its nudge forward only; one with a
    failure also keeps the vendor's code on the nudge; an opt-out or a hard bounce stops that channel for
    the partner it concerns (the nudge's, else whoever has the reported address)."""
    nudge = _reported_nudge(session, report)
    fresh = record_event_once(
        session, provider=report.provider, event_id=report.event_id, message_id=report.message_id,
        nudge_id=nudge.id if nudge else None, event=report.event, error_code=report.error_code,
        occurred_at=report.occurred_at or now,
    )
    if not fresh:
        return CallbackResult(fresh=False, nudge_id=nudge.id if nudge else None)
    moved_to = None
    if nudge is not None and report.status is not None:
        target = NUDGE_STATUSES[report.status]
        reason = report.reason
        if reason is None and nudge.needs_review:
            reason = f"settled by {report.provider}'s status report"
        if advance(session, nudge.id, target, now=now, provider_message_id=report.sent_message_id,
                   error_code=report.error_code if report.failure is not None else None, reason=reason):
            moved_to = target
    suppressed = False
    if report.failure in PROVIDER_STOPS:
        partners = [nudge.partner] if nudge is not None else _partners_at(session, report.channel, report.address)
        for partner in partners:
            suppressed |= provider_stop(session, partner, report.channel, report.failure, detail=report.detail,
                                        now=now)
    return CallbackResult(fresh=True, nudge_id=nudge.id if nudge else None, moved_to=moved_to, suppressed=suppressed,
                          channel=str(nudge.channel) if nudge else None, kind=str(nudge.kind) if nudge else None)


def _partners_at(session: Session, channel: Channel, address: str | None) -> list[Partner]:
    if not address:
        return []
    if channel is Channel.SMS:
        return partners_by_phone(session, address)
    return list(session.scalars(select(Partner).where(Partner.email == address)))


def unsubscribe_email(session: Session, partner: Partner, *, source_detail: str, now: datetime) -> bool:
    """Stop email to this partner (a link or an RFC 8058 one-click POST); True when it changed anything."""
    if partner.email_consent in (ConsentState.OPTED_OUT, ConsentState.NONE):
        return False
    set_consent(session, partner, Channel.EMAIL, ConsentState.OPTED_OUT, action="withdrawn", source="email",
                source_detail=source_detail, now=now)
    return True

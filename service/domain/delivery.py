"""Delivery rules that act on a partner's schedule, and the providers' word on what happened next.

Provider callbacks (Twilio status callbacks, SendGrid events) are stored once each, keyed by the
provider's own event identity, and only ever move a nudge forward along `NUDGE_STATUS_RANK`: a repeated
or late callback changes nothing. A callback may also settle a nudge whose worker died after the
provider accepted it (the nudge id travels with the message), taking it out of operator review.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db import affected_rows, insert_or_ignore
from service.domain.consent import set_consent
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

TWILIO_STATUSES: dict[str, NudgeStatus] = {
    "accepted": NudgeStatus.SENT,
    "scheduled": NudgeStatus.SENT,
    "queued": NudgeStatus.SENT,
    "sending": NudgeStatus.SENT,
    "sent": NudgeStatus.SENT,
    "delivered": NudgeStatus.DELIVERED,
    "read": NudgeStatus.DELIVERED,
    "undelivered": NudgeStatus.UNDELIVERED,
    "failed": NudgeStatus.FAILED,
    "canceled": NudgeStatus.CANCELLED,
}
CARRIER_ERRORS = {
    "30003": "unreachable destination handset",
    "30004": "message blocked",
    "30005": "unknown destination handset",
    "30006": "landline or unreachable carrier",
    "30007": "filtered by the carrier",
    "30008": "unknown delivery error",
}
SENDGRID_STATUSES: dict[str, NudgeStatus] = {
    "processed": NudgeStatus.SENT,
    "delivered": NudgeStatus.DELIVERED,
    "bounce": NudgeStatus.UNDELIVERED,
    "dropped": NudgeStatus.FAILED,
}
# Events after which we stop emailing that partner, and what their email consent becomes.
SENDGRID_SUPPRESSIONS: dict[str, ConsentState] = {
    "bounce": ConsentState.BOUNCED,
    "dropped": ConsentState.BOUNCED,
    "spamreport": ConsentState.OPTED_OUT,
    "unsubscribe": ConsentState.OPTED_OUT,
    "group_unsubscribe": ConsentState.OPTED_OUT,
}
_DIGITS = re.compile(r"^\d{1,18}$")


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


def apply_twilio_status(
    session: Session, *, message_sid: str, status: str, error_code: str | None, nudge_hint: int | None,
    now: datetime,
) -> CallbackResult:
    """A Twilio status callback (already authenticated)."""
    nudge = session.scalars(select(Nudge).where(Nudge.provider_message_id == message_sid).limit(1)).first()
    if nudge is None and nudge_hint is not None:
        hinted = session.get(Nudge, nudge_hint)
        if hinted is not None and hinted.channel == Channel.SMS and hinted.provider_message_id in (None, message_sid):
            nudge = hinted
    fresh = record_event_once(
        session, provider="twilio", event_id=f"{message_sid}:{status}", message_id=message_sid,
        nudge_id=nudge.id if nudge else None, event=status, error_code=error_code, occurred_at=now,
    )
    if not fresh or nudge is None or status not in TWILIO_STATUSES:
        return CallbackResult(fresh=fresh, nudge_id=nudge.id if nudge else None)
    target = TWILIO_STATUSES[status]
    reason = None
    if error_code:
        reason = f"carrier error {error_code}: {CARRIER_ERRORS.get(error_code, 'see Twilio error codes')}"
    elif nudge.needs_review:
        reason = "settled by Twilio's status callback"
    moved = advance(session, nudge.id, target, now=now, provider_message_id=message_sid,
                    error_code=error_code, reason=reason)
    return CallbackResult(fresh=True, nudge_id=nudge.id, moved_to=target if moved else None,
                          channel=str(nudge.channel), kind=str(nudge.kind))


def apply_sendgrid_event(session: Session, event: dict[str, Any], now: datetime) -> CallbackResult:
    """One SendGrid Event Webhook event (the batch was already authenticated)."""
    event_id = str(event.get("sg_event_id") or "")
    kind = str(event.get("event") or "")
    if not event_id or not kind:
        raise ValueError("each event needs sg_event_id and event")
    raw_nudge = str(event.get("nudge_id") or "")
    nudge = session.get(Nudge, int(raw_nudge)) if _DIGITS.match(raw_nudge) else None
    if nudge is not None and nudge.channel != Channel.EMAIL:
        nudge = None
    message_id = str(event.get("sg_message_id") or "") or None
    occurred_at = _timestamp(event.get("timestamp")) or now
    status_code = str(event.get("status") or "")[:32] or None
    fresh = record_event_once(
        session, provider="sendgrid", event_id=event_id, message_id=message_id,
        nudge_id=nudge.id if nudge else None, event=kind, error_code=status_code, occurred_at=occurred_at,
    )
    if not fresh:
        return CallbackResult(fresh=False, nudge_id=nudge.id if nudge else None)
    moved_to = None
    is_block = kind == "bounce" and str(event.get("type") or "") == "blocked"
    if nudge is not None and kind in SENDGRID_STATUSES:
        target = SENDGRID_STATUSES[kind]
        reason = f"sendgrid {kind}" + (f" ({status_code})" if status_code else "") if target in (
            NudgeStatus.UNDELIVERED, NudgeStatus.FAILED) else None
        if advance(session, nudge.id, target, now=now, error_code=status_code if reason else None, reason=reason):
            moved_to = target
    suppressed = False
    if kind in SENDGRID_SUPPRESSIONS and not is_block:
        partners = [nudge.partner] if nudge is not None else _partners_by_email(session, event.get("email"))
        state = SENDGRID_SUPPRESSIONS[kind]
        for partner in partners:
            if partner.email_consent in (ConsentState.CONFIRMED, ConsentState.PENDING):
                set_consent(session, partner, Channel.EMAIL, state,
                            action="bounced" if state is ConsentState.BOUNCED else "withdrawn",
                            source="provider", source_detail=f"sendgrid {kind}", now=now)
                suppressed = True
    return CallbackResult(fresh=True, nudge_id=nudge.id if nudge else None, moved_to=moved_to, suppressed=suppressed,
                          channel=str(nudge.channel) if nudge else None, kind=str(nudge.kind) if nudge else None)


def _partners_by_email(session: Session, email: object) -> list[Partner]:
    if not isinstance(email, str) or "@" not in email or len(email) > 320:
        return []
    return list(session.scalars(select(Partner).where(Partner.email == email.strip())))


def _timestamp(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def unsubscribe_email(session: Session, partner: Partner, *, source_detail: str, now: datetime) -> bool:
    """Stop email to this partner (a link or an RFC 8058 one-click POST); True when it changed anything."""
    if partner.email_consent in (ConsentState.OPTED_OUT, ConsentState.NONE):
        return False
    set_consent(session, partner, Channel.EMAIL, ConsentState.OPTED_OUT, action="withdrawn", source="email",
                source_detail=source_detail, now=now)
    return True

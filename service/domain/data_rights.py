"""The couple owns its log: either partner can export it, erase their own words, or ask to forget.

What one partner may do alone: export the shared log, erase their own answers (at once, for good), and
stop their own messages. What needs both: erasing the couple, which removes the other partner's words
too. When one partner asks, the couple is erased as soon as the other asks as well (within 30 days);
the operator command `closer forget` erases at once, for requests made outside the app.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.domain.consent import cancel_pending
from service.models import ConsentRecord, Couple, LogEntry, Nudge, NudgeKind, Partner

FORGET_REQUEST_VALID_FOR = timedelta(days=30)


def export_couple(session: Session, couple: Couple) -> dict[str, Any]:
    names = {p.id: p.first_name for p in couple.partners}
    entries = session.scalars(
        select(LogEntry).where(LogEntry.couple_id == couple.id).order_by(LogEntry.received_at)
    ).all()
    prompts = session.scalars(
        select(Nudge).where(Nudge.partner_id.in_(list(names)), Nudge.kind == NudgeKind.PROMPT)
        .order_by(Nudge.scheduled_for)
    ).all()
    return {
        "couple_id": couple.id,
        "created_at": couple.created_at.isoformat(),
        "partners": [
            {
                "first_name": p.first_name, "phone": p.phone_e164, "email": p.email, "timezone": p.timezone,
                "preferred_time": p.preferred_time.isoformat(timespec="minutes"),
                "sms_consent": p.sms_consent, "email_consent": p.email_consent,
                "consents": [
                    {"channel": c.channel, "action": c.action, "at": c.occurred_at.isoformat(), "source": c.source,
                     "disclosure_version": c.disclosure_version}
                    for c in session.scalars(select(ConsentRecord).where(ConsentRecord.partner_id == p.id))
                ],
            }
            for p in couple.partners
        ],
        "enrollments": [
            {"program": e.program_key, "status": e.status, "created_at": e.created_at.isoformat(),
             "started_at": e.started_at.isoformat() if e.started_at else None}
            for e in couple.enrollments
        ],
        "prompts": [
            {"to": names.get(n.partner_id), "program_day": n.step_day, "channel": n.channel, "status": n.status,
             "sent_at": n.sent_at.isoformat() if n.sent_at else None, "text": n.body_text}
            for n in prompts
        ],
        "answers": [
            {"from": names.get(e.partner_id), "channel": e.channel, "received_at": e.received_at.isoformat(),
             "program_day": e.nudge.step_day if e.nudge else None, "text": e.body, "media_count": e.media_count}
            for e in entries
        ],
    }


def export_csv(data: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["received_at", "from", "channel", "program_day", "text"])
    for answer in data["answers"]:
        writer.writerow([answer["received_at"], answer["from"], answer["channel"], answer["program_day"] or "",
                         _csv_safe(answer["text"])])
    return out.getvalue()


def _csv_safe(value: str) -> str:
    """Spreadsheets run cells that start with = + - @ as formulas; a leading quote keeps them text."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def erase_own_words(session: Session, partner: Partner) -> int:
    result = session.execute(delete(LogEntry).where(LogEntry.partner_id == partner.id))
    return int(getattr(result, "rowcount", 0) or 0)


def request_forget(session: Session, partner: Partner, now: datetime) -> bool:
    """Record this partner's request; True when both have asked and the couple was erased."""
    partner.forget_requested_at = now
    others = [p for p in partner.couple.partners if p.id != partner.id]
    if all(o.forget_requested_at and now - o.forget_requested_at <= FORGET_REQUEST_VALID_FOR for o in others):
        forget_couple(session, partner.couple)
        return True
    return False


def forget_couple(session: Session, couple: Couple) -> None:
    for partner in couple.partners:
        cancel_pending(session, partner.id, None, reason="couple erased")
    session.delete(couple)
    session.flush()

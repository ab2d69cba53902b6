"""The scheduler pass also carries the reply side: it replays the inbound spool and plans soft reminders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.scheduler import run_pass
from service import spool
from service.domain.inbound import InboundSms, receive_sms
from service.models import ControlFlag, LogEntry, Nudge, NudgeKind
from service.providers.twilio_sms import TWILIO
from service.runtime import Runtime
from tests.factories import make_couple, make_sent_prompt


def test_pass_replays_spooled_replies_even_while_sending_is_paused(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db)
    partner = couple.partners[1]
    db.add(ControlFlag(key="sending_paused", value="1"))
    db.commit()
    form = {"from": partner.email or "", "to": f"reply+{partner.reply_token}@{runtime.settings.inbound_email_domain}",
            "text": "kept while the database was away", "headers": "Message-ID: <spool-pass@x>\n"}
    spool.spool_inbound(runtime.redis, "sendgrid_inbound", form)
    result = run_pass(runtime, datetime.now(UTC))
    assert result["spooled_replies"] == 1
    assert spool.depth(runtime.redis) == 0
    assert [e.body for e in db.scalars(select(LogEntry))] == ["kept while the database was away"]


def test_pass_plans_a_soft_reply_reminder(db: Session, runtime: Runtime) -> None:
    sent = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)  # 09:00 in New York
    couple = make_couple(db, start=sent - timedelta(days=6))
    alex, sam = couple.partners
    for partner in (alex, sam):
        make_sent_prompt(db, partner, step_day=5, sent_at=sent)  # appreciation day 5 is a reveal step
    receive_sms(db, InboundSms("SM" + "9" * 32, alex.phone_e164 or "", "+15550000000", "my answer", provider=TWILIO),
                settings=runtime.settings, programs=runtime.programs, now=sent + timedelta(hours=1))
    db.commit()
    run_pass(runtime, sent + timedelta(hours=11))
    reminders = db.scalars(select(Nudge).where(Nudge.kind == NudgeKind.REPLY_REMINDER)).all()
    assert [n.partner_id for n in reminders] == [sam.id]

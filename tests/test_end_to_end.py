"""The whole journey on the real database and Redis, through the same routes and jobs production uses:
signup, both partners confirm (SMS YES and the email link), ticks, prompts sent, one partner replies by
SMS and the other by email, the reveal goes out, and the log shows it all in order."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, time, timedelta

from flask.testing import FlaskClient
from rq import Queue, SimpleWorker
from sqlalchemy import select
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator

from jobs.scheduler import run_pass
from service.models import (
    Couple,
    Enrollment,
    EnrollmentStatus,
    Nudge,
    NudgeKind,
    NudgeStatus,
    OutboxMessage,
    PartnerSchedule,
)
from service.queues import QUEUE_NAMES
from service.runtime import Runtime

ALEX_PHONE = "+14155550142"
REVEAL_DAY = 5  # the appreciation program's first reveal step


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or re.search(
        r'value="([^"]+)"[^>]*name="csrf_token"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def _drain(runtime: Runtime) -> None:
    queues = [Queue(name, connection=runtime.redis) for name in QUEUE_NAMES]
    SimpleWorker(queues, connection=runtime.redis).work(burst=True)


def _outbox(db: Session, recipient: str) -> list[OutboxMessage]:
    db.expire_all()
    return list(db.scalars(select(OutboxMessage).where(OutboxMessage.recipient == recipient)
                           .order_by(OutboxMessage.id)))


def _twilio(client: FlaskClient, runtime: Runtime, sid: str, sender: str, body: str) -> str:
    params = {"MessageSid": sid, "AccountSid": "AC" + "0" * 32, "From": sender, "To": "+15005550006",
              "Body": body, "NumMedia": "0"}
    url = runtime.settings.public_base_url + "/webhooks/twilio/sms"
    signature = RequestValidator(runtime.settings.twilio_auth_token).compute_signature(url, params)
    response = client.post("/webhooks/twilio/sms", data=params, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)


def test_signup_to_shared_log(client: FlaskClient, db: Session, runtime: Runtime) -> None:
    # 1. Alex signs the couple up; Sam lives in London and only gives an email.
    form = {
        "csrf_token": _csrf(client.get("/").get_data(as_text=True)),
        "signer_name": "Alex", "signer_phone": "(415) 555-0142", "signer_email": "",
        "signer_timezone": "America/New_York",
        "invited_name": "Sam", "invited_phone": "", "invited_email": "sam@example.com",
        "invited_timezone": "Europe/London", "preferred_time": "09:00", "program": "appreciation", "website": "",
    }
    response = client.post("/signup", data=form)
    assert response.status_code in (302, 303), response.get_data(as_text=True)[:2000]
    _drain(runtime)
    confirmation_sms = _outbox(db, ALEX_PHONE)
    assert len(confirmation_sms) == 1 and "YES" in confirmation_sms[0].body_text
    confirmation_email = _outbox(db, "sam@example.com")
    assert len(confirmation_email) == 1
    couple = db.scalars(select(Couple).order_by(Couple.id.desc())).first()
    assert couple is not None
    enrollment = db.scalar(select(Enrollment).where(Enrollment.couple_id == couple.id))
    assert enrollment is not None and enrollment.status == EnrollmentStatus.PENDING

    # 2. Alex texts YES; Sam opens the email link (GET shows a button) and confirms (POST).
    reply = _twilio(client, runtime, "SM" + "1" * 32, ALEX_PHONE, "Yes")
    assert "<Message>" in reply
    link = re.search(r"https?://\S+/confirm/([\w.\-]+)", confirmation_email[0].body_text)
    assert link, confirmation_email[0].body_text
    page = client.get(f"/confirm/{link.group(1)}")
    assert page.status_code == 200
    confirmed = client.post(f"/confirm/{link.group(1)}", data={"csrf_token": _csrf(page.get_data(as_text=True))})
    assert confirmed.status_code in (200, 302, 303)
    db.expire_all()
    assert enrollment.status == EnrollmentStatus.ACTIVE

    # 3-4. Scheduler passes at each partner's send times deliver days 1..5, once each. The passes run
    #      on simulated days but the workers send on the real clock, which may be inside a partner's
    #      quiet hours; these two asked for none, so the test holds at any hour it runs.
    alex, sam = couple.partners
    for partner in (alex, sam):
        partner.quiet_start = partner.quiet_end = time(0, 0)
    db.commit()
    for _ in range(40):
        schedules = db.scalars(select(PartnerSchedule).where(PartnerSchedule.enrollment_id == enrollment.id)).all()
        pending = [s for s in schedules if s.next_send_at is not None and s.next_day <= REVEAL_DAY]
        if not pending:
            break
        now = min(s.next_send_at for s in pending if s.next_send_at is not None) + timedelta(seconds=1)
        run_pass(runtime, now)
        _drain(runtime)
        db.expire_all()
    prompts = db.scalars(select(Nudge).where(Nudge.enrollment_id == enrollment.id,
                                             Nudge.kind == NudgeKind.PROMPT)).all()
    assert sorted((n.partner_id, n.step_day) for n in prompts) == sorted(
        [(alex.id, d) for d in range(1, REVEAL_DAY + 1)] + [(sam.id, d) for d in range(1, REVEAL_DAY + 1)])
    assert all(n.status == NudgeStatus.SENT for n in prompts), [(n.step_day, n.status, n.status_reason)
                                                                  for n in prompts]
    assert len(_outbox(db, ALEX_PHONE)) == 1 + REVEAL_DAY  # the confirmation and one prompt a day
    day5_alex = next(n for n in prompts if n.partner_id == alex.id and n.step_day == REVEAL_DAY)
    day5_sam = next(n for n in prompts if n.partner_id == sam.id and n.step_day == REVEAL_DAY)

    # 5. Alex answers by SMS, Sam by email (quoted history stripped), each within the reply window.
    _twilio(client, runtime, "SM" + "2" * 32, ALEX_PHONE, "How you made tea without asking")
    auth = base64.b64encode(f"closer:{runtime.settings.inbound_parse_secret}".encode()).decode()
    inbound = {
        "headers": "Message-ID: <e2e-1@mail.example.com>\n", "from": "Sam <sam@example.com>",
        "to": f"reply+{sam.reply_token}@{runtime.settings.inbound_email_domain}", "subject": "Re: prompt",
        "text": "Your voice note on Tuesday\n\nOn Tue, Alex wrote:\n> old text\n",
        "envelope": json.dumps({"to": [f"reply+{sam.reply_token}@{runtime.settings.inbound_email_domain}"],
                                "from": "sam@example.com"}),
    }
    response = client.post("/webhooks/sendgrid/inbound", data=inbound, headers={"Authorization": f"Basic {auth}"})
    assert response.status_code == 200 and response.get_json()["status"] == "stored"
    assert day5_alex.sent_at and day5_sam.sent_at and day5_alex.sent_at <= datetime.now(UTC)

    # 6. The reveal goes to both partners, once, through the workers (outside quiet hours: sent at once
    #    or released by a later pass).
    run_pass(runtime, datetime.now(UTC) + timedelta(days=1))
    _drain(runtime)
    reveals = db.scalars(select(Nudge).where(Nudge.kind == NudgeKind.REVEAL)).all()
    assert sorted(n.partner_id for n in reveals) == sorted([alex.id, sam.id])
    assert any("Sam answered too" in m.body_text for m in _outbox(db, ALEX_PHONE))
    assert any("How you made tea without asking" in m.body_text for m in _outbox(db, "sam@example.com"))

    # 7. The log shows the prompts and both answers, in order.
    page = client.get(f"/log/{alex.log_token}").get_data(as_text=True)
    assert page.index("How you made tea without asking") < page.index("Your voice note on Tuesday")
    assert "old text" not in page
    assert page.count("card log-day") >= REVEAL_DAY

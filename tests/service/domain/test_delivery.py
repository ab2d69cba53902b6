"""apply_delivery_status acts on a normalised report: any provider's, by its meanings, never by a vendor's code."""

from __future__ import annotations

import dataclasses
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.domain.delivery import apply_delivery_status
from service.models import Channel, ConsentRecord, ConsentState, DeliveryEvent, NudgeStatus
from service.providers import DeliveryReport, DeliveryStatus, SendFailure
from tests.factories import make_couple, make_sent_prompt

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def report(message_id: str | None, **fields: Any) -> DeliveryReport:
    """A report from a made-up provider, whose send-time message id its reports carry."""
    base = DeliveryReport(provider="acme", channel=Channel.SMS, event_id=secrets.token_hex(8), event="done",
                          message_id=message_id, sent_message_id=message_id)
    return dataclasses.replace(base, **fields)


def test_a_report_moves_its_nudge_forward_once(db: Session) -> None:
    nudge = make_sent_prompt(db, make_couple(db).partners[0])
    delivered = report(nudge.provider_message_id, status=DeliveryStatus.DELIVERED)
    first = apply_delivery_status(db, delivered, now=NOW)
    again = apply_delivery_status(db, delivered, now=NOW)
    db.refresh(nudge)
    assert (first.fresh, first.moved_to, again.fresh, again.moved_to) == (True, NudgeStatus.DELIVERED, False, None)
    assert nudge.status == NudgeStatus.DELIVERED
    assert db.scalar(select(func.count(DeliveryEvent.id)).where(DeliveryEvent.provider == "acme")) == 1


def test_an_opted_out_failure_stops_the_channel_with_the_providers_word(db: Session) -> None:
    nudge = make_sent_prompt(db, make_couple(db).partners[0])
    failed = report(nudge.provider_message_id, status=DeliveryStatus.FAILED, error_code="X9",
                    failure=SendFailure.OPTED_OUT, reason="acme says stop", detail="acme X9")
    result = apply_delivery_status(db, failed, now=NOW)
    db.refresh(nudge)
    partner = nudge.partner
    db.refresh(partner)
    assert result.suppressed and partner.consent(Channel.SMS) is ConsentState.OPTED_OUT
    assert partner.consent(Channel.EMAIL) is ConsentState.CONFIRMED
    assert (nudge.status, nudge.error_code, nudge.status_reason) == (NudgeStatus.FAILED, "X9", "acme says stop")
    record = db.scalars(select(ConsentRecord).order_by(ConsentRecord.id.desc())).first()
    assert record is not None and (record.source, record.source_detail) == ("provider", "acme X9")


def test_a_failure_that_is_not_the_addresses_fault_stops_nothing(db: Session) -> None:
    nudge = make_sent_prompt(db, make_couple(db).partners[0])
    for failure in (SendFailure.UNREACHABLE, SendFailure.INVALID_ADDRESS, SendFailure.REJECTED):
        apply_delivery_status(db, report(nudge.provider_message_id, status=DeliveryStatus.UNDELIVERED,
                                         error_code="X1", failure=failure), now=NOW)
    db.refresh(nudge.partner)
    assert nudge.partner.consent(Channel.SMS) is ConsentState.CONFIRMED


def test_without_a_nudge_a_bounce_finds_the_partner_by_the_reported_address(db: Session) -> None:
    partner = make_couple(db).partners[0]
    bounced = report(None, channel=Channel.EMAIL, event="bounce", failure=SendFailure.BOUNCED,
                     detail="acme bounce", address=partner.email)
    assert apply_delivery_status(db, bounced, now=NOW).suppressed
    db.refresh(partner)
    assert partner.consent(Channel.EMAIL) is ConsentState.BOUNCED


def test_a_report_settles_a_nudge_under_review_and_says_who_did(db: Session) -> None:
    nudge = make_sent_prompt(db, make_couple(db).partners[0])
    sid = nudge.provider_message_id
    nudge.status, nudge.provider_message_id, nudge.needs_review = NudgeStatus.SENDING, None, True
    db.flush()
    apply_delivery_status(db, report(sid, status=DeliveryStatus.SENT, nudge_id=nudge.id), now=NOW)
    db.refresh(nudge)
    assert (nudge.status, nudge.provider_message_id, nudge.needs_review) == (NudgeStatus.SENT, sid, False)
    assert nudge.status_reason == "settled by acme's status report"


def test_a_nudge_named_by_id_that_stored_another_message_is_not_this_ones(db: Session) -> None:
    nudge = make_sent_prompt(db, make_couple(db).partners[0])
    stranger = report("SM-other", status=DeliveryStatus.FAILED, nudge_id=nudge.id)
    assert apply_delivery_status(db, stranger, now=NOW).nudge_id is None
    without_ids = report(None, status=DeliveryStatus.DELIVERED, nudge_id=nudge.id)
    assert apply_delivery_status(db, without_ids, now=NOW).moved_to is NudgeStatus.DELIVERED, (
        "a provider whose reports carry no send-time id is matched by the nudge id alone")

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from service.db import make_engine
from service.domain.ops_status import (
    UNKNOWN_CODE,
    channel_rates,
    consent_changes,
    control_state,
    due_by_hour,
    enrollment_counts,
    error_meaning,
    hourly_activity,
    provider_errors,
    review_queue,
    status_report,
)
from service.domain.planner import LAST_PASS_FLAG, SENDING_PAUSED_FLAG
from service.migrations import upgrade
from service.models import (
    ConsentRecord,
    ControlFlag,
    Couple,
    Enrollment,
    EnrollmentStatus,
    LogEntry,
    Nudge,
    NudgeKind,
    NudgeStatus,
    PartnerSchedule,
)
from service.settings import Settings
from tests.factories import make_couple
from tests.support.databases import scratch_database

NOW = datetime(2026, 3, 9, 14, 25, tzinfo=UTC)  # the current hour bucket is 14:00


def at(hours_ago: float) -> datetime:
    return NOW - timedelta(hours=hours_ago)


_days = iter(range(1, 10_000))


def nudge(couple: Couple, *, channel: str = "sms", kind: str = NudgeKind.PROMPT, partner: int = 0,
          **fields: Any) -> Nudge:
    made = Nudge(enrollment=couple.enrollments[0], partner=couple.partners[partner], kind=kind,
                 step_day=next(_days), channel=channel, **fields)
    return made


@pytest.fixture()
def couple(db: Session) -> Couple:
    return make_couple(db, start=NOW - timedelta(days=3))


def test_hourly_activity_buckets_by_utc_hour(db: Session, couple: Couple) -> None:
    db.add_all([
        nudge(couple, status=NudgeStatus.SENT, sending_at=at(0.2), sent_at=at(0.2)),  # 14:13 -> last bucket
        nudge(couple, status=NudgeStatus.DELIVERED, sending_at=at(6), sent_at=at(6), delivered_at=at(5.9)),  # 08:25
        nudge(couple, status=NudgeStatus.SENT, channel="email", sending_at=at(6.1), sent_at=at(6.1)),  # 08:19
        nudge(couple, status=NudgeStatus.FAILED, sending_at=at(6.2), error_code="21211"),  # failed at 08:13
        nudge(couple, status=NudgeStatus.UNDELIVERED, sending_at=at(6.3), sent_at=at(6.3), error_code="30003"),
        nudge(couple, status=NudgeStatus.SENT, sending_at=at(23.3), sent_at=at(23.3)),  # 15:07 yesterday: bucket 0
        nudge(couple, status=NudgeStatus.SENT, sending_at=at(23.5), sent_at=at(23.5)),  # 14:55 yesterday: outside
        nudge(couple, status=NudgeStatus.SENT, sending_at=NOW + timedelta(hours=1), sent_at=NOW + timedelta(hours=1)),
        nudge(couple, status=NudgeStatus.QUEUED, queued_at=at(1)),  # not sent yet
    ])
    db.flush()
    db.add(LogEntry(couple_id=couple.id, partner_id=couple.partners[0].id, channel="sms",
                    provider_message_id="SMr1", body="private words", received_at=at(5.5)))  # 08:55
    db.flush()

    activity = hourly_activity(db, NOW)

    assert len(activity.hours) == 24
    assert activity.hours[0] == datetime(2026, 3, 8, 15, tzinfo=UTC)
    assert activity.hours[-1] == datetime(2026, 3, 9, 14, tzinfo=UTC)
    eight = activity.hours.index(datetime(2026, 3, 9, 8, tzinfo=UTC))
    assert activity.sends[-1] == 1
    assert activity.sends[eight] == 3  # delivered, email, undelivered (all were handed over)
    assert activity.sends[0] == 1
    assert activity.deliveries[eight] == 1
    assert activity.failures[eight] == 2  # refused at once (21211) and undelivered later (30003)
    assert activity.replies[eight] == 1
    assert activity.totals == {"sends": 5, "deliveries": 1, "failures": 2, "replies": 1}


def test_hourly_activity_is_empty_without_traffic(db: Session) -> None:
    activity = hourly_activity(db, NOW)
    assert activity.sends == activity.deliveries == activity.failures == activity.replies == [0] * 24


def test_channel_rates(db: Session, couple: Couple) -> None:
    db.add_all([
        nudge(couple, status=NudgeStatus.DELIVERED, sending_at=at(2), sent_at=at(2), delivered_at=at(2)),
        nudge(couple, status=NudgeStatus.DELIVERED, sending_at=at(3), sent_at=at(3), delivered_at=at(3)),
        nudge(couple, status=NudgeStatus.UNDELIVERED, sending_at=at(3), sent_at=at(3), error_code="30005"),
        nudge(couple, status=NudgeStatus.SENT, kind=NudgeKind.CONFIRMATION, sending_at=at(3), sent_at=at(3)),
        nudge(couple, status=NudgeStatus.SENT, channel="email", sending_at=at(4), sent_at=at(4)),
        nudge(couple, status=NudgeStatus.SENT, channel="email", sending_at=at(30), sent_at=at(30)),  # too old
    ])
    db.flush()
    prompt = db.scalars(select(Nudge).where(Nudge.status == NudgeStatus.DELIVERED)).first()
    assert prompt is not None
    db.add_all([
        LogEntry(couple_id=couple.id, partner_id=couple.partners[0].id, nudge_id=prompt.id, channel="sms",
                 provider_message_id="SMa", body="one", received_at=at(1)),
        LogEntry(couple_id=couple.id, partner_id=couple.partners[0].id, nudge_id=None, channel="sms",
                 provider_message_id="SMb", body="outside the reply window, still a reply", received_at=at(1)),
    ])
    db.flush()
    rates = {r.channel: r for r in channel_rates(db, NOW)}
    sms, email = rates["sms"], rates["email"]
    assert (sms.sent, sms.delivered, sms.failed, sms.prompts_sent, sms.replies) == (4, 2, 1, 3, 2)
    assert (sms.delivery_rate, sms.failure_rate, sms.reply_rate) == (0.5, 0.25, 0.6667)
    assert (email.sent, email.delivered, email.prompts_sent) == (1, 0, 1)
    assert email.delivery_rate == 0.0 and email.reply_rate == 0.0
    assert channel_rates(db, NOW + timedelta(days=3))[0].delivery_rate is None


def test_consent_changes_count_opt_outs_and_bounces(db: Session, couple: Couple) -> None:
    first, second = couple.partners
    db.add_all([
        ConsentRecord(partner=first, channel="sms", action="withdrawn", occurred_at=at(1), source="sms"),
        ConsentRecord(partner=second, channel="sms", action="withdrawn", occurred_at=at(2), source="provider"),
        ConsentRecord(partner=second, channel="email", action="bounced", occurred_at=at(3), source="provider"),
        ConsentRecord(partner=first, channel="email", action="withdrawn", occurred_at=at(25), source="email"),
        ConsentRecord(partner=first, channel="sms", action="resumed", occurred_at=at(0.5), source="sms"),
    ])
    db.flush()
    changes = consent_changes(db, NOW)
    assert changes.opt_outs == {"sms": 2, "email": 0}
    assert changes.bounces == {"sms": 0, "email": 1}
    assert changes.window_hours == 24


def test_enrollment_counts_by_status_and_program(db: Session) -> None:
    make_couple(db, program="appreciation")
    make_couple(db, program="appreciation")
    make_couple(db, program="appreciation", confirmed=False)
    other = make_couple(db, program="appreciation")
    db.add(Enrollment(couple=other, program_key="rituals", status=EnrollmentStatus.COMPLETED))
    db.flush()
    counts = {(c.program, c.status): c.count for c in enrollment_counts(db)}
    assert counts == {("appreciation", "active"): 3, ("appreciation", "pending"): 1, ("rituals", "completed"): 1}


def test_due_by_hour_from_partner_schedules(db: Session, couple: Couple) -> None:
    schedules = db.scalars(select(PartnerSchedule)).all()
    assert len(schedules) == 2
    schedules[0].next_send_at = NOW + timedelta(minutes=10)  # 14:35, this hour
    schedules[1].next_send_at = NOW - timedelta(minutes=3)  # overdue
    extra = make_couple(db, start=NOW - timedelta(days=3))
    later = db.scalars(select(PartnerSchedule).where(PartnerSchedule.partner_id.in_([p.id for p in extra.partners])))
    for schedule, offset in zip(later, (timedelta(hours=5), timedelta(hours=30)), strict=True):
        schedule.next_send_at = NOW + offset  # 19:25 today, and beyond the window
    db.flush()
    due = due_by_hour(db, NOW)
    assert due.hours[0] == datetime(2026, 3, 9, 14, tzinfo=UTC) and len(due.hours) == 24
    assert due.counts[0] == 1 and due.counts[5] == 1
    assert due.total == 2 and due.overdue == 1


def test_provider_errors_with_meanings(db: Session, couple: Couple) -> None:
    db.add_all([
        nudge(couple, status=NudgeStatus.FAILED, sending_at=at(1), error_code="21610"),
        nudge(couple, status=NudgeStatus.FAILED, sending_at=at(2), error_code="21610"),
        nudge(couple, status=NudgeStatus.UNDELIVERED, sending_at=at(3), sent_at=at(3), error_code="30007"),
        nudge(couple, status=NudgeStatus.SCHEDULED, sending_at=at(0.1), error_code="429"),  # a retry waiting
        nudge(couple, channel="email", status=NudgeStatus.FAILED, sending_at=at(4), error_code="bounce"),
        nudge(couple, status=NudgeStatus.FAILED, sending_at=at(30), error_code="21211"),  # too old
        nudge(couple, status=NudgeStatus.SENT, sending_at=at(1), sent_at=at(1)),  # no error
    ])
    db.flush()
    errors = provider_errors(db, NOW)
    summary = [(e.code, e.channel, e.count) for e in errors.by_code]
    assert summary == [("21610", "sms", 2), ("30007", "sms", 1), ("429", "sms", 1), ("bounce", "email", 1)]
    assert errors.by_code[0].last_seen == at(1)
    assert "STOP" in errors.by_code[0].meaning
    assert [e.code for e in errors.latest] == ["429", "21610", "21610", "30007", "bounce"]
    assert errors.latest[0].meaning.startswith("Provider API: rate limited")


@pytest.mark.parametrize(("channel", "code"), [
    *(("sms", code) for code in ("21211", "21214", "21610", "21614", "30003", "30004", "30005", "30006", "30007",
                                 "30008", "429", "connection", "outcome_unknown")),
    *(("email", code) for code in ("bounce", "dropped", "deferred", "spamreport", "blocked", "401", "429",
                                   "outcome_unknown")),
])
def test_the_codes_operators_meet_have_a_meaning(channel: str, code: str) -> None:
    meaning = error_meaning(channel, code)
    assert meaning and meaning != UNKNOWN_CODE
    assert error_meaning(channel, code.upper()) == meaning
    assert error_meaning(channel, f" {code} ") == meaning


def test_unknown_codes_point_to_the_provider() -> None:
    assert error_meaning("sms", "99999") == UNKNOWN_CODE == "See the provider's documentation for this code."
    assert error_meaning("sms", None) == ""


def test_a_code_is_explained_by_the_providers_of_its_channel() -> None:
    """A SendGrid event name on a text is no SendGrid bounce; a Twilio code on an email is no Twilio code."""
    assert error_meaning("email", "bounce").startswith("SendGrid")
    assert error_meaning("sms", "bounce") == UNKNOWN_CODE
    assert error_meaning("sms", "21610").startswith("Twilio")
    assert error_meaning("email", "21610") == UNKNOWN_CODE


def test_review_queue_lists_ids_not_words(db: Session, couple: Couple) -> None:
    db.add_all([
        nudge(couple, status=NudgeStatus.SENDING, sending_at=at(1), needs_review=True, error_code="outcome_unknown",
              status_reason="worker stopped mid-send; outcome unknown", body_text="secret prompt words"),
        nudge(couple, status=NudgeStatus.SENDING, sending_at=at(0.01)),  # in flight, not under review
    ])
    db.flush()
    review = review_queue(db)
    assert review.count == 1
    item = review.items[0]
    assert (item.channel, item.status, item.error_code) == ("sms", "sending", "outcome_unknown")
    assert "secret prompt words" not in str(review.as_dict())


def test_control_state_reads_the_kill_switch_and_the_last_pass(db: Session) -> None:
    state = control_state(db)
    assert (state.sending_paused, state.scheduler_last_pass, state.scheduler_age_seconds(NOW)) == (False, None, None)
    db.add_all([ControlFlag(key=SENDING_PAUSED_FLAG, value="1", updated_at=at(1)),
                ControlFlag(key=LAST_PASS_FLAG, value=at(0.01).isoformat(), updated_at=at(0.01))])
    db.flush()
    state = control_state(db)
    assert state.sending_paused is True and state.paused_changed_at == at(1)
    assert state.scheduler_last_pass == at(0.01)
    assert state.scheduler_age_seconds(NOW) == pytest.approx(36.0)


def test_status_report_as_dict_is_plain_json(db: Session, couple: Couple) -> None:
    import json

    db.add(nudge(couple, status=NudgeStatus.SENT, sending_at=at(1), sent_at=at(1)))
    db.flush()
    data = status_report(db, NOW).as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["activity"]["totals"]["sends"] == 1


# --- the queries stay on their indexes ----------------------------------------------------------

BIG_TABLES = ("nudges", "log_entries", "consent_records", "enrollments", "partner_schedules")


def _plans(db: Session) -> list[tuple[str, str]]:
    """Run the whole report, then EXPLAIN each statement it issued, with its own parameters."""
    statements: list[tuple[str, Any]] = []
    connection = db.connection()

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(connection, "before_cursor_execute", capture)
    try:
        status_report(db, NOW)
    finally:
        event.remove(connection, "before_cursor_execute", capture)
    plans = []
    # With sequential scans priced out, a query that can use an index does: what is left is a full scan.
    connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
    for statement, parameters in statements:
        rows = connection.exec_driver_sql("EXPLAIN " + statement, parameters).all()
        plans.append((statement, "\n".join(str(row[-1]) for row in rows)))
    connection.exec_driver_sql("SET LOCAL enable_seqscan = on")
    return plans


@pytest.fixture()
def fresh_schema(settings: Settings) -> Iterator[Session]:
    """A session on a newly migrated database of its own. The planner's choice among indexes follows the
    tables' statistics, and the suite's database gathers them from whatever earlier tests committed
    (real gunicorn and worker processes do), so the plans are read where every run starts alike."""
    with scratch_database(settings.database_url, "plans") as url:
        upgrade(settings.with_overrides(database_url=url))
        engine = make_engine(url)
        try:
            with Session(engine) as session:
                yield session
        finally:
            engine.dispose()


def test_every_query_on_a_big_table_uses_an_index(fresh_schema: Session) -> None:
    plans = _plans(fresh_schema)
    assert len(plans) >= 10
    for statement, plan in plans:
        for table in BIG_TABLES:
            assert f"Seq Scan on {table}" not in plan, (statement, plan)
    text = "\n".join(plan for _, plan in plans)
    for index in ("ix_nudges_sent_at_channel_kind", "ix_nudges_delivered_at_channel", "ix_nudges_status_sending_at",
                  "ix_log_entries_received_at_channel", "ix_consent_records_occurred_at",
                  "ix_enrollments_status_program_key", "ix_partner_schedules_next_send_at", "ix_nudges_needs_review"):
        assert index in text, index


@pytest.mark.parametrize(
    ("channel", "code", "expected"),
    [("email", "5.1.1", "no such mailbox"), ("email", "5.4.7", "rejected permanently (SMTP status 5.4.7)"),
     ("email", "4.2.0", "temporary failure"), ("email", "550", "mailbox unavailable"),
     ("sms", "21211", "not a valid phone number")],
)
def test_mail_server_codes_from_sendgrid_have_a_meaning(channel: str, code: str, expected: str) -> None:
    assert expected in error_meaning(channel, code)

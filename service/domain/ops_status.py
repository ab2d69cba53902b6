"""The operator's numbers: counts from SQL, never a couple's words or a full address.

Every query on a large table is bounded by a time window on an indexed column (or reads a small,
indexed subset such as nudges under review), so the page costs what happened in the last day,
not how many couples have ever enrolled:

- sends per hour and per channel: `ix_nudges_sent_at_channel_kind` (index-only on PostgreSQL);
- deliveries: `ix_nudges_delivered_at_channel`;
- failures and provider errors: `ix_nudges_status_sending_at` (status, sending_at, channel, error_code),
  one range per failing status;
- replies: `ix_log_entries_received_at_channel` (the body column is never selected);
- opt-outs and bounces: `ix_consent_records_occurred_at`;
- enrollments: `ix_enrollments_status_program_key`; due soon: `ix_partner_schedules_next_send_at`.

bench/ops_status.py measures the whole report on a million couples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, literal_column, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from service.domain.planner import LAST_PASS_FLAG, SENDING_PAUSED_FLAG
from service.models import (
    Channel,
    ConsentRecord,
    ControlFlag,
    Enrollment,
    LogEntry,
    Nudge,
    NudgeKind,
    NudgeStatus,
    PartnerSchedule,
    UTCDateTime,
)
from service.providers import explain_error

HOUR = timedelta(hours=1)
DAY = timedelta(hours=24)
FAILED_STATUSES = (NudgeStatus.FAILED, NudgeStatus.UNDELIVERED)
# Statuses a nudge can hold while carrying a provider error: final failures, retries waiting, and
# sends whose outcome is unknown.
ERROR_STATUSES = (NudgeStatus.FAILED, NudgeStatus.UNDELIVERED, NudgeStatus.SCHEDULED, NudgeStatus.SENDING)
CHANNELS = (Channel.SMS, Channel.EMAIL)

# Provider modules explain their own codes (service.providers.explain_error); this is for the rest.
UNKNOWN_CODE = "See the provider's documentation for this code."


def error_meaning(channel: str, code: str | None) -> str:
    """What a provider's code on a nudge of `channel` means, in the operator's terms ("" for no code)."""
    if not code:
        return ""
    return explain_error(channel, code) or UNKNOWN_CODE


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _hour_bucket(column: InstrumentedAttribute[Any]) -> ColumnElement[Any]:
    """The UTC hour a timestamp falls in, computed by the database.

    date_bin (PostgreSQL 14+) is the cheapest; formatting each row as text (to_char) cost three times as
    much over a day of a million couples' nudges.
    """
    return func.date_bin(literal_column("interval '1 hour'"), column,
                         literal_column("timestamptz '2000-01-01 00:00:00+00'"), type_=UTCDateTime())


def _grouped(session: Session, column: InstrumentedAttribute[Any], labels: Sequence[InstrumentedAttribute[Any]],
             *where: ColumnElement[bool]) -> list[tuple[datetime, tuple[str, ...], int]]:
    """Counts per UTC hour of `column` and per value of `labels`, in one pass over the window."""
    bucket = _hour_bucket(column).label("hour")
    rows = session.execute(select(bucket, *labels, func.count()).where(*where).group_by(bucket, *labels)).all()
    return [(row[0], tuple(str(v) for v in row[1:-1]), int(row[-1])) for row in rows if row[0] is not None]


# --- traffic: per hour, and per channel ---------------------------------------------------------


@dataclass
class HourlyActivity:
    """Outbound and inbound traffic in each of the last `len(hours)` UTC hours (the last one is partial)."""

    hours: list[datetime]
    sends: list[int]
    deliveries: list[int]
    failures: list[int]
    replies: list[int]

    @property
    def totals(self) -> dict[str, int]:
        return {"sends": sum(self.sends), "deliveries": sum(self.deliveries), "failures": sum(self.failures),
                "replies": sum(self.replies)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "hours": [h.isoformat() for h in self.hours],
            "sends": self.sends, "deliveries": self.deliveries, "failures": self.failures, "replies": self.replies,
            "totals": self.totals,
        }


@dataclass
class ChannelRates:
    channel: str
    sent: int
    delivered: int
    failed: int
    prompts_sent: int
    replies: int

    @property
    def delivery_rate(self) -> float | None:
        return round(self.delivered / self.sent, 4) if self.sent else None

    @property
    def failure_rate(self) -> float | None:
        return round(self.failed / self.sent, 4) if self.sent else None

    @property
    def reply_rate(self) -> float | None:
        return round(self.replies / self.prompts_sent, 4) if self.prompts_sent else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "delivery_rate": self.delivery_rate, "failure_rate": self.failure_rate,
                "reply_rate": self.reply_rate}


def traffic(session: Session, now: datetime, hours: int = 24) -> tuple[HourlyActivity, list[ChannelRates]]:
    """Sends, deliveries, failures and replies in the last `hours` UTC clock hours, per hour and per channel.

    One index scan per kind of event gives both the chart and the rates, so the two always agree.
    Rates are ratios of counts in the same window (deliveries reported in it over messages sent in
    it), not a follow-up of each message: every count stays an index range scan, and over a day
    the difference is the edges.
    """
    end = floor_hour(now) + HOUR
    start = end - hours * HOUR
    buckets = [start + i * HOUR for i in range(hours)]
    index = {hour: i for i, hour in enumerate(buckets)}
    series: dict[str, list[int]] = {k: [0] * hours for k in ("sends", "deliveries", "failures", "replies")}
    per_channel: dict[str, dict[str, int]] = {
        k: dict.fromkeys(CHANNELS, 0) for k in ("sent", "prompts", "delivered", "failed", "replies")
    }

    def tally(name: str, channel_key: str, rows: list[tuple[datetime, tuple[str, ...], int]]) -> None:
        for hour, labels, count in rows:
            if hour in index:
                series[name][index[hour]] += count
                per_channel[channel_key][labels[0]] = per_channel[channel_key].get(labels[0], 0) + count
                if channel_key == "sent" and labels[1] == NudgeKind.PROMPT:
                    per_channel["prompts"][labels[0]] = per_channel["prompts"].get(labels[0], 0) + count

    tally("sends", "sent", _grouped(session, Nudge.sent_at, [Nudge.channel, Nudge.kind],
                                    Nudge.sent_at >= start, Nudge.sent_at < end))
    tally("deliveries", "delivered", _grouped(session, Nudge.delivered_at, [Nudge.channel],
                                              Nudge.delivered_at >= start, Nudge.delivered_at < end))
    # A failure counts in the hour we handed the message over: the chart then reads "of what went
    # out at 8, this much failed", whether the provider refused it at once or a carrier later.
    tally("failures", "failed", _grouped(session, Nudge.sending_at, [Nudge.channel], Nudge.status.in_(FAILED_STATUSES),
                                         Nudge.sending_at >= start, Nudge.sending_at < end))
    tally("replies", "replies", _grouped(session, LogEntry.received_at, [LogEntry.channel],
                                         LogEntry.received_at >= start, LogEntry.received_at < end))
    activity = HourlyActivity(hours=buckets, sends=series["sends"], deliveries=series["deliveries"],
                              failures=series["failures"], replies=series["replies"])
    rates = [
        ChannelRates(channel=str(c), sent=per_channel["sent"][c], delivered=per_channel["delivered"][c],
                     failed=per_channel["failed"][c], prompts_sent=per_channel["prompts"][c],
                     replies=per_channel["replies"][c])
        for c in CHANNELS
    ]
    return activity, rates


def hourly_activity(session: Session, now: datetime, hours: int = 24) -> HourlyActivity:
    return traffic(session, now, hours)[0]


def channel_rates(session: Session, now: datetime, hours: int = 24) -> list[ChannelRates]:
    return traffic(session, now, hours)[1]


# --- consent ------------------------------------------------------------------------------------


@dataclass
class ConsentChanges:
    window_hours: int
    opt_outs: dict[str, int]
    bounces: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def consent_changes(session: Session, now: datetime, window: timedelta = DAY) -> ConsentChanges:
    rows = session.execute(
        select(ConsentRecord.action, ConsentRecord.channel, func.count())
        .where(ConsentRecord.occurred_at >= now - window, ConsentRecord.occurred_at <= now,
               ConsentRecord.action.in_(["withdrawn", "bounced"]))
        .group_by(ConsentRecord.action, ConsentRecord.channel)
    ).all()
    opt_outs = {str(c): 0 for c in CHANNELS}
    bounces = {str(c): 0 for c in CHANNELS}
    for action, channel, count in rows:
        (opt_outs if action == "withdrawn" else bounces)[str(channel)] = int(count)
    return ConsentChanges(window_hours=int(window.total_seconds() // 3600), opt_outs=opt_outs, bounces=bounces)


# --- enrollments and what is due ----------------------------------------------------------------


@dataclass
class EnrollmentCount:
    program: str
    status: str
    count: int


def enrollment_counts(session: Session) -> list[EnrollmentCount]:
    rows = session.execute(
        select(Enrollment.status, Enrollment.program_key, func.count())
        .group_by(Enrollment.status, Enrollment.program_key)
        .order_by(Enrollment.program_key, Enrollment.status)
    ).all()
    return [EnrollmentCount(program=str(program), status=str(status), count=int(count))
            for status, program, count in rows]


@dataclass
class DueSoon:
    """Partner schedules due in each of the next hours; `overdue` are already due, awaiting a pass."""

    hours: list[datetime]
    counts: list[int]
    overdue: int

    @property
    def total(self) -> int:
        return sum(self.counts)

    def as_dict(self) -> dict[str, Any]:
        return {"hours": [h.isoformat() for h in self.hours], "counts": self.counts, "overdue": self.overdue,
                "total": self.total}


def due_by_hour(session: Session, now: datetime, hours: int = 24) -> DueSoon:
    start = floor_hour(now)
    end = start + hours * HOUR
    buckets = [start + i * HOUR for i in range(hours)]
    due: dict[datetime, int] = {}
    for hour, _, count in _grouped(session, PartnerSchedule.next_send_at, [],
                                   PartnerSchedule.next_send_at > now, PartnerSchedule.next_send_at < end):
        due[hour] = due.get(hour, 0) + count
    overdue = session.scalar(select(func.count()).where(PartnerSchedule.next_send_at <= now)) or 0
    return DueSoon(hours=buckets, counts=[due.get(h, 0) for h in buckets], overdue=int(overdue))


# --- provider errors and review -----------------------------------------------------------------


@dataclass
class ErrorSummary:
    code: str
    channel: str
    count: int
    last_seen: datetime | None
    meaning: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "last_seen": self.last_seen.isoformat() if self.last_seen else None}


@dataclass
class RecentError:
    nudge_id: int
    channel: str
    kind: str
    status: str
    code: str
    meaning: str
    at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at.isoformat() if self.at else None}


@dataclass
class ProviderErrors:
    window_hours: int
    by_code: list[ErrorSummary]
    latest: list[RecentError]

    def as_dict(self) -> dict[str, Any]:
        return {"window_hours": self.window_hours, "by_code": [e.as_dict() for e in self.by_code],
                "latest": [e.as_dict() for e in self.latest]}


def provider_errors(session: Session, now: datetime, window: timedelta = DAY, latest: int = 20) -> ProviderErrors:
    """The codes providers gave us on messages handed over in the window, and the latest few."""
    in_window = (Nudge.status.in_(ERROR_STATUSES), Nudge.sending_at >= now - window, Nudge.sending_at <= now,
                 Nudge.error_code.is_not(None))
    summary = session.execute(
        select(Nudge.error_code, Nudge.channel, func.count(), func.max(Nudge.sending_at))
        .where(*in_window).group_by(Nudge.error_code, Nudge.channel)
    ).all()
    by_code = sorted(
        (ErrorSummary(code=str(code), channel=str(channel), count=int(count), last_seen=last,
                      meaning=error_meaning(channel, code)) for code, channel, count, last in summary),
        key=lambda e: (-e.count, e.code, e.channel),
    )
    # The newest few per status, each read backwards along (status, sending_at): a handful of rows,
    # however many errors the day had.
    rows: list[Any] = []
    for status in ERROR_STATUSES:
        rows.extend(session.execute(
            select(Nudge.id, Nudge.channel, Nudge.kind, Nudge.status, Nudge.error_code, Nudge.sending_at)
            .where(Nudge.status == status, *in_window[1:])
            .order_by(Nudge.sending_at.desc(), Nudge.id.desc()).limit(latest)
        ).all())
    rows.sort(key=lambda row: (row[5], row[0]), reverse=True)
    recent = [RecentError(nudge_id=int(i), channel=str(ch), kind=str(k), status=str(st), code=str(code),
                          meaning=error_meaning(ch, code), at=at) for i, ch, k, st, code, at in rows[:latest]]
    return ProviderErrors(window_hours=int(window.total_seconds() // 3600), by_code=by_code, latest=recent)


def _flag_time(value: str) -> datetime:
    """A time a control flag keeps as text (ISO 8601; one without a zone is taken as UTC)."""
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass
class ReviewItem:
    nudge_id: int
    channel: str
    kind: str
    status: str
    attempts: int
    error_code: str | None
    reason: str | None
    sending_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sending_at": self.sending_at.isoformat() if self.sending_at else None}


@dataclass
class ReviewQueue:
    count: int
    items: list[ReviewItem] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "items": [i.as_dict() for i in self.items]}


def review_queue(session: Session, limit: int = 50) -> ReviewQueue:
    """Nudges whose outcome is unknown, oldest first; few, and found through `ix_nudges_needs_review`."""
    count = session.scalar(select(func.count()).where(Nudge.needs_review.is_(True))) or 0
    rows = session.execute(
        select(Nudge.id, Nudge.channel, Nudge.kind, Nudge.status, Nudge.attempts, Nudge.error_code,
               Nudge.status_reason, Nudge.sending_at)
        .where(Nudge.needs_review.is_(True)).order_by(Nudge.id).limit(limit)
    ).all()
    items = [ReviewItem(nudge_id=int(i), channel=str(ch), kind=str(k), status=str(st), attempts=int(a or 0),
                        error_code=code, reason=reason, sending_at=at)
             for i, ch, k, st, a, code, reason, at in rows]
    return ReviewQueue(count=int(count), items=items)


# --- controls -----------------------------------------------------------------------------------


@dataclass
class ControlState:
    sending_paused: bool
    paused_changed_at: datetime | None
    scheduler_last_pass: datetime | None

    def scheduler_age_seconds(self, now: datetime) -> float | None:
        if self.scheduler_last_pass is None:
            return None
        return max(0.0, (now - self.scheduler_last_pass).total_seconds())

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "sending_paused": self.sending_paused,
            "paused_changed_at": self.paused_changed_at.isoformat() if self.paused_changed_at else None,
            "scheduler_last_pass": self.scheduler_last_pass.isoformat() if self.scheduler_last_pass else None,
            "scheduler_age_seconds": self.scheduler_age_seconds(now),
        }


def control_state(session: Session) -> ControlState:
    flags = {f.key: f for f in session.scalars(
        select(ControlFlag).where(ControlFlag.key.in_([SENDING_PAUSED_FLAG, LAST_PASS_FLAG]))
    )}
    paused = flags.get(SENDING_PAUSED_FLAG)
    last_pass = flags.get(LAST_PASS_FLAG)
    last_pass_at: datetime | None = None
    if last_pass is not None:
        try:
            last_pass_at = _flag_time(last_pass.value)
        except ValueError:
            last_pass_at = last_pass.updated_at
    return ControlState(
        sending_paused=paused is not None and paused.value == "1",
        paused_changed_at=paused.updated_at if paused is not None else None,
        scheduler_last_pass=last_pass_at,
    )


@dataclass
class StatusReport:
    """Everything SQL knows for the status page; `as_dict` is what /ops/status.json serves."""

    now: datetime
    activity: HourlyActivity
    channels: list[ChannelRates]
    consent: ConsentChanges
    enrollments: list[EnrollmentCount]
    due: DueSoon
    errors: ProviderErrors
    review: ReviewQueue
    controls: ControlState

    def as_dict(self) -> dict[str, Any]:
        return {
            "activity": self.activity.as_dict(),
            "channels": [c.as_dict() for c in self.channels],
            "consent": self.consent.as_dict(),
            "enrollments": [asdict(e) for e in self.enrollments],
            "due": self.due.as_dict(),
            "provider_errors": self.errors.as_dict(),
            "review": self.review.as_dict(),
            "controls": self.controls.as_dict(self.now),
        }


def status_report(session: Session, now: datetime) -> StatusReport:
    activity, channels = traffic(session, now)
    return StatusReport(
        now=now,
        activity=activity,
        channels=channels,
        consent=consent_changes(session, now),
        enrollments=enrollment_counts(session),
        due=due_by_hour(session, now),
        errors=provider_errors(session, now),
        review=review_queue(session),
        controls=control_state(session),
    )

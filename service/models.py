"""The data model. Models never commit: the view or job that owns the transaction does."""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime, time

from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Time,
    UniqueConstraint,
)
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from service.crypto import EncryptedText
from service.db import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamptz read back as an aware datetime in UTC (psycopg gives the session's time zone); a
    naive datetime is refused rather than guessed at."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return None if value is None else value.astimezone(UTC)


def _enum_values(enum_class: type[enum.StrEnum]) -> list[str]:
    return [member.value for member in enum_class]


def stored_enum(enum_class: type[enum.StrEnum], length: int) -> SqlEnum:
    """A column of `enum_class` stored as the plain VARCHAR(length) of its lowercase values: no native
    type and no CHECK constraint, so the schema is what it was as a String column. Rows read back as
    members; a string that is not one of the values is refused before it reaches the database."""
    return SqlEnum(enum_class, native_enum=False, create_constraint=False, length=length,
                   values_callable=_enum_values, validate_strings=True)


class Channel(enum.StrEnum):
    SMS = "sms"
    EMAIL = "email"


class ConsentState(enum.StrEnum):
    NONE = "none"  # no address on this channel
    PENDING = "pending"  # asked, not yet confirmed
    CONFIRMED = "confirmed"
    OPTED_OUT = "opted_out"
    BOUNCED = "bounced"


class EnrollmentStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for both partners to confirm
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class NudgeKind(enum.StrEnum):
    PROMPT = "prompt"
    CONFIRMATION = "confirmation"
    CONFIRMATION_REMINDER = "confirmation_reminder"
    REVEAL = "reveal"
    REPLY_REMINDER = "reply_reminder"
    PROGRAM_COMPLETE = "program_complete"
    # A keyword's answer that could not go back in TwiML (the text waited in the spool): sent as a message.
    KEYWORD_ANSWER = "keyword_answer"


class ConsentAction(enum.StrEnum):
    """What a consent record did."""

    REQUESTED = "requested"  # asked at signup
    CONFIRMED = "confirmed"
    WITHDRAWN = "withdrawn"  # STOP, an unsubscribe, or a provider's opt-out
    RESUMED = "resumed"  # START after a STOP
    BOUNCED = "bounced"


class ConsentSource(enum.StrEnum):
    """Where a consent change came from."""

    WEB = "web"
    SMS = "sms"
    EMAIL = "email"
    PROVIDER = "provider"


class InboundKind(enum.StrEnum):
    """What an inbound message turned out to be, as recorded once per provider message id."""

    KEYWORD = "keyword"
    REPLY = "reply"
    UNKNOWN_SENDER = "unknown_sender"  # a text from a number no partner has
    UNKNOWN_TOKEN = "unknown_token"  # noqa: S105 - an email to a reply address no partner has
    WRONG_SENDER = "wrong_sender"  # an email to a partner's reply address from another address


class NudgeStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    UNDELIVERED = "undelivered"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


# A status callback may only move a nudge forward along this order; terminal failures rank with delivery.
NUDGE_STATUS_RANK = {
    NudgeStatus.SCHEDULED: 0,
    NudgeStatus.QUEUED: 1,
    NudgeStatus.SENDING: 2,
    NudgeStatus.SENT: 3,
    NudgeStatus.DELIVERED: 4,
    NudgeStatus.UNDELIVERED: 4,
    NudgeStatus.FAILED: 4,
    NudgeStatus.SKIPPED: 4,
    NudgeStatus.CANCELLED: 4,
}


class Couple(Base):
    __tablename__ = "couples"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    signup_ip: Mapped[str | None] = mapped_column(String(64))

    partners: Mapped[list[Partner]] = relationship(
        back_populates="couple", order_by="Partner.position", cascade="all, delete-orphan"
    )
    enrollments: Mapped[list[Enrollment]] = relationship(
        back_populates="couple", order_by="Enrollment.id", cascade="all, delete-orphan"
    )


class Partner(Base):
    __tablename__ = "partners"
    __table_args__ = (UniqueConstraint("couple_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    couple_id: Mapped[int] = mapped_column(ForeignKey("couples.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # 1 signed the couple up, 2 was invited
    first_name: Mapped[str] = mapped_column(EncryptedText)
    phone_e164: Mapped[str | None] = mapped_column(String(20), index=True)
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    timezone: Mapped[str] = mapped_column(String(64))
    preferred_time: Mapped[time] = mapped_column(Time)
    quiet_start: Mapped[time] = mapped_column(Time, default=time(21, 30))
    quiet_end: Mapped[time] = mapped_column(Time, default=time(8, 0))
    sms_consent: Mapped[ConsentState] = mapped_column(stored_enum(ConsentState, 16), default=ConsentState.NONE)
    sms_consent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    email_consent: Mapped[ConsentState] = mapped_column(stored_enum(ConsentState, 16), default=ConsentState.NONE)
    email_consent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    paused_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reply_token: Mapped[str] = mapped_column(String(32), unique=True)
    # Each partner has their own link to the shared log, so revoking one never breaks the other's.
    # The hash finds it; the encrypted copy lets LOG text it back.
    log_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    log_token: Mapped[str] = mapped_column(EncryptedText)
    log_token_issued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Erasing the couple (both partners' words) needs both partners to ask; see domain/data_rights.py.
    forget_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When a partner who has not confirmed yet is next reminded (at most twice); None once done.
    # Indexed so the scheduler reads only who is due; see domain/signup.py.
    confirm_reminder_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    couple: Mapped[Couple] = relationship(back_populates="partners")
    consents: Mapped[list[ConsentRecord]] = relationship(
        back_populates="partner", order_by="ConsentRecord.id", cascade="all, delete-orphan"
    )

    def consent(self, channel: Channel) -> ConsentState:
        return self.sms_consent if channel is Channel.SMS else self.email_consent

    @property
    def is_confirmed(self) -> bool:
        return ConsentState.CONFIRMED in (self.consent(Channel.SMS), self.consent(Channel.EMAIL))


def mask_phone(phone: str | None) -> str:
    """What logs and the operator see of a number: the country code and the last two digits."""
    if not phone:
        return ""
    return phone[:2] + "*" * max(len(phone) - 4, 0) + phone[-2:]


class ConsentRecord(Base):
    """Append-only history of consent: what was agreed or withdrawn, when, how, and to which text."""

    __tablename__ = "consent_records"

    id: Mapped[int] = mapped_column(primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id", ondelete="CASCADE"), index=True)
    channel: Mapped[Channel] = mapped_column(stored_enum(Channel, 8))
    action: Mapped[ConsentAction] = mapped_column(stored_enum(ConsentAction, 16))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    source: Mapped[ConsentSource] = mapped_column(stored_enum(ConsentSource, 16))
    source_detail: Mapped[str | None] = mapped_column(String(512))  # IP and user agent, or MessageSid
    disclosure_version: Mapped[str | None] = mapped_column(String(32))

    partner: Mapped[Partner] = relationship(back_populates="consents")


class Enrollment(Base):
    __tablename__ = "enrollments"
    # The operator's count by status and program reads this index alone.
    __table_args__ = (Index("ix_enrollments_status_program_key", "status", "program_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    couple_id: Mapped[int] = mapped_column(ForeignKey("couples.id", ondelete="CASCADE"), index=True)
    program_key: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[EnrollmentStatus] = mapped_column(
        stored_enum(EnrollmentStatus, 16), default=EnrollmentStatus.PENDING, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    couple: Mapped[Couple] = relationship(back_populates="enrollments")
    schedules: Mapped[list[PartnerSchedule]] = relationship(
        back_populates="enrollment", cascade="all, delete-orphan"
    )


class PartnerSchedule(Base):
    """Where one partner stands in one enrollment: the next step and when it is due (UTC).

    The scheduler reads only rows whose `next_send_at` has come, through its index, so a pass costs what
    is due rather than how many couples exist.
    """

    __tablename__ = "partner_schedules"
    __table_args__ = (UniqueConstraint("enrollment_id", "partner_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    enrollment_id: Mapped[int] = mapped_column(ForeignKey("enrollments.id", ondelete="CASCADE"))
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id", ondelete="CASCADE"), index=True)
    next_day: Mapped[int] = mapped_column(Integer, default=1)
    first_local_date: Mapped[date | None] = mapped_column(Date)
    next_send_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)

    enrollment: Mapped[Enrollment] = relationship(back_populates="schedules")
    partner: Mapped[Partner] = relationship()


class Nudge(Base):
    __tablename__ = "nudges"
    __table_args__ = (
        UniqueConstraint("enrollment_id", "kind", "step_day", "partner_id", "channel"),
        Index("ix_nudges_status_scheduled_for", "status", "scheduled_for"),
        # The operator's numbers: each a time-window range scan (service/domain/ops_status.py).
        Index("ix_nudges_sent_at_channel_kind", "sent_at", "channel", "kind"),
        Index("ix_nudges_delivered_at_channel", "delivered_at", "channel"),
        Index("ix_nudges_status_sending_at", "status", "sending_at", "channel", "error_code"),
        # An inbound reply looks up its partner's latest prompt: without sent_at beside partner_id, the
        # planner walks the sent_at index backwards through every partner's recent sends instead.
        Index("ix_nudges_partner_id_sent_at", "partner_id", "sent_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    enrollment_id: Mapped[int] = mapped_column(ForeignKey("enrollments.id", ondelete="CASCADE"))
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id", ondelete="CASCADE"))
    kind: Mapped[NudgeKind] = mapped_column(stored_enum(NudgeKind, 32), default=NudgeKind.PROMPT)
    step_day: Mapped[int] = mapped_column(Integer, default=0)
    channel: Mapped[Channel] = mapped_column(stored_enum(Channel, 8))
    status: Mapped[NudgeStatus] = mapped_column(stored_enum(NudgeStatus, 16), default=NudgeStatus.SCHEDULED)
    status_reason: Mapped[str | None] = mapped_column(String(255))
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sending_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    provider_message_id: Mapped[str | None] = mapped_column(String(128), index=True)
    error_code: Mapped[str | None] = mapped_column(String(32))
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    # The RQ job last asked to send this nudge: the scheduler re-enqueues a `queued` nudge only when
    # that job is gone from Redis, not every few minutes while a long queue drains.
    send_job_id: Mapped[str | None] = mapped_column(String(64))
    subject: Mapped[str | None] = mapped_column(EncryptedText)
    body_text: Mapped[str | None] = mapped_column(EncryptedText)
    body_html: Mapped[str | None] = mapped_column(EncryptedText)

    partner: Mapped[Partner] = relationship()
    enrollment: Mapped[Enrollment] = relationship()


class InboundMessage(Base):
    """Every accepted inbound message, once, by the provider's id: the dedupe record for retries."""

    __tablename__ = "inbound_messages"
    __table_args__ = (UniqueConstraint("provider", "provider_message_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    provider_message_id: Mapped[str] = mapped_column(String(255))
    channel: Mapped[Channel] = mapped_column(stored_enum(Channel, 8))
    partner_id: Mapped[int | None] = mapped_column(ForeignKey("partners.id", ondelete="SET NULL"), index=True)
    kind: Mapped[InboundKind] = mapped_column(stored_enum(InboundKind, 16))
    keyword: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LogEntry(Base):
    """A partner's answer in the couple's shared log."""

    __tablename__ = "log_entries"
    __table_args__ = (
        UniqueConstraint("provider_message_id"),
        # The operator's replies per hour and per channel, index-only.
        Index("ix_log_entries_received_at_channel", "received_at", "channel"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    couple_id: Mapped[int] = mapped_column(ForeignKey("couples.id", ondelete="CASCADE"), index=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id", ondelete="CASCADE"), index=True)
    nudge_id: Mapped[int | None] = mapped_column(ForeignKey("nudges.id", ondelete="SET NULL"), index=True)
    channel: Mapped[Channel] = mapped_column(stored_enum(Channel, 8))
    provider_message_id: Mapped[str] = mapped_column(String(255))
    body: Mapped[str] = mapped_column(EncryptedText)
    media_count: Mapped[int] = mapped_column(Integer, default=0)
    media_types: Mapped[str | None] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    partner: Mapped[Partner] = relationship()
    nudge: Mapped[Nudge | None] = relationship()


class DeliveryEvent(Base):
    """A provider's word on an outbound message (status callback or event webhook), stored once."""

    __tablename__ = "delivery_events"
    __table_args__ = (UniqueConstraint("provider", "provider_event_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    provider_event_id: Mapped[str] = mapped_column(String(255))
    provider_message_id: Mapped[str | None] = mapped_column(String(128))
    nudge_id: Mapped[int | None] = mapped_column(ForeignKey("nudges.id", ondelete="SET NULL"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(32))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class OutboxMessage(Base):
    """What the console providers "sent": the development outbox at /dev/outbox."""

    __tablename__ = "outbox_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[Channel] = mapped_column(stored_enum(Channel, 8))
    recipient: Mapped[str] = mapped_column(String(320))
    sender: Mapped[str | None] = mapped_column(String(320))
    reply_to: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(EncryptedText)
    body_text: Mapped[str] = mapped_column(EncryptedText)
    body_html: Mapped[str | None] = mapped_column(EncryptedText)
    headers: Mapped[str | None] = mapped_column(Text)
    provider_message_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class OperatorAction(Base):
    __tablename__ = "operator_actions"

    id: Mapped[int] = mapped_column(primary_key=True)
    operator: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ControlFlag(Base):
    """Small pieces of shared state with SQL as the source of truth: the kill switch, the last pass."""

    __tablename__ = "control_flags"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class NumberOptOut(Base):
    """A number that texted STOP while no partner had it: consent is about the number, so a later signup that
    invites it does not text it. Only a keyed hash of the number is kept (`service.domain.number_opt_outs`)."""

    __tablename__ = "number_opt_outs"

    number_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # HMAC-SHA256 hex of the E.164 number
    opted_out_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    source_detail: Mapped[str | None] = mapped_column(String(64))  # the STOP's MessageSid

"""Turning a queued nudge into a provider call, and recording what the provider said.

A send job works through these steps for each nudge; each database step is its own short transaction,
owned by the job:

1. `load_plans`: read everything the send needs, once per batch (only nudges still `queued`).
2. `send_time_guard`: scheduled content a whole day late, or landing in quiet hours, is not sent.
3. `compose`: render the text (prompts are rendered here, per partner, and stored encrypted).
4. `claim`: one conditional UPDATE moves the nudge `queued -> sending`. It succeeds only while the kill
   switch is off, the partner's consent on that channel still holds and (for scheduled content) they are
   not paused. Only the transaction that wins it may call the provider, so a retried or re-run job never
   sends twice. `explain_failed_claim` says why a claim lost, and cancels what must not be sent.
5. the provider call, then `record_sent` or `record_failure`: 429/5xx/connection failures are retried
   later with exponential backoff and jitter (never sooner than Retry-After); permanent errors end the
   nudge as `failed` with the provider's code; an unknown outcome (no answer after the request went out)
   goes to operator review and is never resent.
"""

from __future__ import annotations

import enum
import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta

from sqlalchemy import LargeBinary, and_, select, text, type_coerce, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, aliased

from service.crypto import active_cipher, open_text
from service.db import affected_rows, id_in
from service.domain.consent import PROVIDER_STOPS, provider_stop
from service.domain.planner import OVERDUE_AFTER, SENDING_PAUSED_FLAG
from service.domain.scheduling import (
    UnknownTimeZone,
    first_local_date_after,
    is_quiet_now,
    next_allowed_instant,
    send_instant_at,
)
from service.domain.tokens import make_token
from service.models import (
    Channel,
    ConsentState,
    ControlFlag,
    Enrollment,
    Nudge,
    NudgeKind,
    NudgeStatus,
    Partner,
)
from service.programs import EmailFooter, ProgramLibrary, render_email, render_sms, text_to_html, wrap_email
from service.providers import OutboundEmail, OutboundSms, ProviderError, SendFailure, SendResult
from service.settings import Settings

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 10
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 900.0
# Scheduled content honours the partner's day: pause, quiet hours, lateness. Transactional messages
# (confirmations, keyword answers) go whenever they are asked for.
PAUSABLE_KINDS = frozenset({NudgeKind.PROMPT, NudgeKind.PROGRAM_COMPLETE, NudgeKind.REPLY_REMINDER})
TIMED_KINDS = frozenset({NudgeKind.PROMPT, NudgeKind.PROGRAM_COMPLETE})
_NO_SYNC = {"synchronize_session": False}


class SendOutcome(enum.StrEnum):
    SENT = "sent"
    FAILED = "failed"
    RETRY = "retry"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    RESCHEDULED = "rescheduled"
    REVIEW = "review"
    GONE = "gone"  # no longer queued: sent, cancelled or claimed by another job
    PAUSED = "paused"  # the kill switch is on: left queued


def other_partner(partner: Partner) -> Partner:
    return next(p for p in partner.couple.partners if p.id != partner.id)


def unsubscribe_url(settings: Settings, partner_id: int) -> str:
    token = make_token(settings.secret_key, "unsubscribe", partner_id)
    return f"{settings.public_base_url.rstrip('/')}/unsubscribe/{token}"


def reply_address(settings: Settings, partner: Partner) -> str:
    return f"reply+{partner.reply_token}@{settings.inbound_email_domain}"


@dataclass(frozen=True)
class SendPlan:
    """One nudge as read at the start of its batch: what to send, to whom, under which rules."""

    nudge_id: int
    kind: NudgeKind
    channel: Channel
    partner_id: int
    address: str | None
    scheduled_for: datetime
    attempts: int
    timezone: str
    preferred_time: time
    quiet_start: time
    quiet_end: time
    name: str
    other_name: str
    reply_to: str
    program_key: str
    step_day: int
    subject: str | None = None
    body_text: str | None = None
    body_html: str | None = None


@dataclass(frozen=True)
class Composed:
    message: OutboundSms | OutboundEmail
    store: dict[str, str | None] = field(default_factory=dict)  # rendered now: stored with the claim


def load_plans(session: Session, nudge_ids: list[int], settings: Settings) -> list[SendPlan]:
    """The batch's nudges still `queued`, with what each send needs, in one query."""
    if not nudge_ids:
        return []
    me, other = aliased(Partner), aliased(Partner)
    rows = session.execute(
        select(Nudge.id, Nudge.kind, Nudge.channel, Nudge.partner_id, Nudge.scheduled_for, Nudge.attempts,
               Nudge.step_day, Nudge.subject, Nudge.body_text, Nudge.body_html, Enrollment.program_key,
               me.phone_e164, me.email, me.timezone, me.preferred_time, me.quiet_start, me.quiet_end,
               # Names come encrypted and are opened below, once each: a batch names every partner twice
               # or more (their own nudges, and their partner's).
               type_coerce(me.first_name, LargeBinary).label("name"), me.reply_token,
               type_coerce(other.first_name, LargeBinary).label("other_name"))
        .join(me, me.id == Nudge.partner_id)
        .join(Enrollment, Enrollment.id == Nudge.enrollment_id)
        .outerjoin(other, and_(other.couple_id == me.couple_id, other.id != me.id))
        .where(id_in(Nudge.id, nudge_ids), Nudge.status == NudgeStatus.QUEUED)
        .order_by(Nudge.id)
    ).all()
    plans, seen = [], set()
    names: dict[bytes, str] = {}

    def opened(token: bytes | None) -> str | None:
        if token is None:
            return None
        token = bytes(token)
        if token not in names:
            names[token] = open_text(token)
        return names[token]

    for (nudge_id, kind, channel, partner_id, scheduled_for, attempts, step_day, subject, body_text, body_html,
         program_key, phone, email, timezone, preferred, quiet_start, quiet_end, sealed_name, reply_token,
         sealed_other) in rows:
        if nudge_id in seen:
            continue
        seen.add(nudge_id)
        name, other_name = opened(sealed_name) or "", opened(sealed_other)
        channel = Channel(channel)
        plans.append(SendPlan(
            nudge_id=nudge_id, kind=NudgeKind(kind), channel=channel, partner_id=partner_id,
            address=phone if channel is Channel.SMS else email, scheduled_for=scheduled_for, attempts=attempts,
            timezone=timezone, preferred_time=preferred, quiet_start=quiet_start, quiet_end=quiet_end,
            name=name, other_name=other_name or name,
            reply_to=f"reply+{reply_token}@{settings.inbound_email_domain}",
            program_key=program_key, step_day=step_day, subject=subject, body_text=body_text, body_html=body_html,
        ))
    return plans


_REMEMBER_JOBS = text(
    "UPDATE nudges AS n SET send_job_id = v.job_id "
    "FROM unnest(CAST(:ids AS integer[]), CAST(:jobs AS varchar[])) AS v(id, job_id) "
    "WHERE n.id = v.id AND n.status = 'queued'"
)


def remember_jobs(session: Session, assignments: list[tuple[int, str]]) -> None:
    """Note which send job each queued nudge was given to (the scheduler checks those jobs still exist)."""
    if not assignments:
        return
    session.connection().execute(_REMEMBER_JOBS, {"ids": [i for i, _ in assignments],
                                                  "jobs": [j for _, j in assignments]})


@dataclass(frozen=True)
class GuardDecision:
    outcome: SendOutcome
    reason: str
    retry_at: datetime | None = None


def send_time_guard(plan: SendPlan, now: datetime) -> GuardDecision | None:
    """Scheduled content that can no longer go out as planned; None when it may go now."""
    if plan.kind not in TIMED_KINDS:
        return None
    if now - plan.scheduled_for >= OVERDUE_AFTER:
        return GuardDecision(SendOutcome.SKIPPED, "a whole day overdue at send time")
    try:
        quiet = is_quiet_now(plan.timezone, plan.quiet_start, plan.quiet_end, now)
    except UnknownTimeZone:
        return GuardDecision(SendOutcome.SKIPPED, "unknown time zone")
    if not quiet:
        return None
    if plan.kind is NudgeKind.PROGRAM_COMPLETE:
        return GuardDecision(SendOutcome.RESCHEDULED, "waiting for the end of quiet hours",
                             next_allowed_instant(plan.timezone, plan.quiet_start, plan.quiet_end, now))
    return GuardDecision(SendOutcome.SKIPPED, "would have landed in quiet hours")


def apply_guard(session: Session, plan: SendPlan, decision: GuardDecision) -> SendOutcome:
    values: dict[str, object] = {"status_reason": decision.reason}
    if decision.outcome is SendOutcome.RESCHEDULED:
        values.update(status=NudgeStatus.SCHEDULED, scheduled_for=decision.retry_at)
    else:
        values.update(status=NudgeStatus.SKIPPED)
    result = session.execute(
        update(Nudge).where(Nudge.id == plan.nudge_id, Nudge.status == NudgeStatus.QUEUED).values(**values),
        execution_options=_NO_SYNC,
    )
    return decision.outcome if affected_rows(result) else SendOutcome.GONE


def compose(plan: SendPlan, programs: ProgramLibrary, settings: Settings) -> Composed:
    """The provider message for a plan; prompts and invitations are rendered here, once.

    The words are stored with the claim (subject and text, encrypted): the HTML part carries the same
    words in the shared layout, so it is not kept twice."""
    store: dict[str, str | None] = {}
    subject, text, html = plan.subject, plan.body_text, plan.body_html
    unsubscribe = unsubscribe_url(settings, plan.partner_id) if plan.channel is Channel.EMAIL else None
    if plan.kind in TIMED_KINDS:
        # Rendered every time (a retry sends the same words, in the full layout); stored the first time.
        render = _render_prompt if plan.kind is NudgeKind.PROMPT else _render_invitation
        subject, text, html = render(plan, programs, settings, unsubscribe)
        if plan.body_text is None:
            store = {"subject": subject, "body_text": text}
    if text is None:
        raise ValueError(f"nudge {plan.nudge_id} has no text to send")
    if plan.channel is Channel.SMS:
        # The provider points its status reports at its own webhook, with the nudge id.
        return Composed(OutboundSms(to=plan.address or "", body=text, nudge_id=plan.nudge_id), store)
    return Composed(OutboundEmail(
        to=plan.address or "", subject=subject or settings.sender_name, text=text, html=html or text_to_html(text),
        reply_to=plan.reply_to,
        headers={"List-Unsubscribe": f"<{unsubscribe}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        custom_args={"nudge_id": str(plan.nudge_id)}, nudge_id=plan.nudge_id,
    ), store)


def _footer(title: str, settings: Settings, unsubscribe: str | None) -> EmailFooter:
    return EmailFooter(title, settings.sender_name, settings.sender_postal_address, unsubscribe)


def _render_prompt(
    plan: SendPlan, programs: ProgramLibrary, settings: Settings, unsubscribe: str | None
) -> tuple[str | None, str, str | None]:
    program = programs.get(plan.program_key)
    step = program.step(plan.step_day)
    if plan.channel is Channel.SMS:
        return None, render_sms(step, plan.name, plan.other_name).body, None
    email = render_email(step, plan.name, plan.other_name, _footer(program.title, settings, unsubscribe))
    return email.subject, email.text, email.html


def _render_invitation(
    plan: SendPlan, programs: ProgramLibrary, settings: Settings, unsubscribe: str | None
) -> tuple[str | None, str, str | None]:
    program = programs.get(plan.program_key)
    next_url = f"{settings.public_base_url.rstrip('/')}/programs"
    if plan.channel is Channel.SMS:
        return None, (f"{plan.name}, that was the last step of {program.title}. Thank you both. "
                      f"If you'd like a next program: {next_url}"), None
    subject = f"You finished {program.title}"
    text = (
        f"{plan.name}, that was the last step of {program.title}.\n\n"
        f"Thank you, both of you, for making room for each other these past {program.days} days. "
        f"Before you move on, you might ask {plan.other_name} one question: what do we want to keep doing?\n\n"
        f"If you'd like another program, you can choose one here: {next_url}\n\n"
        "Your shared log stays where it is, whenever you want to read it together."
    )
    email = wrap_email(subject, text, text_to_html(text), _footer(program.title, settings, unsubscribe))
    return email.subject, email.text, email.html


CONFIRMATION_KINDS = frozenset({NudgeKind.CONFIRMATION, NudgeKind.CONFIRMATION_REMINDER})


def _allowed_consent(kind: NudgeKind) -> ConsentState:
    """Asking for a yes goes to a partner who has not given it yet; everything else needs the yes."""
    return ConsentState.PENDING if kind in CONFIRMATION_KINDS else ConsentState.CONFIRMED


_STORED = ("subject", "body_text", "body_html")


@dataclass(frozen=True)
class Claim:
    nudge_id: int
    store: dict[str, str | None] = field(default_factory=dict)
    # The store already encrypted (subject, body_text, body_html), when the caller did it ahead (a sending
    # thread does, so the worker's one writing thread does not).
    sealed: tuple[bytes | None, ...] | None = None


def seal(store: dict[str, str | None]) -> tuple[bytes | None, ...]:
    """A claim's texts encrypted as they are stored."""
    return tuple(_encrypted(store.get(name)) for name in _STORED)


def _claim_sql() -> str:
    pausable = ", ".join(f"'{k.value}'" for k in sorted(PAUSABLE_KINDS))
    asking = ", ".join(f"'{k.value}'" for k in sorted(CONFIRMATION_KINDS))
    # Only our own enum constants are formatted into this SQL. The stored texts arrive as Fernet tokens
    # (URL-safe base64, never a backslash), so the cast to bytea keeps their bytes as they are.
    return (
        "UPDATE nudges AS n SET status = 'sending', sending_at = %(now)s, attempts = n.attempts + 1, "  # noqa: S608
        "subject = COALESCE(CAST(v.subject AS bytea), n.subject), "
        "body_text = COALESCE(CAST(v.body_text AS bytea), n.body_text), "
        "body_html = COALESCE(CAST(v.body_html AS bytea), n.body_html) "
        "FROM unnest(CAST(%(ids)s AS integer[]), CAST(%(subjects)s AS text[]), CAST(%(texts)s AS text[]), "
        "CAST(%(htmls)s AS text[])) AS v(id, subject, body_text, body_html), partners AS p "
        "WHERE n.id = v.id AND p.id = n.partner_id AND n.status = 'queued' "
        "AND (CASE WHEN n.channel = 'sms' THEN p.sms_consent ELSE p.email_consent END) = "
        f"(CASE WHEN n.kind IN ({asking}) THEN 'pending' ELSE 'confirmed' END) "
        f"AND (n.kind NOT IN ({pausable}) OR p.paused_until IS NULL OR p.paused_until <= %(now)s) "
        f"AND NOT EXISTS (SELECT 1 FROM control_flags AS f WHERE f.key = '{SENDING_PAUSED_FLAG}' AND f.value = '1') "
        "RETURNING n.id"
    )


# A whole round of claims (or of records) is one statement over arrays: one round trip,
# and a query text that does not grow with the round. The arrays travel as array literals built here
# (a join of strings) and the SQL as the driver's own (`exec_driver_sql`): the driver's per-element
# array adaptation and the SQL construct layer cost more than the statement itself on a worker that
# sends a thousand nudges a second.
_CLAIM = _claim_sql()
_RECORD_SENT = (
    "UPDATE nudges AS n SET "
    "status = CASE WHEN n.status = 'sending' THEN 'sent' ELSE n.status END, "
    "sent_at = CASE WHEN n.status = 'sending' THEN %(now)s ELSE COALESCE(n.sent_at, %(now)s) END, "
    "provider_message_id = CASE WHEN n.status = 'sending' THEN v.pid "
    "ELSE COALESCE(n.provider_message_id, v.pid) END, "
    "error_code = CASE WHEN n.status = 'sending' THEN NULL ELSE n.error_code END, "
    "status_reason = CASE WHEN n.status = 'sending' THEN NULL ELSE n.status_reason END, "
    "needs_review = CASE WHEN n.status = 'sending' THEN false ELSE n.needs_review END "
    "FROM unnest(CAST(%(sent_ids)s AS integer[]), CAST(%(pids)s AS varchar[])) AS v(id, pid) WHERE n.id = v.id"
)
# A worker's ledger round usually holds both claims and records: one statement (a data-modifying WITH)
# writes both, so PostgreSQL runs and commits one statement a round instead of two. A record is only
# ever sent after its nudge's claim was committed in an earlier round, so the two never touch one row.
_CLAIM_AND_RECORD = f"WITH recorded AS ({_RECORD_SENT}) {_CLAIM}"


def pg_int_array(values: list[int]) -> str:
    """A PostgreSQL array literal of integers."""
    return "{" + ",".join(str(int(v)) for v in values) + "}"


def pg_text_array(values: list[str | bytes | None]) -> str:
    """A PostgreSQL array literal of texts (bytes as ASCII), every element quoted, NULL for None."""
    def quoted(value: str | bytes) -> str:
        text = value.decode("ascii") if isinstance(value, bytes) else value
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "{" + ",".join("NULL" if v is None else quoted(v) for v in values) + "}"


def _encrypted(value: str | None) -> bytes | None:
    return None if value is None else active_cipher().encrypt(value)


def claim_many(session: Session, claims: list[Claim], now: datetime) -> set[int]:
    """`queued -> sending` for each nudge that may be sent now; returns the ids this transaction won."""
    return claim_rows(session.connection(), claims, now)


def claim_rows(connection: Connection, claims: list[Claim], now: datetime) -> set[int]:
    """`claim_many` on a connection (the worker's ledger writes through its own autocommit connection).

    A claim succeeds only while the kill switch is off and the partner's consent (and, for scheduled
    content, their not being paused) still holds, all checked by the one UPDATE that takes the nudge.
    Texts rendered for the send are stored first, so a nudge's record holds what was sent.
    """
    if not claims:
        return set()
    return set(connection.exec_driver_sql(_CLAIM, {"now": now, **_claim_arrays(claims)}).scalars())


def _claim_arrays(claims: list[Claim]) -> dict[str, str]:
    sealed = [c.sealed if c.sealed is not None else seal(c.store) for c in claims]
    return {"ids": pg_int_array([c.nudge_id for c in claims]), "subjects": pg_text_array([s[0] for s in sealed]),
            "texts": pg_text_array([s[1] for s in sealed]), "htmls": pg_text_array([s[2] for s in sealed])}


def _sent_arrays(sent: list[tuple[int, str]]) -> dict[str, str]:
    return {"sent_ids": pg_int_array([i for i, _ in sent]), "pids": pg_text_array([p for _, p in sent])}


def claim_and_record_rows(
    connection: Connection, claims: list[Claim], sent: list[tuple[int, str]], now: datetime
) -> set[int]:
    """`claim_rows` and `record_sent_rows` together, in one statement when there are both."""
    if not (claims and sent):
        won = claim_rows(connection, claims, now)
        record_sent_rows(connection, sent, now)
        return won
    return set(connection.exec_driver_sql(_CLAIM_AND_RECORD, {
        "now": now, **_claim_arrays(claims), **_sent_arrays(sent)}).scalars())


def claim(session: Session, plan: SendPlan, now: datetime, store: dict[str, str | None]) -> bool:
    """`queued -> sending` for one nudge; True when this transaction won it."""
    return plan.nudge_id in claim_many(session, [Claim(plan.nudge_id, store)], now)


def explain_failed_claim(session: Session, plan: SendPlan, now: datetime) -> SendOutcome:
    """Why a claim lost; a nudge whose partner withdrew consent or paused is settled here."""
    status = session.scalar(select(Nudge.status).where(Nudge.id == plan.nudge_id))
    if status != NudgeStatus.QUEUED:
        return SendOutcome.GONE
    flag = session.get(ControlFlag, SENDING_PAUSED_FLAG)
    if flag is not None and flag.value == "1":
        return SendOutcome.PAUSED
    partner = session.get(Partner, plan.partner_id)
    values: dict[str, object]
    if partner is None:
        outcome, values = SendOutcome.CANCELLED, {"status": NudgeStatus.CANCELLED, "status_reason": "partner gone"}
    elif partner.consent(plan.channel) is not _allowed_consent(plan.kind):
        outcome = SendOutcome.CANCELLED
        values = {"status": NudgeStatus.CANCELLED,
                  "status_reason": f"{plan.channel} consent is {partner.consent(plan.channel)}"}
    elif plan.kind is NudgeKind.PROGRAM_COMPLETE and partner.paused_until is not None:
        day = first_local_date_after(partner, partner.paused_until)
        outcome = SendOutcome.RESCHEDULED
        values = {"status": NudgeStatus.SCHEDULED, "status_reason": "waiting for the partner's pause to end",
                  "scheduled_for": send_instant_at(day, plan.preferred_time, plan.quiet_start, plan.quiet_end,
                                                   plan.timezone)}
    else:
        outcome, values = SendOutcome.SKIPPED, {"status": NudgeStatus.SKIPPED, "status_reason": "partner paused"}
    result = session.execute(
        update(Nudge).where(Nudge.id == plan.nudge_id, Nudge.status == NudgeStatus.QUEUED).values(**values),
        execution_options=_NO_SYNC,
    )
    return outcome if affected_rows(result) else SendOutcome.GONE


def release_claim(session: Session, nudge_id: int) -> None:
    """Undo a claim whose provider call never started: `sending -> queued`."""
    session.execute(
        update(Nudge).where(Nudge.id == nudge_id, Nudge.status == NudgeStatus.SENDING)
        .values(status=NudgeStatus.QUEUED, attempts=Nudge.attempts - 1, sending_at=None),
        execution_options=_NO_SYNC,
    )


def fail_unsendable(session: Session, plan: SendPlan, reason: str) -> SendOutcome:
    """A nudge that cannot be rendered (its program or step is gone) ends here, before any claim."""
    result = session.execute(
        update(Nudge).where(Nudge.id == plan.nudge_id, Nudge.status == NudgeStatus.QUEUED)
        .values(status=NudgeStatus.FAILED, error_code="unrenderable", status_reason=reason[:255]),
        execution_options=_NO_SYNC,
    )
    return SendOutcome.FAILED if affected_rows(result) else SendOutcome.GONE


def record_sent_many(session: Session, sent: list[tuple[int, str]], now: datetime) -> None:
    """Record provider acceptances: (nudge id, the provider's message id)."""
    record_sent_rows(session.connection(), sent, now)


def record_sent_rows(connection: Connection, sent: list[tuple[int, str]], now: datetime) -> None:
    if not sent:
        return
    connection.exec_driver_sql(_RECORD_SENT, {"now": now, **_sent_arrays(sent)})


def record_sent(session: Session, nudge_id: int, result: SendResult, now: datetime) -> None:
    record_sent_many(session, [(nudge_id, result.provider_message_id)], now)


def backoff(attempts: int, retry_after: float | None) -> timedelta:
    """Exponential backoff with jitter, never sooner than the provider's Retry-After."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * (2 ** max(0, attempts - 1)))
    delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security
    return timedelta(seconds=max(delay, retry_after or 0.0))


def record_failure(session: Session, plan: SendPlan, exc: Exception, now: datetime) -> SendOutcome:
    """What a failed provider call means for the nudge (it is `sending`, and this job holds it).

    Decided by the failure's meaning (`SendFailure`) alone; the provider's own code is only recorded.
    An exception that is no `ProviderError` says nothing about whether the message went: review it."""
    attempts = plan.attempts + 1
    sending = (Nudge.id == plan.nudge_id, Nudge.status == NudgeStatus.SENDING)
    failure = exc.failure if isinstance(exc, ProviderError) else SendFailure.OUTCOME_UNKNOWN
    if not isinstance(exc, ProviderError) or failure is SendFailure.OUTCOME_UNKNOWN:
        code = exc.code if isinstance(exc, ProviderError) else "error"
        session.execute(
            update(Nudge).where(*sending).values(
                needs_review=True, error_code=code,
                status_reason="the provider may have sent this: review before resending"),
            execution_options=_NO_SYNC,
        )
        log.warning("send outcome unknown", extra={"nudge_id": plan.nudge_id, "channel": plan.channel.value,
                                                   "error": type(exc).__name__})
        return SendOutcome.REVIEW
    if failure.retryable and attempts < MAX_ATTEMPTS:
        session.execute(
            update(Nudge).where(*sending).values(
                status=NudgeStatus.SCHEDULED, scheduled_for=now + backoff(attempts, exc.retry_after),
                error_code=exc.code, status_reason=f"retrying after provider error {exc.code}"),
            execution_options=_NO_SYNC,
        )
        return SendOutcome.RETRY
    reason = f"provider error {exc.code}" + (" after retries" if failure.retryable else "")
    if failure is SendFailure.INVALID_ADDRESS:
        what = "invalid or non-mobile number" if plan.channel is Channel.SMS else "invalid address"
        reason = f"{what} ({exc.code})"
    session.execute(
        update(Nudge).where(*sending).values(status=NudgeStatus.FAILED, error_code=exc.code, status_reason=reason),
        execution_options=_NO_SYNC,
    )
    partner = session.get(Partner, plan.partner_id) if failure in PROVIDER_STOPS else None
    if partner is not None:
        provider_stop(session, partner, plan.channel, failure, detail=exc.detail, now=now)
    log.info("send failed", extra={"nudge_id": plan.nudge_id, "channel": plan.channel.value, "code": exc.code,
                                   "failure": failure.value})
    return SendOutcome.FAILED

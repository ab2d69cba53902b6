"""Claims and "sent" records: the conditional UPDATE that moves a nudge `queued -> sending` (it wins only
while the kill switch is off, the partner's consent on that channel still holds and, for scheduled
content, they are not paused; only the transaction that wins it may call the provider, so a re-run job
never sends twice), the record of what the provider accepted, both written a round at a time as single
statements over array literals, and what follows a claim that lost (`explain_failed_claim`) or whose
provider call never started (`release_claim`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from service.crypto import active_cipher
from service.db import affected_rows
from service.domain.planner import SENDING_PAUSED_FLAG
from service.domain.scheduling import first_local_date_after, send_instant_at
from service.domain.send_plans import PAUSABLE_KINDS, SendOutcome, SendPlan
from service.models import ConsentState, ControlFlag, Nudge, NudgeKind, NudgeStatus, Partner
from service.providers import SendResult

CONFIRMATION_KINDS = frozenset({NudgeKind.CONFIRMATION, NudgeKind.CONFIRMATION_REMINDER})
_NO_SYNC = {"synchronize_session": False}


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
# A worker's group-commit round usually holds both claims and records: one statement (a data-modifying WITH)
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
    """`claim_many` on a connection (the worker's group commit writes through its own autocommit connection).

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


def record_sent_many(session: Session, sent: list[tuple[int, str]], now: datetime) -> None:
    """Record provider acceptances: (nudge id, the provider's message id)."""
    record_sent_rows(session.connection(), sent, now)


def record_sent_rows(connection: Connection, sent: list[tuple[int, str]], now: datetime) -> None:
    """`record_sent_many` on a connection; a status a callback already set is kept."""
    if not sent:
        return
    connection.exec_driver_sql(_RECORD_SENT, {"now": now, **_sent_arrays(sent)})


def record_sent(session: Session, nudge_id: int, result: SendResult, now: datetime) -> None:
    """Record one provider acceptance."""
    record_sent_many(session, [(nudge_id, result.provider_message_id)], now)

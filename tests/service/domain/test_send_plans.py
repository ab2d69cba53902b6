"""Send plans: each queued nudge of a batch read once, with what its send needs."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.domain.send_plans import load_plans, reply_address
from service.runtime import Runtime
from tests.factories import make_couple
from tests.service.domain.queued_nudges import plan_of, queued


def test_a_plan_holds_what_the_send_needs(db: Session, runtime: Runtime) -> None:
    couple = make_couple(db, names=("Alex", "Sam"))
    plan = plan_of(db, runtime, queued(db, couple))
    assert (plan.name, plan.other_name, plan.address) == ("Alex", "Sam", couple.partners[0].phone_e164)
    assert plan.reply_to == f"reply+{couple.partners[0].reply_token}@{runtime.settings.inbound_email_domain}"
    assert load_plans(db, [plan.nudge_id + 1000], runtime.settings) == []


def test_a_partners_reply_address_names_their_reply_token(runtime: Runtime) -> None:
    assert reply_address(runtime.settings, "0123456789abcdef01234567") == (
        f"reply+0123456789abcdef01234567@{runtime.settings.inbound_email_domain}")

"""GET /unsubscribe/<token> asks, POST stops email: also as an RFC 8058 one-click POST without a session or
CSRF token. The token names one partner; the other partner's email and everyone's texts carry on."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.domain.composing import unsubscribe_url
from service.domain.tokens import make_token
from service.models import Channel, ConsentRecord, ConsentState, Nudge, NudgeKind, NudgeStatus, Partner
from service.settings import Settings
from tests.factories import make_couple


def _path(settings: Settings, partner: Partner) -> str:
    return unsubscribe_url(settings, partner.id).removeprefix(settings.public_base_url)


def test_the_link_shows_a_button_and_changes_nothing(client: FlaskClient, db: Session, settings: Settings) -> None:
    alex = make_couple(db).partners[0]
    response = client.get(_path(settings, alex))
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "<form method=\"post\"" in page and "Unsubscribe</button>" in page
    assert alex.email is not None and alex.email not in page, "the page shows a masked address"
    db.refresh(alex)
    assert alex.consent(Channel.EMAIL) is ConsentState.CONFIRMED


def test_the_button_unsubscribes_this_partner_only(client: FlaskClient, db: Session, settings: Settings) -> None:
    couple = make_couple(db)
    alex, sam = couple.partners
    queued = Nudge(enrollment=couple.enrollments[0], partner=alex, kind=NudgeKind.PROMPT, step_day=1,
                   channel=Channel.EMAIL, status=NudgeStatus.QUEUED)
    db.add(queued)
    db.flush()
    response = client.post(_path(settings, alex))
    assert response.status_code == 200 and "You're unsubscribed" in response.get_data(as_text=True)
    for row in (alex, sam, queued):
        db.refresh(row)
    assert alex.consent(Channel.EMAIL) is ConsentState.OPTED_OUT
    assert alex.consent(Channel.SMS) is ConsentState.CONFIRMED
    assert sam.consent(Channel.EMAIL) is ConsentState.CONFIRMED
    assert queued.status == NudgeStatus.CANCELLED
    record = db.scalars(select(ConsentRecord).where(ConsentRecord.partner_id == alex.id)
                        .order_by(ConsentRecord.id.desc())).first()
    assert record is not None and (record.action, record.source, record.source_detail) == (
        "withdrawn", "email", "unsubscribe page")


def test_rfc_8058_one_click_post_needs_no_csrf_token(client: FlaskClient, db: Session, settings: Settings) -> None:
    alex = make_couple(db).partners[0]
    response = client.post(_path(settings, alex), data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200 and response.mimetype == "text/plain"
    again = client.post(_path(settings, alex), data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200, "repeating it is harmless"
    db.refresh(alex)
    assert alex.consent(Channel.EMAIL) is ConsentState.OPTED_OUT
    records = db.scalars(select(ConsentRecord).where(ConsentRecord.partner_id == alex.id,
                                                     ConsentRecord.action == "withdrawn")).all()
    assert [r.source_detail for r in records] == ["one-click"]


@pytest.mark.parametrize("token", ["nonsense", "a" * 500, "purpose", "made-up"])
def test_a_bad_token_is_404(client: FlaskClient, db: Session, settings: Settings, token: str) -> None:
    alex, sam = make_couple(db).partners
    if token == "purpose":
        token = make_token(settings.secret_key, "confirm", alex.id)  # a real token, for something else
    if token == "made-up":  # sam's own link, re-pointed at alex: the signature no longer matches
        payload = make_token("a key that is not ours", "unsubscribe", alex.id).split(".")[0]
        token = ".".join([payload, *make_token(settings.secret_key, "unsubscribe", sam.id).split(".")[1:]])
    assert client.get(f"/unsubscribe/{token}").status_code == 404
    assert client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 404
    db.refresh(alex)
    assert alex.consent(Channel.EMAIL) is ConsentState.CONFIRMED


def test_a_partner_without_email_has_nothing_to_unsubscribe(client: FlaskClient, db: Session,
                                                            settings: Settings) -> None:
    alex = make_couple(db, email=False).partners[0]
    assert client.get(_path(settings, alex)).status_code == 404

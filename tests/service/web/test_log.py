"""The shared log page and what either partner can do from it."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.cli import main as closer_cli
from service.models import Couple, LogEntry, Partner
from tests.factories import make_couple, make_sent_prompt


def _answer(db: Session, partner: Partner, body: str, sid: str, nudge_id: int | None = None) -> None:
    db.add(LogEntry(couple_id=partner.couple_id, partner_id=partner.id, nudge_id=nudge_id, channel="sms",
                    provider_message_id=sid, body=body, received_at=datetime.now(UTC)))
    db.flush()


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match
    return match.group(1)


def test_log_shows_prompts_and_both_answers_escaped(client: FlaskClient, db: Session) -> None:
    couple = make_couple(db, names=("Alex", "<script>alert(1)</script>"))
    alex, sam = couple.partners
    prompt = make_sent_prompt(db, alex, step_day=1, sent_at=datetime.now(UTC) - timedelta(hours=1),
                              body="What made you smile today?")
    _answer(db, alex, "Your <b>laugh</b> at breakfast", "SMlog1", prompt.id)
    _answer(db, sam, "The walk", "SMlog2")
    response = client.get(f"/log/{alex.log_token}")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "What made you smile today?" in page
    assert "Your &lt;b&gt;laugh&lt;/b&gt; at breakfast" in page and "<b>laugh</b>" not in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert "The walk" in page
    assert response.headers["Cache-Control"] == "no-store"
    assert page.index("Your &lt;b&gt;laugh") < page.index("The walk") or "Notes between prompts" in page


def test_unknown_or_malformed_token_is_404(client: FlaskClient) -> None:
    assert client.get("/log/not-a-real-token").status_code == 404
    assert client.get("/log/" + "x" * 300).status_code == 404


def test_new_link_replaces_only_this_partners_link(client: FlaskClient, db: Session) -> None:
    couple = make_couple(db)
    alex, sam = couple.partners
    old = alex.log_token
    page = client.get(f"/log/{old}").get_data(as_text=True)
    response = client.post(f"/log/{old}/new-link", data={"csrf_token": _csrf(page)})
    assert response.status_code == 303
    new = response.headers["Location"].rsplit("/", 1)[-1]
    assert new != old
    assert client.get(f"/log/{old}").status_code == 404
    assert client.get(f"/log/{new}").status_code == 200
    assert client.get(f"/log/{sam.log_token}").status_code == 200


def test_actions_need_csrf(client: FlaskClient, db: Session) -> None:
    alex = make_couple(db).partners[0]
    for action in ("new-link", "erase-mine", "forget"):
        assert client.post(f"/log/{alex.log_token}/{action}").status_code == 400


def test_export_json_and_csv(client: FlaskClient, db: Session) -> None:
    couple = make_couple(db)
    alex, sam = couple.partners
    _answer(db, alex, "=HYPERLINK(\"http://evil\")", "SMx1")
    _answer(db, sam, "plain words", "SMx2")
    data = client.get(f"/log/{sam.log_token}/export.json").get_json()
    assert {a["text"] for a in data["answers"]} == {"=HYPERLINK(\"http://evil\")", "plain words"}
    assert [p["first_name"] for p in data["partners"]] == ["Alex", "Sam"]
    rows = list(csv.reader(io.StringIO(client.get(f"/log/{alex.log_token}/export.csv").get_data(as_text=True))))
    assert rows[0] == ["received_at", "from", "channel", "program_day", "text"]
    texts = [r[4] for r in rows[1:]]
    assert "'=HYPERLINK(\"http://evil\")" in texts and "plain words" in texts


def test_erase_mine_removes_only_my_words(client: FlaskClient, db: Session) -> None:
    couple = make_couple(db)
    alex, sam = couple.partners
    _answer(db, alex, "mine", "SMe1")
    _answer(db, sam, "theirs", "SMe2")
    page = client.get(f"/log/{alex.log_token}").get_data(as_text=True)
    assert client.post(f"/log/{alex.log_token}/erase-mine", data={"csrf_token": _csrf(page)}).status_code == 303
    assert [e.body for e in db.scalars(select(LogEntry))] == ["theirs"]


def test_forget_needs_both_partners(client: FlaskClient, db: Session) -> None:
    couple = make_couple(db)
    alex, sam = couple.partners
    _answer(db, alex, "mine", "SMf1")
    couple_id = couple.id
    page = client.get(f"/log/{alex.log_token}").get_data(as_text=True)
    first = client.post(f"/log/{alex.log_token}/forget", data={"csrf_token": _csrf(page)})
    assert first.status_code == 303
    assert db.get(Couple, couple_id) is not None
    second = client.post(f"/log/{sam.log_token}/forget", data={"csrf_token": _csrf(page)})
    assert second.status_code == 200 and "Everything is erased" in second.get_data(as_text=True)
    db.expire_all()
    assert db.get(Couple, couple_id) is None
    assert db.scalar(select(func.count(LogEntry.id))) == 0


def test_cli_export_and_forget(app: Flask, db: Session) -> None:
    couple = make_couple(db)
    _answer(db, couple.partners[0], "exported words", "SMc1")
    db.commit()
    couple_id = couple.id
    runner = app.test_cli_runner()
    exported = runner.invoke(closer_cli, ["export", str(couple.id)])
    assert exported.exit_code == 0, exported.output
    assert "exported words" in exported.output
    missing = runner.invoke(closer_cli, ["export", "999999"])
    assert missing.exit_code != 0 and "no couple" in missing.output
    forgotten = runner.invoke(closer_cli, ["forget", str(couple.id), "--yes"])
    assert forgotten.exit_code == 0, forgotten.output
    db.expire_all()
    assert db.get(Couple, couple_id) is None

"""Every kind of spooled message is replayed by a process that never imported a view.

The replays are listed in jobs.inbound.HANDLERS; none is registered as a side effect of importing a view,
so a scheduler built from `build_runtime` alone (no Flask app) keeps the texts spooled while the
database was down. This runs in a fresh interpreter: the test process has imported every view already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.inbound import HANDLERS
from service import spool
from service.domain.inbound import InboundSms
from service.models import Channel, ConsentState, InboundMessage, Partner
from service.providers.twilio_sms import TWILIO
from service.runtime import Runtime
from tests.factories import make_couple
from tests.support.sending import ROOT, Scratch

REPLAY = """
import json, sys
from jobs.inbound import drain_spool
from service.runtime import build_runtime
from service.settings import Settings

runtime = build_runtime(Settings.from_env())
drained = drain_spool(runtime)
runtime.close()
loaded = [name for name in sys.modules
          if name.split(".")[0] == "flask" or name == "service.app" or name.startswith("service.web")]
print(json.dumps({"drained": drained, "loaded": loaded}))
"""


def test_every_spool_kind_has_its_replay() -> None:
    assert set(HANDLERS) == {spool.TWILIO_SMS, spool.SENDGRID_INBOUND}


def test_a_runtime_built_without_any_view_replays_a_spooled_text(scratch: Scratch) -> None:
    session = scratch.runtime.database.new_session()
    try:
        couple = make_couple(session)
        session.commit()
        alex_id, phone = couple.partners[0].id, couple.partners[0].phone_e164
    finally:
        session.close()
    assert phone
    text = InboundSms(message_sid="SM" + "5" * 32, from_number=phone, to_number="+15550000000", body="STOP",
                      provider=TWILIO)
    spool.spool_inbound(scratch.runtime.redis, spool.TWILIO_SMS, asdict(text))

    done = subprocess.run([sys.executable, "-c", REPLAY], env=scratch.worker_env("http://127.0.0.1:9"), cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["drained"] == 1 and spool.depth(scratch.runtime.redis) == 0
    session = scratch.runtime.database.new_session()
    try:
        alex = session.get(Partner, alex_id)
        assert alex is not None and alex.consent(Channel.SMS) is ConsentState.OPTED_OUT, "the STOP was replayed"
    finally:
        session.close()
    assert report["loaded"] == [], "no view, no Flask app, not even Flask was imported to replay it"


def test_a_text_spooled_before_it_named_its_provider_replays_as_twilios(db: Session, runtime: Runtime) -> None:
    partner = make_couple(db).partners[0]
    payload = {"message_sid": "SM" + "6" * 32, "from_number": partner.phone_e164, "to_number": "+15550000000",
               "body": "my answer", "num_media": 0, "media_types": []}
    HANDLERS[spool.TWILIO_SMS](db, runtime, payload)
    assert db.scalar(select(InboundMessage.provider).where(
        InboundMessage.provider_message_id == payload["message_sid"])) == TWILIO

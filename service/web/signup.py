"""The signup form (GET /, POST /signup), its "check your phones" page, and email confirmation links.

Abuse defenses, in the order a request meets them: Flask-Limiter limits per IP and per phone-number
prefix (Redis-backed, so they hold across web processes), a honeypot field, strict parsing (mobile
numbers in ALLOWED_COUNTRIES only, names that read as names: `service.domain.names`), and the per-address daily cap on
confirmations in the domain. A blocked attempt always gets the same page and status, whatever the cause.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
import zoneinfo
from datetime import UTC, datetime, time
from typing import Any

from email_validator import EmailNotValidError, validate_email
from flask import Blueprint, Response, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_limiter.util import get_remote_address
from flask_wtf import FlaskForm
from werkzeug.exceptions import TooManyRequests
from wtforms import BooleanField, EmailField, RadioField, SelectField, StringField, TelField
from wtforms.validators import ValidationError
from wtforms.widgets import TimeInput

from service.domain.enrollment import confirm_channel, open_enrollment
from service.domain.names import name_problem
from service.domain.signup import (
    QUIET_END,
    QUIET_START,
    PartnerRequest,
    SignupBlocked,
    SignupRequest,
    sign_up,
)
from service.domain.tokens import CONFIRM_MAX_AGE, TokenError, read_token
from service.models import Channel, ConsentState, EnrollmentStatus, Partner
from service.programs import ProgramLibrary
from service.queues import QUEUE_HIGH, commit_then_enqueue
from service.web.context import current_runtime, db_session
from service.web.limits import limiter, private_limit_key
from service.web.phone import textable_phone

log = logging.getLogger(__name__)

bp = Blueprint("signup", __name__)

DEFAULT_TIMEZONE = "America/New_York"
DEFAULT_TIME = time(19, 0)
PREFERRED_PROGRAM = "sampler"
MAX_EMAIL_CHARS = 254
MAX_TOKEN_CHARS = 512
COMMON_TIMEZONES = (
    ("America/New_York", "Eastern (New York)"),
    ("America/Toronto", "Eastern (Toronto)"),
    ("America/Chicago", "Central (Chicago)"),
    ("America/Winnipeg", "Central (Winnipeg)"),
    ("America/Regina", "Saskatchewan (Regina)"),
    ("America/Denver", "Mountain (Denver)"),
    ("America/Edmonton", "Mountain (Edmonton)"),
    ("America/Phoenix", "Arizona (Phoenix)"),
    ("America/Los_Angeles", "Pacific (Los Angeles)"),
    ("America/Vancouver", "Pacific (Vancouver)"),
    ("America/Anchorage", "Alaska (Anchorage)"),
    ("Pacific/Honolulu", "Hawaii (Honolulu)"),
    ("America/Halifax", "Atlantic (Halifax)"),
    ("America/St_Johns", "Newfoundland (St. John's)"),
)
_AREAS = ("Africa/", "America/", "Antarctica/", "Asia/", "Atlantic/", "Australia/", "Europe/", "Indian/", "Pacific/")
COUNTRY_NAMES = {"US": "the US", "CA": "Canada", "GB": "the UK", "IE": "Ireland", "AU": "Australia",
                 "NZ": "New Zealand"}
BLOCKED_STATUS = 429


@functools.cache
def all_timezones() -> tuple[str, ...]:
    zones = {z for z in zoneinfo.available_timezones() if z.startswith(_AREAS)} | {"UTC"}
    return tuple(sorted(zones))


@functools.cache
def timezone_choices() -> dict[str, list[tuple[str, str]]]:
    common = {zone for zone, _ in COMMON_TIMEZONES}
    return {
        "United States and Canada": list(COMMON_TIMEZONES),
        "All time zones": [(z, z.replace("_", " ")) for z in all_timezones() if z not in common],
    }


def _clean(value: str | None) -> str:
    return " ".join(unicodedata.normalize("NFC", value or "").split())


def _countries(allowed: tuple[str, ...]) -> str:
    names = [COUNTRY_NAMES.get(code, code) for code in allowed]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


class SignupForm(FlaskForm):
    signer_name = StringField("Your first name")
    signer_phone = TelField("Your mobile number")
    signer_email = EmailField("Your email")
    signer_timezone = SelectField("Your time zone", validate_choice=False)
    invited_name = StringField("Your partner's first name")
    invited_phone = TelField("Their mobile number")
    invited_email = EmailField("Their email")
    invited_timezone = SelectField("Their time zone", validate_choice=False)
    preferred_time = StringField("Time of day for your prompts", widget=TimeInput())
    program = RadioField("Program", validate_choice=False)
    opt_in_ack = BooleanField("We both want this opt-in program")
    website = StringField("Leave this field empty")  # the honeypot: hidden from people, filled by bots

    def prepare(self, programs: ProgramLibrary, allowed_countries: tuple[str, ...]) -> None:
        self.programs = programs
        self.allowed_countries = allowed_countries
        choices = timezone_choices()
        self.signer_timezone.choices = choices
        self.invited_timezone.choices = choices
        self.program.choices = [(p.key, p.title) for p in programs]
        self.parsed: dict[str, Any] = {}
        if not self.is_submitted():
            self.signer_timezone.data = self.signer_timezone.data or DEFAULT_TIMEZONE
            self.invited_timezone.data = self.invited_timezone.data or DEFAULT_TIMEZONE
            self.preferred_time.data = self.preferred_time.data or DEFAULT_TIME.strftime("%H:%M")
            self.program.data = self.program.data or default_program(programs)

    # WTForms calls validate_<field> for each field; each stores the parsed value for `to_request`.
    def _name(self, field: StringField) -> None:
        name = _clean(field.data)
        problem = name_problem(name, current_runtime().settings.sender_name)
        if problem:
            raise ValidationError(problem)
        self.parsed[field.name] = name

    def _phone(self, field: StringField) -> None:
        raw = _clean(field.data)
        if not raw:
            self.parsed[field.name] = None
            return
        phone = textable_phone(raw, self.allowed_countries)
        if phone is None:
            raise ValidationError(f"Enter a mobile number from {_countries(self.allowed_countries)} "
                                  "that can receive texts, like (415) 555-0134.")
        self.parsed[field.name] = phone

    def _email(self, field: StringField) -> None:
        raw = (field.data or "").strip()
        if not raw:
            self.parsed[field.name] = None
            return
        try:
            if len(raw) > MAX_EMAIL_CHARS:
                raise EmailNotValidError("too long")
            email = validate_email(raw, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise ValidationError("Enter an email address like name@example.com.") from exc
        self.parsed[field.name] = email

    def _timezone(self, field: SelectField) -> None:
        if field.data not in all_timezones():
            raise ValidationError("Choose a time zone from the list.")
        self.parsed[field.name] = field.data

    def validate_signer_name(self, field: StringField) -> None:
        self._name(field)

    def validate_invited_name(self, field: StringField) -> None:
        self._name(field)

    def validate_signer_phone(self, field: StringField) -> None:
        self._phone(field)

    def validate_invited_phone(self, field: StringField) -> None:
        self._phone(field)

    def validate_signer_email(self, field: StringField) -> None:
        self._email(field)

    def validate_invited_email(self, field: StringField) -> None:
        self._email(field)

    def validate_signer_timezone(self, field: SelectField) -> None:
        self._timezone(field)

    def validate_invited_timezone(self, field: SelectField) -> None:
        self._timezone(field)

    def validate_preferred_time(self, field: StringField) -> None:
        raw = (field.data or "").strip()
        match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)(?::[0-5]\d(?:\.\d{1,3})?)?", raw, re.ASCII)
        if not match:
            raise ValidationError("Enter a time like 19:00.")
        at = time(int(match.group(1)), int(match.group(2)))
        if not QUIET_END <= at < QUIET_START:
            raise ValidationError(f"Choose a time between {QUIET_END:%H:%M} and {QUIET_START:%H:%M}: "
                                  "we never text at night.")
        self.parsed[field.name] = at

    def validate_program(self, field: RadioField) -> None:
        if field.data not in self.programs:
            raise ValidationError("Choose one of the programs.")
        self.parsed[field.name] = field.data

    def validate(self, extra_validators: Any = None) -> bool:
        valid = super().validate(extra_validators)
        for who, phone, email in (("signer", self.signer_phone, self.signer_email),
                                  ("invited", self.invited_phone, self.invited_email)):
            if not phone.errors and not email.errors and not (_clean(phone.data) or _clean(email.data)):
                someone = "you" if who == "signer" else "your partner"
                phone.errors.append(f"Give a mobile number or an email (or both) so {someone} can confirm.")
                valid = False
        parsed = self.parsed
        if parsed.get("signer_phone") and parsed.get("signer_phone") == parsed.get("invited_phone"):
            self.invited_phone.errors.append("Each of you needs your own number: you each confirm for yourselves.")
            valid = False
        signer_email, invited_email = parsed.get("signer_email"), parsed.get("invited_email")
        if signer_email and invited_email and signer_email.lower() == invited_email.lower():
            self.invited_email.errors.append("Each of you needs your own email: you each confirm for yourselves.")
            valid = False
        chosen = parsed.get("program")
        if chosen and self.programs.get(chosen).opt_in and not self.opt_in_ack.data:
            self.opt_in_ack.errors.append(
                f"{self.programs.get(chosen).title} is opt-in: tick this box if you both want it.")
            valid = False
        return valid

    def to_request(self, ip: str | None, user_agent: str | None) -> SignupRequest:
        p = self.parsed
        return SignupRequest(
            signer=PartnerRequest(p["signer_name"], p["signer_phone"], p["signer_email"], p["signer_timezone"]),
            invited=PartnerRequest(p["invited_name"], p["invited_phone"], p["invited_email"], p["invited_timezone"]),
            preferred_time=p["preferred_time"], program_key=p["program"], ip=ip, user_agent=user_agent,
        )


class ConfirmForm(FlaskForm):
    """Only the CSRF token: the button a person presses, which a link scanner's GET never does."""


def default_program(programs: ProgramLibrary) -> str:
    """A program for everyone, never an opt-in one: those are chosen deliberately."""
    if PREFERRED_PROGRAM in programs and not programs.get(PREFERRED_PROGRAM).opt_in:
        return PREFERRED_PROGRAM
    return next(p.key for p in programs if not p.opt_in)


def _signup_limit() -> str:
    return current_runtime().settings.signup_rate_limit


def _phone_prefix(field: str) -> str:
    """A number without its last four digits (the block an SMS-pumping run walks through), as a keyed hash."""
    phone = textable_phone(request.form.get(field, "")[:64], current_runtime().settings.allowed_countries)
    return private_limit_key("prefix", phone[:-4]) if phone else ""


def _accepted(response: Response) -> bool:
    return response.status_code == 303


def _page(template: str, status: int = 200, **values: Any) -> ResponseReturnValue:
    return render_template(template, support=current_runtime().settings.support_contact, **values), status


def _form_page(form: SignupForm, status: int = 200) -> ResponseReturnValue:
    runtime = current_runtime()
    chosen = form.program.data if form.program.data in runtime.programs else default_program(runtime.programs)
    return _page("signup/form.html", status, form=form, programs=list(runtime.programs),
                 chosen=runtime.programs.get(chosen), browser_default=not form.is_submitted(),
                 countries=_countries(runtime.settings.allowed_countries), sender=runtime.settings.sender_name)


def blocked(reason: str) -> ResponseReturnValue:
    """One answer for every refused attempt, so it tells a prober nothing about which defense fired."""
    log.info("signup blocked", extra={"reason": reason})
    return _page("signup/blocked.html", BLOCKED_STATUS)


@bp.errorhandler(TooManyRequests)
def _rate_limited(_exc: TooManyRequests) -> ResponseReturnValue:
    return blocked("rate limit")


@bp.get("/")
def index() -> ResponseReturnValue:
    runtime = current_runtime()
    form = SignupForm(formdata=None)
    form.prepare(runtime.programs, runtime.settings.allowed_countries)
    return _form_page(form)


@bp.post("/signup")
@limiter.limit(_signup_limit, key_func=get_remote_address, scope="signup-ip")
@limiter.limit(_signup_limit, key_func=lambda: _phone_prefix("signer_phone"), scope="signup-prefix",
               exempt_when=lambda: not _phone_prefix("signer_phone"), deduct_when=_accepted)
@limiter.limit(_signup_limit, key_func=lambda: _phone_prefix("invited_phone"), scope="signup-prefix",
               exempt_when=lambda: not _phone_prefix("invited_phone"), deduct_when=_accepted)
def submit() -> ResponseReturnValue:
    runtime = current_runtime()
    form = SignupForm()
    form.prepare(runtime.programs, runtime.settings.allowed_countries)
    if form.website.data:
        return blocked("honeypot")
    if not form.validate_on_submit():
        return _form_page(form, 400)
    db = db_session()
    try:
        result = sign_up(db, form.to_request(request.remote_addr, request.user_agent.string),
                         settings=runtime.settings, programs=runtime.programs, now=datetime.now(UTC))
    except SignupBlocked as exc:
        db.rollback()
        return blocked(exc.reason)
    # With Redis down the confirmations stay queued in SQL, and the scheduler enqueues them.
    commit_then_enqueue(db, runtime, result.nudge_ids, queue_name=QUEUE_HIGH)
    session["signup_channels"] = sorted(result.channels)
    return redirect(url_for("signup.sent"), 303)


@bp.get("/signup/sent")
def sent() -> ResponseReturnValue:
    channels = session.get("signup_channels") or [Channel.SMS.value, Channel.EMAIL.value]
    return _page("signup/sent.html", by_sms=Channel.SMS.value in channels, by_email=Channel.EMAIL.value in channels)


@bp.route("/confirm/<token>", methods=["GET", "POST"])
def confirm(token: str) -> ResponseReturnValue:
    runtime = current_runtime()
    if len(token) > MAX_TOKEN_CHARS:
        return _page("signup/link_invalid.html", 404, expired=False)
    try:
        partner_id = read_token(runtime.settings.secret_key, "confirm", token, max_age=CONFIRM_MAX_AGE)
    except TokenError as exc:
        return _page("signup/link_invalid.html", 410 if exc.expired else 404, expired=exc.expired)
    db = db_session()
    partner = db.get(Partner, partner_id)
    if partner is None:
        return _page("signup/link_invalid.html", 404, expired=False)
    state = partner.consent(Channel.EMAIL)
    if state is ConsentState.CONFIRMED:
        return _page("signup/already_confirmed.html")
    if state is not ConsentState.PENDING:
        return _page("signup/link_invalid.html", 410, expired=True)
    form = ConfirmForm()
    # Pending, or already running when this partner said yes by text first and now adds email.
    enrollment = open_enrollment(db, partner.couple_id)
    program = runtime.programs.get(enrollment.program_key) if (
        enrollment and enrollment.program_key in runtime.programs) else None
    if request.method == "GET" or not form.validate_on_submit():
        return _page("signup/confirm.html", form=form, program=program, name=partner.first_name)
    detail = f"link; ip={request.remote_addr or '?'}; ua={' '.join(request.user_agent.string.split())}"
    confirm_channel(db, partner, Channel.EMAIL, source="email", source_detail=detail, now=datetime.now(UTC))
    started = enrollment is not None and enrollment.status == EnrollmentStatus.ACTIVE
    db.commit()
    return _page("signup/confirmed.html", program=program, started=started)

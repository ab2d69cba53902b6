"""Programs: TOML files in message_templates/, validated at load and rendered per partner."""

from __future__ import annotations

import functools
import html
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gsm0338  # noqa: F401 - registers the "gsm03.38" codec
from anyascii import anyascii
from jinja2 import Environment, StrictUndefined, Template, TemplateSyntaxError, UndefinedError, meta
from markupsafe import Markup, escape

from service.settings import PROJECT_ROOT

TEMPLATES_DIR = PROJECT_ROOT / "message_templates"
PROGRAMS_DIR = TEMPLATES_DIR / "programs"
LAYOUTS_DIR = TEMPLATES_DIR / "layouts"

THEMES: Mapping[str, str] = {
    "safety": "A safe, non-judgmental space",
    "trust": "Trust",
    "empathy": "Empathy and reflective listening",
    "curiosity": "Understanding feelings through open questions",
    "quality_time": "Quality time",
    "intentions": "Acting on intentions",
    "communication": "Open communication and active listening",
    "boundaries": "Closeness and individuality",
    "gratitude": "Gratitude and recognition",
    "humor": "Shared humor",
    "intimacy": "Emotionally connected physical intimacy",
    "rituals": "Shared rituals",
}
STEP_PLACEHOLDERS = frozenset({"partner", "other"})
SMS_SEPTETS = 160
LONG_NAME = "Maximiliana-Josefine"  # 20 characters: the longest first name budgeted for
GSM7_EXTENSION = set("^{}[]~\\|€\f")
_KEY = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


class ProgramError(ValueError):
    """A program file that breaks the format; the message names the file, the step and the field."""


@dataclass(frozen=True)
class Step:
    day: int
    theme: str
    sms: str
    email_subject: str
    email_text: str
    email_html: str | None
    reveal: bool


@dataclass(frozen=True)
class Program:
    key: str
    title: str
    description: str
    days: int
    themes: tuple[str, ...]
    cadence: str
    messages_per_week: int
    reply_window_hours: int
    opt_in: bool
    steps: tuple[Step, ...]
    path: Path

    def step(self, day: int) -> Step:
        return self.steps[day - 1]


@dataclass(frozen=True)
class RenderedSms:
    body: str
    septets: int


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


# GSM-7's basic table (the escape byte 0x1B decodes to nothing): a character in it, or in the extension
# table, is known to encode without asking the codec, which works a character at a time in Python and was
# the largest single cost of rendering an SMS for every send.
_GSM7_BASIC = frozenset(c for c in (bytes([i]).decode("gsm03.38") for i in range(128)) if len(c) == 1)
_GSM7_KNOWN = _GSM7_BASIC | GSM7_EXTENSION


def sms_septets(text: str) -> int:
    """Septets `text` takes in GSM-7; raises UnicodeEncodeError when it needs UCS-2."""
    if not _GSM7_KNOWN.issuperset(text):
        text.encode("gsm03.38")
    return len(text) + sum(map(text.count, GSM7_EXTENSION))


def fits_one_segment(text: str) -> bool:
    try:
        return sms_septets(text) <= SMS_SEPTETS
    except UnicodeEncodeError:
        return False


_jinja = Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)  # noqa: S701 - SMS and plain text; HTML is escaped by hand below


@functools.lru_cache(maxsize=2048)
def _compiled(source: str) -> Template:
    # Compiling is far slower than rendering, and a morning peak renders the same few steps for many partners.
    return _jinja.from_string(source)


def _render_plain(source: str, values: Mapping[str, str]) -> str:
    return _compiled(source).render(**values).strip()


def _render_html(source: str, values: Mapping[str, str]) -> str:
    escaped = {k: escape(v) for k, v in values.items()}
    return str(_compiled(source).render(**escaped)).strip()


def text_to_html(text: str) -> str:
    """The HTML part built from the plain one, one <p> per paragraph; Jinja tags survive escaping."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return "\n".join(
        "<p>" + html.escape(p, quote=False).replace("\n", "<br>\n") + "</p>" for p in paragraphs
    )


# A name that leaves nothing once made GSM-7 (emoji only, say) is replaced by words that read in any
# prompt: every SMS opens with the addressed partner's name followed by a comma.
SMS_NAME_FALLBACKS: Mapping[str, str] = {"partner": "Hi", "other": "your partner"}
_NAME_PUNCTUATION = {"\u2018": "'", "\u2019": "'", "\u02bc": "'", "`": "'", "\u00b4": "'",
                     "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-"}


def _single_septet_latin(ch: str) -> bool:
    if ch in GSM7_EXTENSION or not ch.isprintable():
        return False
    if ch not in _GSM7_BASIC:
        try:
            ch.encode("gsm03.38")
        except UnicodeEncodeError:
            return False
    # GSM-7 holds a few Greek capitals; a Greek name mixing them with transliterated lowercase reads worse
    # than one transliterated whole.
    return ch.isascii() or "LATIN" in unicodedata.name(ch, "")


def sms_name(name: str) -> str:
    """A name as it can appear in a one-segment SMS: GSM-7 only, one septet per character.

    Letters GSM-7 lacks are transliterated (Zoë -> Zoe, Łukasz -> Lukasz, Алексей -> Aleksey), so a name
    never forces the whole message into UCS-2, which would cut a segment from 160 characters to 70.
    GSM-7 letters stay as they are (José, Søren); emoji and symbols are dropped.
    """
    out: list[str] = []
    for ch in unicodedata.normalize("NFC", name):
        if _single_septet_latin(ch):
            out.append(ch)
        elif ch.isspace():
            out.append(" ")
        elif ch in _NAME_PUNCTUATION:
            out.append(_NAME_PUNCTUATION[ch])
        elif unicodedata.category(ch)[0] in "LN":
            out.append("".join(c for c in anyascii(ch) if c.isalnum() or c in " '-."))
    return " ".join("".join(out).split())


def _shorten_name(name: str, limit: int) -> str:
    """At most `limit` characters, cut at a space or hyphen when there is one."""
    if len(name) <= limit:
        return name
    head = name[: limit + 1]
    for separator in (" ", "-"):
        cut = head.rfind(separator)
        if cut > 0:
            return name[:cut].rstrip(" -'.")
    return name[:limit]


def render_sms(step: Step, partner: str, other: str) -> RenderedSms:
    """The step's SMS for `partner`, always one GSM-7 segment whatever the names are.

    Names are made GSM-7 (see `sms_name`); when they are longer than the 20 characters every SMS is
    budgeted for and the text would overflow, they are shortened to 20, at a word boundary if possible.
    """
    names = {"partner": sms_name(partner), "other": sms_name(other)}
    names = {role: value or SMS_NAME_FALLBACKS[role] for role, value in names.items()}
    body = _render_plain(step.sms, names)
    if sms_septets(body) > SMS_SEPTETS:
        names = {role: _shorten_name(value, len(LONG_NAME)) for role, value in names.items()}
        body = _render_plain(step.sms, names)
    septets = sms_septets(body)
    if septets > SMS_SEPTETS:
        raise ProgramError(f"step day {step.day}: field 'sms' does not fit one segment even with 20-character names")
    return RenderedSms(body=body, septets=septets)


def render_step_email(step: Step, partner: str, other: str) -> tuple[str, str, str]:
    """Subject, text and inner HTML of a step; the layout adds greeting-free chrome and the footer."""
    values = {"partner": partner, "other": other}
    # A name is typed by a person; whatever it holds, the subject header stays one line.
    subject = " ".join(_render_plain(step.email_subject, values).split())
    text = _render_plain(step.email_text, values)
    html_source = step.email_html if step.email_html else text_to_html(step.email_text)
    return subject, text, _render_html(html_source, values)


class ProgramLibrary:
    def __init__(self, programs: Iterable[Program]) -> None:
        self._programs = {p.key: p for p in sorted(programs, key=lambda p: (p.opt_in, p.key))}

    def __contains__(self, key: object) -> bool:
        return key in self._programs

    def __iter__(self) -> Any:
        return iter(self._programs.values())

    def __len__(self) -> int:
        return len(self._programs)

    def get(self, key: str) -> Program:
        return self._programs[key]

    def keys(self) -> list[str]:
        return list(self._programs)


def load_programs(directory: Path | None = None) -> ProgramLibrary:
    """Every program in `directory` (message_templates/programs/ by default), validated."""
    directory = PROGRAMS_DIR if directory is None else directory
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise ProgramError(f"{directory}: no program files")
    programs = [load_program(path) for path in files]
    _check_unique_sms(programs)
    return ProgramLibrary(programs)


def load_program(path: Path) -> Program:
    where = path.name
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProgramError(f"{where}: not valid TOML: {exc}") from exc
    return parse_program(data, path)


def _type_name(kind: type) -> str:
    return {"str": "a string", "int": "an integer", "list": "a list", "bool": "true or false"}.get(
        kind.__name__, kind.__name__
    )


def _require(data: Mapping[str, Any], field: str, kind: type, where: str) -> Any:
    if field not in data:
        raise ProgramError(f"{where}: field '{field}' is missing")
    return _typed(data[field], field, kind, where)


def _typed(value: Any, field: str, kind: type, where: str) -> Any:
    # TOML booleans are Python ints; a `days = true` must not pass as 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProgramError(f"{where}: field '{field}' must be {_type_name(kind)}, not {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise ProgramError(f"{where}: field '{field}' is empty")
    return value


PROGRAM_FIELDS = frozenset(
    {"key", "title", "description", "days", "themes", "cadence", "messages_per_week",
     "reply_window_hours", "opt_in", "steps"}
)
STEP_FIELDS = frozenset({"day", "theme", "reveal", "sms", "email_subject", "email_text", "email_html"})


def parse_program(data: Mapping[str, Any], path: Path) -> Program:
    where = path.name
    unknown = set(data) - PROGRAM_FIELDS
    if unknown:
        raise ProgramError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    key = _require(data, "key", str, where)
    if not _KEY.match(key):
        raise ProgramError(f"{where}: field 'key' must be lowercase letters, digits and hyphens, not {key!r}")
    if key != path.stem:
        raise ProgramError(f"{where}: field 'key' is {key!r} but must match the file name {path.stem!r}")
    title = _require(data, "title", str, where)
    description = _require(data, "description", str, where)
    days = _require(data, "days", int, where)
    if not 1 <= days <= 366:
        raise ProgramError(f"{where}: field 'days' must be between 1 and 366, not {days}")
    themes = _require(data, "themes", list, where)
    if not themes:
        raise ProgramError(f"{where}: field 'themes' is empty")
    for theme in themes:
        if theme not in THEMES:
            raise ProgramError(f"{where}: field 'themes' names unknown theme {theme!r}; "
                               f"known themes: {', '.join(THEMES)}")
    if len(set(themes)) != len(themes):
        raise ProgramError(f"{where}: field 'themes' names a theme twice")
    cadence = _require(data, "cadence", str, where)
    if cadence != "daily":
        raise ProgramError(f"{where}: field 'cadence' must be 'daily', not {cadence!r}")
    per_week = _require(data, "messages_per_week", int, where)
    if not 1 <= per_week <= 7:
        raise ProgramError(f"{where}: field 'messages_per_week' must be between 1 and 7 for a daily program")
    window = _require(data, "reply_window_hours", int, where)
    if not 1 <= window <= 72:
        raise ProgramError(f"{where}: field 'reply_window_hours' must be between 1 and 72, not {window}")
    opt_in = _typed(data.get("opt_in", False), "opt_in", bool, where)
    raw_steps = _require(data, "steps", list, where)
    steps = [parse_step(raw, where, position) for position, raw in enumerate(raw_steps, start=1)]
    _check_days(steps, days, where)
    for step in steps:
        if step.theme not in themes:
            raise ProgramError(f"{where}: step day {step.day}: field 'theme' is {step.theme!r}, which the "
                               f"program's 'themes' ({', '.join(themes)}) does not list")
    return Program(
        key=key,
        title=title.strip(),
        description=description.strip(),
        days=days,
        themes=tuple(themes),
        cadence=cadence,
        messages_per_week=per_week,
        reply_window_hours=window,
        opt_in=opt_in,
        steps=tuple(sorted(steps, key=lambda s: s.day)),
        path=path,
    )


def _check_days(steps: list[Step], days: int, where: str) -> None:
    seen: set[int] = set()
    for step in steps:
        if not 1 <= step.day <= days:
            raise ProgramError(f"{where}: step day {step.day}: field 'day' must be between 1 and {days}")
        if step.day in seen:
            raise ProgramError(f"{where}: step day {step.day}: field 'day' repeats an earlier step's day")
        seen.add(step.day)
    missing = sorted(set(range(1, days + 1)) - seen)
    if missing:
        listed = ", ".join(str(day) for day in missing)
        raise ProgramError(f"{where}: step day {missing[0]}: field 'day': no step for day(s) {listed} "
                           f"(every day 1..{days} needs exactly one step)")


def parse_step(raw: Any, where: str, position: int) -> Step:
    """One `[[steps]]` table; errors name the step by its day, or by its position until the day is known."""
    if not isinstance(raw, dict):
        raise ProgramError(f"{where}: step {position}: must be a [[steps]] table")
    day = _require(raw, "day", int, f"{where}: step {position}")
    where = f"{where}: step day {day}"
    unknown = set(raw) - STEP_FIELDS
    if unknown:
        raise ProgramError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    theme = _require(raw, "theme", str, where)
    if theme not in THEMES:
        raise ProgramError(f"{where}: field 'theme' is {theme!r}, not one of {', '.join(THEMES)}")
    reveal = _typed(raw.get("reveal", False), "reveal", bool, where)
    email_html = raw.get("email_html")
    step = Step(
        day=day,
        theme=theme,
        sms=_require(raw, "sms", str, where).strip(),
        email_subject=_require(raw, "email_subject", str, where).strip(),
        email_text=_require(raw, "email_text", str, where).strip(),
        email_html=None if email_html is None else _typed(email_html, "email_html", str, where).strip(),
        reveal=reveal,
    )
    for field in ("sms", "email_subject", "email_text", "email_html"):
        source = getattr(step, field)
        if source is not None:
            _check_template(source, f"{where}: field '{field}'")
    if "\n" in step.email_subject:
        raise ProgramError(f"{where}: field 'email_subject' must be one line")
    _check_sms(step, where)
    return step


def _check_sms(step: Step, where: str) -> None:
    # The raw template, not render_sms: render_sms shortens names to make any text fit, which would hide
    # a text that is too long for the 20-character names every SMS is budgeted for.
    rendered = _render_plain(step.sms, {"partner": LONG_NAME, "other": LONG_NAME})
    try:
        septets = sms_septets(rendered)
    except UnicodeEncodeError as exc:
        bad = rendered[exc.start:exc.end]
        raise ProgramError(
            f"{where}: field 'sms' has {bad!r} (U+{ord(bad[0]):04X}), which is not GSM-7 and would force UCS-2; "
            "use straight quotes and plain hyphens, no emoji"
        ) from exc
    if septets > SMS_SEPTETS:
        raise ProgramError(
            f"{where}: field 'sms' takes {septets} GSM-7 septets with 20-character names; one segment is 160"
        )
    if "\n" in rendered:
        raise ProgramError(f"{where}: field 'sms' must be one line")
    if step.theme == "intimacy" and not DISCREET_SMS.search(rendered):
        raise ProgramError(
            f"{where}: field 'sms' of an intimacy step must stay discreet and point to the email "
            "(lock screens are public)"
        )


DISCREET_SMS = re.compile(r"\b(e-?mail|inbox)\b", re.IGNORECASE)


def _check_template(source: str, where: str) -> None:
    try:
        parsed = _jinja.parse(source)
    except TemplateSyntaxError as exc:
        raise ProgramError(f"{where}: template error on line {exc.lineno}: {exc.message}") from exc
    unknown = meta.find_undeclared_variables(parsed) - STEP_PLACEHOLDERS
    if unknown:
        raise ProgramError(f"{where}: unknown placeholder(s) {', '.join(sorted(unknown))}; "
                           f"use {{{{ partner }}}} or {{{{ other }}}}")
    try:
        _jinja.from_string(source).render(partner=LONG_NAME, other=LONG_NAME)
    except (UndefinedError, TypeError, ValueError) as exc:
        raise ProgramError(f"{where}: template error: {exc}") from exc


def normalized_text(text: str) -> str:
    """Lowercase words only: two texts that differ in case, spacing or punctuation normalize alike."""
    return " ".join(re.findall(r"[a-z0-9{}]+", text.lower()))


def _check_unique_sms(programs: Iterable[Program]) -> None:
    seen: dict[str, str] = {}
    for program in programs:
        for step in program.steps:
            normalized = normalized_text(step.sms)
            here = f"{program.path.name}: step day {step.day}"
            if normalized in seen:
                raise ProgramError(f"{here}: field 'sms' repeats the SMS of {seen[normalized]}")
            seen[normalized] = here


def preview(program: Program, partner: str = "Alex", other: str = "Sam") -> list[dict[str, Any]]:
    """Every step rendered for both sample partners, for content authors."""
    rows = []
    for step in program.steps:
        for me, them in ((partner, other), (other, partner)):
            sms = render_sms(step, me, them)
            subject, text, inner_html = render_step_email(step, me, them)
            rows.append({
                "day": step.day, "theme": step.theme, "reveal": step.reveal, "partner": me,
                "sms": sms.body, "sms_septets": sms.septets, "email_subject": subject,
                "email_text": text, "email_html": inner_html,
            })
    return rows


__all__ = ["Markup", "Program", "ProgramError", "ProgramLibrary", "Step", "load_programs", "render_email",
           "render_sms", "sms_name"]


_layouts = Environment(undefined=StrictUndefined, autoescape=True, keep_trailing_newline=True)


@dataclass(frozen=True)
class EmailFooter:
    program_title: str
    sender_name: str
    postal_address: str
    unsubscribe_url: str | None
    # Why this person gets the email: they said yes, or (for an invitation) someone signed them up.
    reason: str | None = None


@functools.cache
def _email_layouts() -> tuple[Template, Template]:
    return (
        _layouts.from_string((LAYOUTS_DIR / "email.html").read_text(encoding="utf-8")),
        _jinja.from_string((LAYOUTS_DIR / "email.txt").read_text(encoding="utf-8")),
    )


def wrap_email(subject: str, text: str, inner_html: str, footer: EmailFooter) -> RenderedEmail:
    """Put a message into the shared layout with the CAN-SPAM footer (unsubscribe link, postal address)."""
    values = {
        "subject": subject, "program_title": footer.program_title, "sender_name": footer.sender_name,
        "postal_address": footer.postal_address, "unsubscribe_url": footer.unsubscribe_url,
        "reason": footer.reason
        or f"You're getting this because you said yes to {footer.program_title} from {footer.sender_name}.",
    }
    html_layout, text_layout = _email_layouts()
    return RenderedEmail(
        subject=subject,
        text=text_layout.render(body_text=text, **values).strip() + "\n",
        html=html_layout.render(body_html=Markup(inner_html), **values),  # noqa: S704 - escaped in render_step_email
    )


def render_email(step: Step, partner: str, other: str, footer: EmailFooter) -> RenderedEmail:
    subject, text, inner_html = render_step_email(step, partner, other)
    return wrap_email(subject, text, inner_html, footer)

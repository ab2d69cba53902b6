"""Programs: TOML files in message_templates/, validated at load and rendered per partner."""

from __future__ import annotations

import functools
import html
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gsm0338  # noqa: F401 - registers the "gsm03.38" codec
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


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


def sms_septets(text: str) -> int:
    """Septets `text` takes in GSM-7; raises UnicodeEncodeError when it needs UCS-2."""
    text.encode("gsm03.38")
    return sum(2 if ch in GSM7_EXTENSION else 1 for ch in text)


def fits_one_segment(text: str) -> bool:
    try:
        return sms_septets(text) <= SMS_SEPTETS
    except UnicodeEncodeError:
        return False


_jinja = Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)  # noqa: S701 - SMS and plain text; HTML is escaped by hand below


def _render_plain(source: str, values: Mapping[str, str]) -> str:
    return _jinja.from_string(source).render(**values).strip()


def _render_html(source: str, values: Mapping[str, str]) -> str:
    escaped = {k: escape(v) for k, v in values.items()}
    return str(_jinja.from_string(source).render(**escaped)).strip()


def text_to_html(text: str) -> str:
    """The HTML part built from the plain one, one <p> per paragraph; Jinja tags survive escaping."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return "\n".join(
        "<p>" + html.escape(p, quote=False).replace("\n", "<br>\n") + "</p>" for p in paragraphs
    )


def render_sms(step: Step, partner: str, other: str) -> RenderedSms:
    return RenderedSms(body=_render_plain(step.sms, {"partner": partner, "other": other}))


def render_step_email(step: Step, partner: str, other: str) -> tuple[str, str, str]:
    """Subject, text and inner HTML of a step; the layout adds greeting-free chrome and the footer."""
    values = {"partner": partner, "other": other}
    subject = _render_plain(step.email_subject, values)
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


def load_programs(directory: Path = PROGRAMS_DIR) -> ProgramLibrary:
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


def _require(data: Mapping[str, Any], field: str, kind: type | tuple[type, ...], where: str) -> Any:
    if field not in data:
        raise ProgramError(f"{where}: field '{field}' is missing")
    value = data[field]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ProgramError(f"{where}: field '{field}' must be {expected}, not {type(value).__name__}")
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
    if not _KEY.match(key) or key != path.stem:
        raise ProgramError(
            f"{where}: field 'key' must be lowercase letters, digits and hyphens, and match the file name"
        )
    days = _require(data, "days", int, where)
    if not 1 <= days <= 366:
        raise ProgramError(f"{where}: field 'days' must be between 1 and 366")
    themes = _require(data, "themes", list, where)
    for theme in themes:
        if theme not in THEMES:
            raise ProgramError(f"{where}: field 'themes' names unknown theme {theme!r}")
    cadence = _require(data, "cadence", str, where)
    if cadence != "daily":
        raise ProgramError(f"{where}: field 'cadence' must be 'daily'")
    per_week = _require(data, "messages_per_week", int, where)
    window = _require(data, "reply_window_hours", int, where)
    if not 1 <= window <= 72:
        raise ProgramError(f"{where}: field 'reply_window_hours' must be between 1 and 72")
    raw_steps = _require(data, "steps", list, where)
    steps = [parse_step(raw, f"{where}: step {i}") for i, raw in enumerate(raw_steps, start=1)]
    days_seen = sorted(s.day for s in steps)
    if days_seen != list(range(1, days + 1)):
        missing = sorted(set(range(1, days + 1)) - set(days_seen))
        extra = sorted({d for d in days_seen if days_seen.count(d) > 1 or d > days})
        raise ProgramError(f"{where}: field 'steps' must hold one step per day 1..{days} "
                           f"(missing {missing or 'none'}, repeated or out of range {extra or 'none'})")
    return Program(
        key=key,
        title=_require(data, "title", str, where),
        description=_require(data, "description", str, where),
        days=days,
        themes=tuple(themes),
        cadence=cadence,
        messages_per_week=per_week,
        reply_window_hours=window,
        opt_in=bool(data.get("opt_in", False)),
        steps=tuple(sorted(steps, key=lambda s: s.day)),
        path=path,
    )


def parse_step(raw: Any, where: str) -> Step:
    if not isinstance(raw, dict):
        raise ProgramError(f"{where}: must be a table")
    day = _require(raw, "day", int, where)
    where = f"{where.rsplit(': step', 1)[0]}: step day {day}"
    unknown = set(raw) - STEP_FIELDS
    if unknown:
        raise ProgramError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    theme = _require(raw, "theme", str, where)
    if theme not in THEMES:
        raise ProgramError(f"{where}: field 'theme' is {theme!r}, not one of {', '.join(THEMES)}")
    reveal = raw.get("reveal", False)
    if not isinstance(reveal, bool):
        raise ProgramError(f"{where}: field 'reveal' must be true or false")
    step = Step(
        day=day,
        theme=theme,
        sms=_require(raw, "sms", str, where).strip(),
        email_subject=_require(raw, "email_subject", str, where).strip(),
        email_text=_require(raw, "email_text", str, where).strip(),
        email_html=raw["email_html"].strip() if isinstance(raw.get("email_html"), str) else None,
        reveal=reveal,
    )
    for field in ("sms", "email_subject", "email_text", "email_html"):
        source = getattr(step, field)
        if source is None:
            continue
        _check_template(source, f"{where}: field '{field}'")
    rendered = render_sms(step, LONG_NAME, LONG_NAME).body
    try:
        septets = sms_septets(rendered)
    except UnicodeEncodeError as exc:
        bad = rendered[exc.start:exc.end]
        raise ProgramError(f"{where}: field 'sms' has {bad!r}, which is not GSM-7 and would force UCS-2") from exc
    if septets > SMS_SEPTETS:
        raise ProgramError(
            f"{where}: field 'sms' takes {septets} GSM-7 septets with 20-character names; one segment is 160"
        )
    if "\n" in step.email_subject:
        raise ProgramError(f"{where}: field 'email_subject' must be one line")
    return step


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
    except UndefinedError as exc:
        raise ProgramError(f"{where}: {exc.message}") from exc


def _check_unique_sms(programs: Iterable[Program]) -> None:
    seen: dict[str, str] = {}
    for program in programs:
        for step in program.steps:
            normalized = " ".join(step.sms.lower().split())
            here = f"{program.path.name}: step day {step.day}"
            if normalized in seen:
                raise ProgramError(f"{here}: field 'sms' repeats {seen[normalized]}")
            seen[normalized] = here


def preview(program: Program, partner: str = "Alex", other: str = "Sam") -> list[dict[str, Any]]:
    """Every step rendered for both sample partners, for content authors."""
    rows = []
    for step in program.steps:
        for me, them in ((partner, other), (other, partner)):
            sms = render_sms(step, me, them).body
            subject, text, inner_html = render_step_email(step, me, them)
            rows.append({
                "day": step.day, "theme": step.theme, "reveal": step.reveal, "partner": me,
                "sms": sms, "sms_septets": sms_septets(sms), "email_subject": subject,
                "email_text": text, "email_html": inner_html,
            })
    return rows


__all__ = ["Markup", "Program", "ProgramError", "ProgramLibrary", "Step", "load_programs"]


_layouts = Environment(undefined=StrictUndefined, autoescape=True, keep_trailing_newline=True)


@dataclass(frozen=True)
class EmailFooter:
    program_title: str
    sender_name: str
    postal_address: str
    unsubscribe_url: str | None


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

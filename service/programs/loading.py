"""Reading program files and refusing any that break the format: TOML parsed into `Program` and `Step`,
every field checked for presence, type and range, the days 1..N covered once each, every text's Jinja
checked for syntax and for placeholders other than {{ partner }} and {{ other }}, every SMS checked to be
one line of GSM-7 within one segment for 20-character names (and, for intimacy steps, discreet), and no
SMS repeated across programs. Errors are `ProgramError`s naming the file, the step and the field.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError, UndefinedError, meta

from service.programs.model import LONG_NAME, STEP_PLACEHOLDERS, THEMES, Program, ProgramError, ProgramLibrary, Step
from service.programs.sms import SMS_SEPTETS, sms_septets
from service.programs.templating import jinja, render_plain

_KEY = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
PROGRAM_FIELDS = frozenset(
    {"key", "title", "description", "days", "themes", "cadence", "messages_per_week",
     "reply_window_hours", "opt_in", "steps"}
)
STEP_FIELDS = frozenset({"day", "theme", "reveal", "sms", "email_subject", "email_text", "email_html"})
DISCREET_SMS = re.compile(r"\b(e-?mail|inbox)\b", re.IGNORECASE)


def load_programs(directory: Path) -> ProgramLibrary:
    """Every program in `directory`, validated; `service.programs.load_programs` supplies the default."""
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise ProgramError(f"{directory}: no program files")
    programs = [load_program(path) for path in files]
    _check_unique_sms(programs)
    return ProgramLibrary(programs)


def load_program(path: Path) -> Program:
    """The program in the TOML file at `path`, validated."""
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


def parse_program(data: Mapping[str, Any], path: Path) -> Program:
    """A program from its parsed TOML `data`; `path` names it in errors and must match its key."""
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
    rendered = render_plain(step.sms, {"partner": LONG_NAME, "other": LONG_NAME})
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


def _check_template(source: str, where: str) -> None:
    try:
        parsed = jinja.parse(source)
    except TemplateSyntaxError as exc:
        raise ProgramError(f"{where}: template error on line {exc.lineno}: {exc.message}") from exc
    unknown = meta.find_undeclared_variables(parsed) - STEP_PLACEHOLDERS
    if unknown:
        raise ProgramError(f"{where}: unknown placeholder(s) {', '.join(sorted(unknown))}; "
                           f"use {{{{ partner }}}} or {{{{ other }}}}")
    try:
        jinja.from_string(source).render(partner=LONG_NAME, other=LONG_NAME)
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

"""Programs: every step renders for hard names on both channels, and the validator names what is broken."""

from __future__ import annotations

import html
import itertools
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markupsafe import escape

from service.app import create_app
from service.programs import (
    LONG_NAME,
    SMS_NAME_FALLBACKS,
    SMS_SEPTETS,
    EmailFooter,
    Program,
    ProgramError,
    ProgramLibrary,
    Step,
    load_programs,
    render_email,
    render_sms,
    sms_name,
    sms_septets,
)
from service.settings import Settings
from service.web.context import runtime_of

HARD_NAMES = [
    "Zoë",
    "Łukasz",
    "D'Arcy",
    "D’Arcy",  # the curly apostrophe a phone keyboard types
    "Maximiliana-Josefine",  # exactly the 20 characters every SMS is budgeted for
    "Bartholomew Alexander-Fitzgerald",  # 32 characters
    "Wolfeschlegelsteinhausenberger",  # 30 characters, nowhere to cut
    "<b>Sam</b>",
    "Tom & Jerry",
    "Алексей",
    "李雷",
    "Zoë-Łucja Ångström D'Arcy",  # long and non-GSM-7
    "José",
    "😀",
]
# Every name is someone's partner and someone's addressee, next to a short and a long name.
NAME_PAIRS = [(name, "Sam") for name in HARD_NAMES] + [("Alex", name) for name in HARD_NAMES] + [
    ("Bartholomew Alexander-Fitzgerald", "Zoë-Łucja Ångström D'Arcy"),
    ("<b>Sam</b>", "Tom & Jerry"),
    ("Łukasz", "Zoë"),
]
FOOTER = EmailFooter(
    program_title="A month of closeness",
    sender_name="Closer",
    postal_address="1 Example Street, Springfield, IL 62701",
    unsubscribe_url="https://closer.example.test/unsubscribe/tok-123",
)


@pytest.fixture(scope="module")
def library() -> ProgramLibrary:
    return load_programs()


def all_steps(library: ProgramLibrary) -> list[tuple[Program, Step]]:
    return [(program, step) for program in library for step in program.steps]


def assert_no_template_left(text: str, where: str) -> None:
    for marker in ("{{", "}}", "{%", "%}", "{#"):
        assert marker not in text, f"{where}: {marker!r} left in {text!r}"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.links += [value or "" for key, value in attrs if key == "href"]


# --- SMS --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("partner", "other"), NAME_PAIRS)
def test_every_sms_fits_one_gsm7_segment_for_hard_names(library: ProgramLibrary, partner: str, other: str) -> None:
    for program, step in all_steps(library):
        for me, them in ((partner, other), (other, partner)):
            where = f"{program.key} day {step.day} to {me!r}"
            sms = render_sms(step, me, them)
            sms.body.encode("gsm03.38")  # raises when the text would need UCS-2
            assert sms.septets == sms_septets(sms.body) <= SMS_SEPTETS, where
            assert_no_template_left(sms.body, where)
            addressed = sms_name(me) or SMS_NAME_FALLBACKS["partner"]
            assert sms.body.startswith(addressed[:10]), where


@pytest.mark.parametrize(
    ("typed", "in_sms"),
    [
        ("Zoë", "Zoe"),  # ë is not GSM-7: it would turn the whole text into UCS-2 (70 characters a segment)
        ("Łukasz", "Lukasz"),
        ("D’Arcy", "D'Arcy"),
        ("Anne–Marie", "Anne-Marie"),
        ("Алексей", "Aleksey"),
        ("Σοφία", "Sofia"),  # not "Σofia": GSM-7's few Greek capitals would mix with transliterated letters
        ("José", "José"),  # GSM-7 letters stay
        ("Søren", "Søren"),
        ("<b>Sam</b>", "<b>Sam</b>"),  # an SMS is plain text: nothing to escape
        ("Tom & Jerry", "Tom & Jerry"),
        ("  Ana \n Lu ", "Ana Lu"),
        ("Sam 😀", "Sam"),
        ("Jo{}|~^€", "Jo"),  # GSM-7 extension characters would count twice
        ("😀", ""),
    ],
)
def test_sms_name_is_gsm7_one_septet_per_character(typed: str, in_sms: str) -> None:
    name = sms_name(typed)
    assert name == in_sms
    name.encode("gsm03.38")
    assert sms_septets(name) == len(name)


def test_a_name_that_is_not_gsm7_keeps_the_sms_in_one_segment(library: ProgramLibrary) -> None:
    step = library.get("appreciation").step(1)
    sms = render_sms(step, "Zoë", "Łukasz")
    assert sms.body.startswith("Zoe, ")
    assert "Lukasz" in sms.body
    assert "ë" not in sms.body and "Ł" not in sms.body


def test_names_are_shortened_only_when_the_text_would_overflow(library: ProgramLibrary) -> None:
    longest = max((s for _, s in all_steps(library)), key=lambda s: render_sms(s, LONG_NAME, LONG_NAME).septets)
    shortest = min((s for _, s in all_steps(library)), key=lambda s: render_sms(s, LONG_NAME, LONG_NAME).septets)
    long_name = "Bartholomew Alexander-Fitzgerald"
    assert render_sms(shortest, long_name, "Sam").body.startswith(long_name + ",")
    squeezed = render_sms(longest, long_name, long_name)
    assert squeezed.septets <= SMS_SEPTETS
    assert squeezed.body.startswith("Bartholomew,")  # cut at a word boundary, within 20 characters
    assert long_name not in squeezed.body


def test_a_name_with_nothing_left_in_gsm7_reads_as_a_greeting_and_your_partner(library: ProgramLibrary) -> None:
    step = library.get("appreciation").step(1)
    assert render_sms(step, "😀", "Sam").body.startswith("Hi, ")
    assert "your partner" in render_sms(step, "Sam", "🎉").body


# --- email ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("partner", "other"), NAME_PAIRS)
def test_every_email_has_both_parts_footer_and_escaped_names(library: ProgramLibrary, partner: str, other: str) -> None:
    for program, step in all_steps(library):
        for me, them in ((partner, other), (other, partner)):
            where = f"{program.key} day {step.day} to {me!r}"
            email = render_email(step, me, them, FOOTER)
            for part in (email.subject, email.text, email.html):
                assert_no_template_left(part, where)
            assert email.subject and "\n" not in email.subject, where
            # Plain text: the names exactly as typed, and the footer.
            assert me in email.text, where
            assert "&amp;" not in email.text and "&lt;" not in email.text, where
            assert f"Unsubscribe: {FOOTER.unsubscribe_url}" in email.text, where
            assert FOOTER.postal_address in email.text, where
            # HTML: the names escaped, never markup of their own.
            assert str(escape(me)) in email.html, where
            parsed = _Tags()
            parsed.feed(email.html)
            assert "b" not in parsed.tags, where
            assert FOOTER.unsubscribe_url in parsed.links, where
            assert FOOTER.postal_address in html.unescape(email.html), where
            assert me in html.unescape(email.html), where


def test_html_like_names_are_escaped_in_html_and_left_alone_in_text(library: ProgramLibrary) -> None:
    step = library.get("empathy").step(1)
    email = render_email(step, "<b>Sam</b>", "Tom & Jerry", FOOTER)
    assert "<b>Sam</b>" not in email.html
    assert "&lt;b&gt;Sam&lt;/b&gt;" in email.html
    assert "Tom &amp; Jerry" in email.html
    assert email.text.startswith("<b>Sam</b>, ")
    assert "Tom & Jerry" in email.text


def test_email_keeps_names_that_sms_transliterates(library: ProgramLibrary) -> None:
    step = library.get("appreciation").step(1)
    email = render_email(step, "Zoë", "Łukasz", FOOTER)
    assert email.text.startswith("Zoë, ")
    assert "Łukasz" in email.text and "Łukasz" in email.html


def test_a_name_cannot_break_the_subject_into_two_header_lines(library: ProgramLibrary, tmp_path: Path) -> None:
    write_program(tmp_path, "demo", steps=[step_toml(1, subject="A note about {{ other }}"), step_toml(2)])
    step = load_programs(tmp_path).get("demo").step(1)
    email = render_email(step, "Alex", "Sam\r\nBcc: someone@example.com", FOOTER)
    assert "\n" not in email.subject and "\r" not in email.subject


# --- the validator ----------------------------------------------------------------------------


def step_toml(
    day: int,
    *,
    theme: str = "gratitude",
    sms: str | None = None,
    subject: str = "A small thing",
    text: str = "{{ partner }}, what did {{ other }} do today? Reply to this email with it.",
    extra: str = "",
) -> str:
    sms = sms if sms is not None else f"{{{{ partner }}}}, what did {{{{ other }}}} do on day {day}? Reply with it."
    return (
        f'[[steps]]\nday = {day}\ntheme = "{theme}"\nsms = "{sms}"\nemail_subject = "{subject}"\n'
        f'email_text = """\n{text}\n"""\n{extra}\n'
    )


def program_toml(key: str, *, days: int = 2, themes: str = '["gratitude", "intimacy"]', steps: list[str],
                 extra: str = "") -> str:
    return (
        f'key = "{key}"\ntitle = "Demo"\ndescription = "A demo program."\ndays = {days}\n'
        f'themes = {themes}\ncadence = "daily"\nmessages_per_week = 7\nreply_window_hours = 20\n{extra}\n\n'
        + "\n".join(steps)
    )


def write_program(directory: Path, name: str, *, steps: list[str] | None = None, **kwargs: str | int) -> Path:
    key = str(kwargs.pop("key", name))
    steps = steps if steps is not None else [step_toml(1), step_toml(2)]
    path = directory / f"{name}.toml"
    path.write_text(program_toml(key, steps=steps, **kwargs), encoding="utf-8")  # type: ignore[arg-type]
    return path


def test_a_well_formed_program_loads(tmp_path: Path) -> None:
    write_program(tmp_path, "demo")
    library = load_programs(tmp_path)
    assert library.keys() == ["demo"]
    assert [s.day for s in library.get("demo").steps] == [1, 2]


# 147 characters for "Alex", 163 for the 20-character name every SMS must leave room for.
TOO_LONG = "{{ partner }}, " + "word " * 27 + "Reply."
BROKEN = [
    # (case, file contents, fragments the message must hold: file, step, field, what)
    ("missing field", dict(steps=[step_toml(1), step_toml(2).replace('email_subject = "A small thing"\n', "")]),
     ["demo.toml", "step day 2", "'email_subject'", "missing"]),
    ("wrong type", dict(steps=[step_toml(1), step_toml(2).replace("day = 2", 'day = "2"')]),
     ["demo.toml", "step 2", "'day'", "must be an integer, not str"]),
    ("wrong type of text", dict(steps=[step_toml(1), step_toml(2, extra="reveal = 'yes'")]),
     ["demo.toml", "step day 2", "'reveal'", "must be true or false"]),
    ("unknown theme", dict(steps=[step_toml(1, theme="romance"), step_toml(2)]),
     ["demo.toml", "step day 1", "'theme'", "'romance'"]),
    ("theme the program does not list", dict(steps=[step_toml(1, theme="humor"), step_toml(2)]),
     ["demo.toml", "step day 1", "'theme'", "'humor'", "does not list"]),
    ("unknown placeholder", dict(steps=[step_toml(1), step_toml(2, text="{{ partner }}, ask {{ name }}. Reply.")]),
     ["demo.toml", "step day 2", "'email_text'", "unknown placeholder", "name"]),
    ("jinja syntax error", dict(steps=[step_toml(1, sms="{{ partner }, hello {% if %}"), step_toml(2)]),
     ["demo.toml", "step day 1", "'sms'", "template error"]),
    ("unclosed block", dict(steps=[step_toml(1), step_toml(2, subject="{% if other %}Hi")]),
     ["demo.toml", "step day 2", "'email_subject'", "template error"]),
    ("sms too long", dict(steps=[step_toml(1), step_toml(2, sms=TOO_LONG)]),
     ["demo.toml", "step day 2", "'sms'", "septets", "160"]),
    ("curly quote", dict(steps=[step_toml(1, sms="{{ partner }}, what’s new? Reply."), step_toml(2)]),
     ["demo.toml", "step day 1", "'sms'", "’", "GSM-7"]),
    ("emoji", dict(steps=[step_toml(1), step_toml(2, sms="{{ partner }}, smile 🙂 Reply.")]),
     ["demo.toml", "step day 2", "'sms'", "🙂", "UCS-2"]),
    ("em dash", dict(steps=[step_toml(1, sms="{{ partner }}, one thing — today. Reply."), step_toml(2)]),
     ["demo.toml", "step day 1", "'sms'", "—"]),
    ("missing day", dict(days=3),
     ["demo.toml", "step day 3", "'day'", "no step for day(s) 3"]),
    ("duplicate day", dict(steps=[step_toml(1), step_toml(1, sms="{{ partner }}, another. Reply.")]),
     ["demo.toml", "step day 1", "'day'", "repeats"]),
    ("day out of range", dict(steps=[step_toml(1), step_toml(2), step_toml(9)]),
     ["demo.toml", "step day 9", "'day'", "between 1 and 2"]),
    ("key not matching the file name", dict(key="other-name"),
     ["demo.toml", "'key'", "'other-name'", "file name"]),
    ("key with capitals", dict(key="Demo"), ["demo.toml", "'key'", "lowercase"]),
    ("unknown step field", dict(steps=[step_toml(1, extra='mood = "sunny"'), step_toml(2)]),
     ["demo.toml", "step day 1", "unknown field", "mood"]),
    ("indiscreet intimacy sms", dict(steps=[step_toml(1), step_toml(2, theme="intimacy")]),
     ["demo.toml", "step day 2", "'sms'", "discreet"]),
    ("opt_in not a boolean", dict(extra='opt_in = "yes"'), ["demo.toml", "'opt_in'", "true or false"]),
    ("days not a number", dict(days='"two"'), ["demo.toml", "'days'", "must be an integer"]),
    ("unknown program theme", dict(themes='["gratitude", "romance"]'), ["demo.toml", "'themes'", "'romance'"]),
]


@pytest.mark.parametrize(("case", "contents", "fragments"), BROKEN, ids=[case for case, _, _ in BROKEN])
def test_the_validator_rejects_a_broken_file_with_a_precise_message(
    tmp_path: Path, case: str, contents: dict[str, object], fragments: list[str]
) -> None:
    write_program(tmp_path, "demo", **contents)  # type: ignore[arg-type]
    with pytest.raises(ProgramError) as raised:
        load_programs(tmp_path)
    message = str(raised.value)
    for fragment in fragments:
        assert fragment in message, f"{case}: {fragment!r} not in {message!r}"


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "demo.toml").write_text('key = "demo"\ntitle = "unterminated\n', encoding="utf-8")
    with pytest.raises(ProgramError, match=r"demo\.toml: not valid TOML"):
        load_programs(tmp_path)


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProgramError, match="no program files"):
        load_programs(tmp_path)


def test_the_same_sms_in_two_programs_is_rejected(tmp_path: Path) -> None:
    shared = "{{ partner }}, what made you smile today? Reply with it."
    write_program(tmp_path, "first", steps=[step_toml(1, sms=shared), step_toml(2)])
    # Case and punctuation do not make a copy new.
    copy = "{{ partner }}, What made you smile today! Reply with it"
    write_program(tmp_path, "second", steps=[step_toml(1, sms="{{ partner }}, hello. Reply."), step_toml(2, sms=copy)])
    with pytest.raises(ProgramError) as raised:
        load_programs(tmp_path)
    message = str(raised.value)
    assert "second.toml: step day 2: field 'sms'" in message
    assert "first.toml: step day 1" in message


def test_the_shipped_programs_are_valid(library: ProgramLibrary) -> None:
    assert len(library) >= 6
    for program in library:
        assert program.path.stem == program.key
        assert [step.day for step in program.steps] == list(range(1, program.days + 1))


# --- start-up ---------------------------------------------------------------------------------


def test_the_app_refuses_to_start_with_an_invalid_program(settings: Settings, tmp_path: Path) -> None:
    write_program(tmp_path, "demo", steps=[step_toml(1, theme="romance"), step_toml(2)])
    with pytest.raises(ProgramError, match=r"demo\.toml: step day 1: field 'theme'"):
        create_app(settings, programs_dir=tmp_path)


def test_the_app_serves_the_programs_it_was_given(settings: Settings, tmp_path: Path) -> None:
    write_program(tmp_path, "demo")
    app = create_app(settings, programs_dir=tmp_path)
    try:
        assert runtime_of(app).programs.keys() == ["demo"]
    finally:
        runtime_of(app).database.dispose()


def test_names_pairs_cover_every_hard_name_in_both_roles() -> None:
    # The rendering tests above are only as good as this list.
    partners = {pair[0] for pair in NAME_PAIRS}
    others = {pair[1] for pair in NAME_PAIRS}
    assert set(HARD_NAMES) <= partners and set(HARD_NAMES) <= others
    assert any(len(name) >= 20 and not name.isascii() for name in HARD_NAMES)
    assert all(a != b for a, b in itertools.combinations(HARD_NAMES, 2))


def test_footer_reason_defaults_to_consent_and_can_be_an_invitation() -> None:
    from service.programs import EmailFooter, wrap_email

    said_yes = wrap_email("S", "Body", "<p>Body</p>", EmailFooter("Noticing the good", "Closer", "1 Main St", "https://u"))
    assert "you said yes to Noticing the good" in said_yes.text
    invited = wrap_email("S", "Body", "<p>Body</p>", EmailFooter(
        "Noticing the good", "Closer", "1 Main St", "https://u", reason="Someone asked Closer to invite you."))
    assert "Someone asked Closer to invite you." in invited.text and "you said yes" not in invited.html
    assert "1 Main St" in invited.text and "https://u" in invited.html


def test_septets_are_counted_as_the_gsm_codec_counts_them() -> None:
    from service.programs import GSM7_EXTENSION

    def by_codec(text: str) -> int:
        text.encode("gsm03.38")
        return sum(2 if ch in GSM7_EXTENSION else 1 for ch in text)

    for text in ("Alex, what made you smile?", "a{b}c€~|", "José Søren Ñ", "", "Zoë", "Алексей", "hi 😀", "@£$¥"):
        try:
            expected: int | None = by_codec(text)
        except UnicodeEncodeError:
            expected = None
        if expected is None:
            with pytest.raises(UnicodeEncodeError):
                sms_septets(text)
        else:
            assert sms_septets(text) == expected

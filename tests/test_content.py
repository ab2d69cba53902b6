"""The words we ship: our own, covering every idea, no two prompts alike, and following CONTENT.md."""

from __future__ import annotations

import difflib
import itertools
import re
from pathlib import Path

import pytest

from service.programs import (
    TEMPLATES_DIR,
    THEMES,
    Program,
    ProgramLibrary,
    Step,
    load_programs,
    normalized_text,
    render_sms,
    render_step_email,
)
from tests.content.make_seed_runs import RUN, SEED_RUNS, copied_runs, header_count, read_hashes, run_hashes, words

REPO = Path(__file__).resolve().parent.parent
SHIPPED_TEMPLATE_DIRS = [TEMPLATES_DIR, REPO / "service" / "templates"]
# Distinct 8-word runs in the seed, as tests/content/make_seed_runs.py counts them (its "# runs:" header line).
SEED_RUN_COUNT = 1159

# The ideas of issue 3, each mapped to the theme that carries it (message_templates/README.md).
IDEAS = {
    "a safe, non-judgmental space": "safety",
    "trust": "trust",
    "empathy and reflective listening": "empathy",
    "understanding feelings through open questions": "curiosity",
    "quality time": "quality_time",
    "acting on intentions": "intentions",
    'open communication with "I" statements and active listening': "communication",
    "balancing closeness with individuality and boundaries": "boundaries",
    "gratitude and recognition": "gratitude",
    "shared humor": "humor",
    "emotionally connected physical intimacy": "intimacy",
    "shared rituals": "rituals",
}


@pytest.fixture(scope="module")
def library() -> ProgramLibrary:
    return load_programs()


def steps_of(library: ProgramLibrary) -> list[tuple[Program, Step]]:
    return [(program, step) for program in library for step in program.steps]


def is_pointer(program: Program, step: Step) -> bool:
    """A discreet SMS that only says the prompt is in the email: its content is the email."""
    return step.theme == "intimacy" or program.opt_in


def visible_text(source: str) -> str:
    """A template as a reader sees it: tags and Jinja statements gone, placeholders as sample names."""
    source = source.replace("{{ partner }}", "Alex").replace("{{ other }}", "Sam")
    source = re.sub(r"\{[%#].*?[%#]\}|\{\{.*?\}\}", " ", source, flags=re.S)
    return re.sub(r"<[^>]+>", " ", source)


def shipped_texts(library: ProgramLibrary) -> dict[str, str]:
    texts: dict[str, str] = {}
    for program in library:
        texts[f"{program.key}: title and description"] = f"{program.title}\n{program.description}"
        for step in program.steps:
            subject, text, inner_html = render_step_email(step, "Alex", "Sam")
            texts[f"{program.key} day {step.day}"] = "\n".join(
                [render_sms(step, "Alex", "Sam").body, subject, text, visible_text(inner_html)]
            )
    for directory in SHIPPED_TEMPLATE_DIRS:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and path.suffix in {".html", ".txt", ".toml", ".md"}:
                texts[str(path.relative_to(REPO))] = visible_text(path.read_text(encoding="utf-8"))
    return texts


# --- our own words ----------------------------------------------------------------------------


def test_no_eight_word_run_of_the_seed_is_shipped(library: ProgramLibrary) -> None:
    # The seed is not ours to ship, so the repository carries only the hashes of its runs.
    copied = copied_runs(shipped_texts(library), frozenset(read_hashes()))
    assert not copied, "copied from the seed:\n" + "\n".join(copied)


def test_the_seed_run_list_is_whole_sorted_and_unique() -> None:
    hashes = read_hashes()
    assert len(hashes) > 500, "the seed did not read as text"
    assert len(hashes) == header_count() == SEED_RUN_COUNT, (
        f"{SEED_RUNS.name} holds {len(hashes)} runs; rerun tests/content/make_seed_runs.py, then update SEED_RUN_COUNT")
    assert hashes == sorted(set(hashes))
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)


# A stand-in seed in our own words: the check is the real one, only the list of hashes differs.
MADE_UP_SEED = """Lanterns drift over the harbour while the ferry captain's dog hums an old tune about rain.
Every third Tuesday the bakery on the corner leaves its door open until the bread is gone."""


def test_the_run_check_would_catch_a_copied_sentence() -> None:
    hashes = run_hashes([MADE_UP_SEED])
    assert len(hashes) == len(words(MADE_UP_SEED)) - RUN + 1
    # Ten words in a row from the seed, hidden by case, a curly apostrophe and punctuation: three runs of 8.
    copy = "Alex, THE FERRY CAPTAIN’S, dog hums an old tune... about rain? Reply with it."
    assert copied_runs({"made-up prompt": copy}, hashes) == [
        "made-up prompt: the ferry captains dog hums an old tune",
        "made-up prompt: ferry captains dog hums an old tune about",
        "made-up prompt: captains dog hums an old tune about rain",
    ]
    # Seven words in a row are not a copy.
    assert not copied_runs({"seven": "Alex, ferry captain's dog hums an old tune, Sam."}, hashes)


# --- counts and coverage ----------------------------------------------------------------------


def test_at_least_six_programs_and_150_steps(library: ProgramLibrary) -> None:
    assert len(library) >= 6
    assert sum(len(program.steps) for program in library) >= 150


@pytest.mark.parametrize(("idea", "theme"), IDEAS.items(), ids=list(IDEAS.values()))
def test_every_idea_is_covered_by_at_least_ten_steps(library: ProgramLibrary, idea: str, theme: str) -> None:
    count = sum(1 for _, step in steps_of(library) if step.theme == theme)
    assert count >= 10, f"{idea!r} ({theme}) has only {count} steps"


def test_the_ideas_and_the_documented_themes_are_the_same(library: ProgramLibrary) -> None:
    assert set(IDEAS.values()) == set(THEMES)
    readme = (TEMPLATES_DIR / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", readme, flags=re.M))
    assert documented == set(THEMES)


def test_the_sampler_touches_every_theme(library: ProgramLibrary) -> None:
    assert {step.theme for step in library.get("sampler").steps} == set(THEMES)


def test_the_intimacy_program_is_opt_in(library: ProgramLibrary) -> None:
    assert library.get("intimacy").opt_in
    assert all(not program.opt_in for program in library if program.key != "intimacy")


# --- no two alike -----------------------------------------------------------------------------

STOPWORDS = frozenset(re.findall(r"\w+", """
    a an the and or but of to in on at for with your you i me my it its is are be was this that what when
    how which who why do did does today tonight reply answer answers both once their they them about one
    just if as from by so then partner other
"""))


def content_words(text: str) -> set[str]:
    return set(words(text.replace("{{ partner }}", " ").replace("{{ other }}", " "))) - STOPWORDS


def overlap(a: str, b: str) -> float:
    """Shared content words over all content words (Jaccard)."""
    wa, wb = content_words(a), content_words(b)
    return len(wa & wb) / max(1, len(wa | wb))


def likeness(a: str, b: str, floor: float = 0.0) -> float:
    """How much of the wording is the same, word by word, in order; anything surely below `floor` is 0."""
    matcher = difflib.SequenceMatcher(None, normalized_text(a).split(), normalized_text(b).split(), autojunk=False)
    if matcher.real_quick_ratio() < floor or matcher.quick_ratio() < floor:
        return 0.0
    return matcher.ratio()


def near_duplicates(texts: dict[str, str], max_overlap: float, max_likeness: float) -> list[str]:
    found = []
    for (where_a, a), (where_b, b) in itertools.combinations(texts.items(), 2):
        shared, same = overlap(a, b), likeness(a, b, floor=max_likeness)
        if shared >= max_overlap or same >= max_likeness:
            found.append(f"{where_a} ~ {where_b} (words {shared:.2f}, wording {same:.2f}):\n  {a}\n  {b}")
    return found


def test_no_two_sms_are_the_same(library: ProgramLibrary) -> None:
    seen: dict[str, str] = {}
    for program, step in steps_of(library):
        normalized = normalized_text(step.sms)
        assert normalized not in seen, f"{program.key} day {step.day} repeats {seen[normalized]}"
        seen[normalized] = f"{program.key} day {step.day}"


def test_no_two_prompts_are_near_duplicates(library: ProgramLibrary) -> None:
    prompts = {f"{p.key} day {s.day}": s.sms for p, s in steps_of(library) if not is_pointer(p, s)}
    assert len(prompts) > 100
    assert not near_duplicates(prompts, max_overlap=0.45, max_likeness=0.85), "\n".join(
        near_duplicates(prompts, 0.45, 0.85))


def test_discreet_sms_are_not_near_copies_of_each_other(library: ProgramLibrary) -> None:
    pointers = {f"{p.key} day {s.day}": s.sms for p, s in steps_of(library) if is_pointer(p, s)}
    found = near_duplicates(pointers, max_overlap=1.01, max_likeness=0.85)
    assert not found, "\n".join(found)


def test_no_two_emails_are_near_duplicates(library: ProgramLibrary) -> None:
    emails = {f"{p.key} day {s.day}": s.email_text for p, s in steps_of(library)}
    found = near_duplicates(emails, max_overlap=0.6, max_likeness=0.85)
    assert not found, "\n".join(found)


def test_no_two_subjects_are_the_same(library: ProgramLibrary) -> None:
    seen: dict[str, str] = {}
    for program, step in steps_of(library):
        normalized = normalized_text(step.email_subject)
        assert normalized not in seen, f"{program.key} day {step.day}: subject repeats {seen[normalized]}"
        seen[normalized] = f"{program.key} day {step.day}"


def test_the_near_duplicate_check_catches_a_reworded_copy() -> None:
    original = "{{ partner }}, ask {{ other }} how their day really went, and say back what you heard. Reply with it."
    reworded = "{{ partner }}, ask {{ other }} how their day went, and say back what you heard first. Reply."
    different = "{{ partner }}, what song always makes {{ other }} dance? Reply with the title."
    assert near_duplicates({"a": original, "b": reworded}, 0.45, 0.85)
    assert not near_duplicates({"a": original, "c": different}, 0.45, 0.85)


# --- CONTENT.md, the parts a machine can check ------------------------------------------------

UCS2_TRAPS = "‘’‚‛“”„‟–—―…•€™´`"
EXPLICIT = re.compile(
    r"\b(sex\w*|naked|nude|bed(room)?|touch\w*|kiss\w*|desire\w*|arous\w*|intima\w*|orgasm\w*|lingerie|bod(y|ies)"
    r"|turn(ed)? on|fantas\w*|foreplay|make love|making love|physical\w*|hug\w*|caress\w*|undress\w*|want(ed)?)\b",
    re.I,
)
PRESCRIPTIVE = re.compile(r"\byou (really )?(should|must|need to|have to|ought to|'d better)\b", re.I)
SCRIPTED = re.compile(
    r"\b(text|tell|message|send|write to|say to)\s+(\{\{ other \}\}|them|your partner)\s*[:,]?\s*['\"]"
    r"|\bsay\s*:?\s*['\"]i\b|['\"]i (love|appreciate|miss|adore) you\b",
    re.I,
)
JUDGMENT = re.compile(
    r"\b(other|most|normal|healthy|happy|successful) couples\b|\bcouples like you\b|\byou (forgot|failed)\b"
    r"|\byou missed (a|the|yesterday|today|it)\b"
    r"|\bdon't forget\b|\bfailing\b|\bbehind on\b|\bfix (your|this|things)\b|\bwhat's wrong\b",
    re.I,
)
ASSUMPTIONS = re.compile(
    r"\b(he|she|him|his|her|hers|husband|wife|boyfriend|girlfriend|spouse|married|marriage|wedding"
    r"|(your|the|our) (kids|children|child|baby|babies)|school run|bedtime story"
    r"|church|pray\w*|god|religio\w*|buy|purchase|expensive|restaurant|dollars?|your (home|house"
    r"|bed|kitchen|place)|at home together|living together|live together|move in)\b|\$",
    re.I,
)


def test_sms_have_no_curly_quotes_dashes_or_emoji(library: ProgramLibrary) -> None:
    for program, step in steps_of(library):
        bad = [ch for ch in step.sms if ch in UCS2_TRAPS or ord(ch) > 0x2000]
        assert not bad, f"{program.key} day {step.day}: {bad} in the SMS"
        assert "--" not in step.sms, f"{program.key} day {step.day}: a double hyphen stands in for a dash"


def test_intimacy_sms_are_discreet(library: ProgramLibrary) -> None:
    pointers = [(p, s) for p, s in steps_of(library) if is_pointer(p, s)]
    assert len(pointers) >= 14
    for program, step in pointers:
        rendered = render_sms(step, "Alex", "Sam").body
        assert re.search(r"\b(email|inbox)\b", rendered, re.I), f"{program.key} day {step.day}: {rendered}"
        assert not EXPLICIT.search(rendered), f"{program.key} day {step.day}: {rendered}"


def test_the_discretion_check_catches_an_explicit_word() -> None:
    assert EXPLICIT.search("Alex, tonight's prompt about touch is in your email.")
    assert EXPLICIT.search("Alex, something for the bedroom is in your inbox.")
    assert not EXPLICIT.search("Alex, tonight's prompt is in your email.")


def test_every_prompt_is_addressed_to_its_partner_by_name(library: ProgramLibrary) -> None:
    # Also what makes "Hi" a safe stand-in for a name that has no GSM-7 form at all.
    for program, step in steps_of(library):
        assert step.sms.startswith("{{ partner }},"), f"{program.key} day {step.day}"
        assert step.email_text.startswith("{{ partner }}"), f"{program.key} day {step.day}"


def test_prompts_invite_rather_than_prescribe_script_or_judge(library: ProgramLibrary) -> None:
    problems = []
    for program, step in steps_of(library):
        for field in ("sms", "email_subject", "email_text"):
            text = getattr(step, field)
            for rule, pattern in (("prescriptive", PRESCRIPTIVE), ("scripted", SCRIPTED), ("judgmental", JUDGMENT),
                                  ("assumes", ASSUMPTIONS)):
                match = pattern.search(text)
                if match:
                    problems.append(f"{program.key} day {step.day} {field}: {rule} {match.group(0)!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("text", "caught"),
    [
        ("{{ partner }}, text {{ other }}: 'I appreciate you'. Reply done.", True),
        ("{{ partner }}, tell them \"I love you\" today.", True),
        ("{{ partner }}, you should call {{ other }} more.", True),
        ("{{ partner }}, most couples forget this.", True),
        ("{{ partner }}, ask your husband about his day.", True),
        ("{{ partner }}, buy {{ other }} flowers.", True),
        ("{{ partner }}, ask {{ other }}: what made you laugh today? Reply with it.", False),
        ("{{ partner }}, you don't need to share it here.", False),
    ],
)
def test_the_voice_rules_catch_what_they_should(text: str, caught: bool) -> None:
    assert any(p.search(text) for p in (PRESCRIPTIVE, SCRIPTED, JUDGMENT, ASSUMPTIONS)) is caught


def test_a_reply_instruction_goes_with_every_question(library: ProgramLibrary) -> None:
    for program, step in steps_of(library):
        where = f"{program.key} day {step.day}"
        if not is_pointer(program, step):
            assert re.search(r"\bReply\b", step.sms), f"{where}: the SMS asks but does not say to reply"
        assert "Reply to this email" in step.email_text, f"{where}: the email does not say how to answer"


def test_reveal_steps_say_the_answers_open_once_both_replied(library: ProgramLibrary) -> None:
    reveals = [(p, s) for p, s in steps_of(library) if s.reveal]
    assert reveals
    for program, step in reveals:
        assert re.search(r"\bboth\b", step.email_text), f"{program.key} day {step.day}: email"
        assert re.search(r"\bboth\b", step.sms), f"{program.key} day {step.day}: SMS"


def test_subjects_read_like_a_note_not_a_campaign(library: ProgramLibrary) -> None:
    for program, step in steps_of(library):
        subject = step.email_subject
        where = f"{program.key} day {step.day}: {subject!r}"
        assert len(subject) <= 60, where
        assert "!" not in subject, where
        assert not re.search(r"\b[A-Z]{3,}\b", subject), where
        assert not re.match(r"(day|step)\s*\d", subject, re.I), where

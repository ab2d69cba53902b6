"""Every "no" is heard: opt-outs in their many spellings are STOP; real answers that mention them stay answers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.keywords import classify

# Twilio's documented opt-out words (Advanced Opt-Out) and the common Spanish ones.
OPT_OUTS = ["STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "OPT OUT",
            "PARAR", "CANCELAR", "DETENER", "BAJA", "NO MÁS", "NO MAS", "NO MORE", "ARRÊT", "PARA"]

# Texts partners really sent that were stored as answers (and shown to the other partner) instead of opting out.
SEEN_AS_ANSWERS = ["Stop,", "stop please", "please stop", "STOP STOP", "Stop 🛑", "stop it", '"STOP"', "¡Stop!",
                   "Stop :(", "no more", "I want to stop", "Opt-out", "wrong number", "Who is this? stop", "S T O P",
                   "ＳＴＯＰ", "Stopp", "arrêt", "para", "cancelar"]

REAL_ANSWERS = ["stop it you two lol", "I couldn't stop smiling", "Para mi, lo mejor fue la cena",
                "no more secrets between us, I love that", "the end of the day is my favourite",
                "We said we'd stop texting at dinner and actually talk, and it was the best part of the week.",
                "I loved the walk", "no", "the end", "para ti", "stop and smell the roses with me"]


@pytest.mark.parametrize("body", SEEN_AS_ANSWERS)
def test_the_opt_outs_once_stored_as_answers_are_stop(body: str) -> None:
    command = classify(body)
    assert command is not None and command.keyword == "STOP", body


@pytest.mark.parametrize("body", REAL_ANSWERS)
def test_real_answers_stay_answers(body: str) -> None:
    assert classify(body) is None, body


def _full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else ("\u3000" if c == " " else c) for c in text)


@st.composite
def opt_out_variants(draw: st.DrawFn) -> str:
    word = draw(st.sampled_from(OPT_OUTS))
    word = "".join(c.upper() if draw(st.booleans()) else c.lower() for c in word)  # any case, letter by letter
    if draw(st.booleans()):  # a held key: one letter repeated
        at = draw(st.integers(0, len(word) - 1))
        if word[at].isalpha():
            word = word[:at] + word[at] * draw(st.integers(2, 4)) + word[at:]
    if " " not in word and draw(st.booleans()):  # spaced out: S T O P, S.T.O.P
        word = draw(st.sampled_from([" ", ".", " . ", "-"])).join(word)
    if draw(st.booleans()):
        word = " ".join([word] * draw(st.integers(2, 3)))  # STOP STOP
    punctuation = st.text(alphabet=".,!?¡¿:;\"'()*-~ ", max_size=3)
    emoji = st.sampled_from(["", "🛑", "✋", "🙏", "😡", "👋🏽", "❤️", ":(", ":-)"])
    text = draw(punctuation) + word + draw(punctuation) + draw(emoji)
    if draw(st.booleans()):
        text = _full_width(text)
    spaces = st.text(alphabet=" \t\n\u00a0", max_size=3)
    return draw(spaces) + text + draw(spaces)


@given(opt_out_variants())
def test_any_spelling_of_an_opt_out_word_is_stop(body: str) -> None:
    command = classify(body)
    assert command is not None and command.keyword == "STOP", repr(body)


@given(st.sampled_from(REAL_ANSWERS), st.sampled_from(["", "!", " 🛑", ".", " lol"]))
def test_answers_with_noise_stay_answers(answer: str, noise: str) -> None:
    assert classify(answer + noise) is None


@pytest.mark.parametrize("body", ["START", "yes!", "HELP", "log", "PAUSE 7", "skip"])
def test_other_keywords_are_unchanged(body: str) -> None:
    command = classify(body)
    assert command is not None and command.keyword != "STOP"

"""What an inbound text means: a keyword, a natural opt-out, or a reply."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Twilio's own opt-out and opt-in words (Advanced Opt-Out defaults), matched whole.
OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN_WORDS = frozenset({"START", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})
CONFIRM_WORDS = frozenset({"YES", "Y"})

_NATURAL_OPT_OUT = re.compile(
    r"\b("
    r"stop (texting|messaging|sending|contacting|txting)"
    r"|(don'?t|do not|no longer) (text|message|contact|sms)"
    r"|no more (texts|messages|msgs)"
    r"|(remove|unsubscribe|take) me( off)?"
    r"|opt (me )?out"
    r"|leave me alone"
    r")\b",
    re.IGNORECASE,
)
_PAUSE = re.compile(r"^PAUSE(?:\s+(\d{1,3}))?$")

# Words that mean "stop" on their own: Twilio's opt-out words, the common Spanish (and French) ones, and what
# people write instead. Several-word ones are matched with their spaces taken out ("NO MAS" as "NOMAS").
_STOP_WORDS = OPT_OUT_WORDS | frozenset({
    "PARAR", "PARA", "PARE", "CANCELAR", "DETENER", "BAJA", "NOMAS", "NOMORE", "ARRET", "ARRETER", "WRONGNUMBER",
    "UNSUB", "UNSUSCRIBE", "UNSUSCRIBIR", "DESUSCRIBIR",
})
# Words that may stand beside a stop word without making the text an answer ("please stop", "I want to stop",
# "Who is this? stop"). Anything else in the text ("stop it you two lol") keeps it an answer.
_FILLER_WORDS = frozenset({
    "PLEASE", "PLS", "PLZ", "PLEASEE", "IT", "ALL", "NOW", "JUST", "I", "WANT", "TO", "WANNA", "ME", "WHO", "IS",
    "THIS", "THANKS", "THANK", "THX", "OK", "OKAY", "YA", "POR", "FAVOR", "QUIERO", "DE", "DARME", "DAR", "STP",
    "SVP", "MERCI", "OUT",
})
# A text of at most this many words, all of them stop or filler words and at least one a stop word, is STOP;
# a longer one stays an answer, whatever it says.
MAX_OPT_OUT_WORDS = 6
_PHRASES = (("NO", "MORE"), ("NO", "MAS"), ("OPT", "OUT"), ("STOP", "ALL"), ("WRONG", "NUMBER"))


def _squeeze(word: str) -> str:
    """A word with each run of one letter cut to one letter ("STOPPP" and "STOOP" are "STOP")."""
    return re.sub(r"(.)\1+", r"\1", word)


_STOP_SQUEEZED = frozenset(_squeeze(w) for w in _STOP_WORDS)
_FILLER_SQUEEZED = frozenset(_squeeze(w) for w in _FILLER_WORDS)
_KNOWN_SQUEEZED = _STOP_SQUEEZED | _FILLER_SQUEEZED
_SQUEEZED_PHRASES = frozenset((_squeeze(a), _squeeze(b)) for a, b in _PHRASES)


def normalised_words(body: str) -> list[str]:
    """The words of a text, compared the way a person reads them: Unicode NFKC (full-width letters), no case,
    no accents, no punctuation or emoji, letters typed one by one joined again ("S T O P"), runs of one letter
    squeezed ("Stopp"), and the several-word opt-outs ("no more", "opt out") made one word."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", body).casefold())
    kept = []
    for ch in text:
        kind = unicodedata.category(ch)
        if kind[0] in "LN":
            kept.append(ch)
        elif kind != "Mn" and ch not in "'’":
            kept.append(" ")
    words = [_squeeze(w) for w in "".join(kept).upper().split()]
    if 1 < len(words) <= 120 and all(len(w) == 1 for w in words):
        words = _segment(_squeeze("".join(words))) or words
    merged: list[str] = []
    for word in words:
        if merged and (merged[-1], word) in _SQUEEZED_PHRASES:
            merged[-1] += word
        else:
            merged.append(word)
    return [_squeeze(w) for w in merged]


def _segment(letters: str) -> list[str] | None:
    """Letters typed one by one ("STOPSTOP") cut into known words, or None when they are not known words."""
    best: list[list[str] | None] = [[]] + [None] * len(letters)
    for end in range(1, len(letters) + 1):
        for start in range(end):
            head = best[start]
            if head is not None and letters[start:end] in _KNOWN_SQUEEZED:
                best[end] = [*head, letters[start:end]]
                break
    return best[-1]


def is_short_opt_out(body: str) -> bool:
    """True for a short text whose every word is a stop or filler word, with at least one stop word."""
    words = normalised_words(body)
    return (0 < len(words) <= MAX_OPT_OUT_WORDS and all(w in _KNOWN_SQUEEZED for w in words)
            and any(w in _STOP_SQUEEZED for w in words))


@dataclass(frozen=True)
class Command:
    keyword: str  # YES, STOP, START, HELP, LOG, PAUSE, RESUME, SKIP, NEWLINK
    days: int | None = None


def classify(body: str) -> Command | None:
    """The command a text carries, or None when it is a reply for the log.

    Keywords match ignoring case and surrounding space, and trailing punctuation ("Yes!", "stop.").
    Opt-outs are read more loosely (`is_short_opt_out`): a text of at most MAX_OPT_OUT_WORDS words, all of
    them stop or filler words once normalised ("¡Stop!", "S T O P", "please stop", "no más"), is STOP.
    Natural opt-outs only count in short texts, so an answer that mentions "stop texting" mid-story
    is still kept as an answer; erring to opt-out there would lose the partner's words.
    """
    cleaned = " ".join(body.strip().split())
    word = cleaned.rstrip(".!? ").upper()
    if word in OPT_OUT_WORDS or is_short_opt_out(body):
        return Command("STOP")
    if word in OPT_IN_WORDS:
        return Command("START")
    if word in HELP_WORDS:
        return Command("HELP")
    if word in CONFIRM_WORDS:
        return Command("YES")
    if word in {"LOG", "NEWLINK", "RESUME", "SKIP"}:
        return Command(word)
    pause = _PAUSE.match(word)
    if pause:
        days = int(pause.group(1)) if pause.group(1) else None
        if days is not None and not 1 <= days <= 365:
            days = 365 if days > 365 else 1
        return Command("PAUSE", days=days)
    if len(cleaned) <= 60 and _NATURAL_OPT_OUT.search(cleaned):
        return Command("STOP")
    return None

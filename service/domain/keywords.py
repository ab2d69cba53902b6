"""What an inbound text means: a keyword, a natural opt-out, or a reply."""

from __future__ import annotations

import re
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


@dataclass(frozen=True)
class Command:
    keyword: str  # YES, STOP, START, HELP, LOG, PAUSE, RESUME, SKIP, NEWLINK
    days: int | None = None


def classify(body: str) -> Command | None:
    """The command a text carries, or None when it is a reply for the log.

    Keywords match ignoring case and surrounding space, and trailing punctuation ("Yes!", "stop.").
    Natural opt-outs only count in short texts, so an answer that mentions "stop texting" mid-story
    is still kept as an answer; erring to opt-out there would lose the partner's words.
    """
    cleaned = " ".join(body.strip().split())
    word = cleaned.rstrip(".!? ").upper()
    if word in OPT_OUT_WORDS:
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

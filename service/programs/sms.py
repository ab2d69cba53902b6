"""A step's SMS, always one GSM-7 segment: counting septets (and telling when a text would need UCS-2),
making a typed name GSM-7 by transliteration, shortening names past the 20 characters every SMS is
budgeted for, and rendering the step for a partner. The load-time checks use the same counting, so a
program that loads renders to one segment for any names.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

import gsm0338  # noqa: F401 - registers the "gsm03.38" codec
from anyascii import anyascii

from service.programs.model import LONG_NAME, ProgramError, Step
from service.programs.templating import render_plain

SMS_SEPTETS = 160
GSM7_EXTENSION = set("^{}[]~\\|€\f")


@dataclass(frozen=True)
class RenderedSms:
    body: str
    septets: int


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
    """Whether `text` is GSM-7 and at most one segment (160 septets) long."""
    try:
        return sms_septets(text) <= SMS_SEPTETS
    except UnicodeEncodeError:
        return False


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
    body = render_plain(step.sms, names)
    if sms_septets(body) > SMS_SEPTETS:
        names = {role: _shorten_name(value, len(LONG_NAME)) for role, value in names.items()}
        body = render_plain(step.sms, names)
    septets = sms_septets(body)
    if septets > SMS_SEPTETS:
        raise ProgramError(f"step day {step.day}: field 'sms' does not fit one segment even with 20-character names")
    return RenderedSms(body=body, septets=septets)

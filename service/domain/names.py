"""What a first name may be. Names are repeated in texts and emails to the other partner ("Closer: Alex
invited you..."), so a name must read as a name and nothing else: never as a web or email address, a
phone number, or as us. `name_problem` says, kindly, what is wrong with one, or None when it is fine.
"""

from __future__ import annotations

import itertools
import re
import unicodedata

from service.domain.signup import MAX_NAME_CHARS

MAX_NAME_WORDS = 3
OUR_NAME = "Closer"  # refused whatever SENDER_NAME says: it is the product's name

# Letters of any script (after NFC, so typed accents are letters too), joined by single spaces, hyphens,
# apostrophes or periods, with an optional closing period: "Anne-Marie", "O'Brien", "J.R.", "Dr. Sam".
_LETTERS = r"[^\W\d_]+"
_NAME = re.compile(rf"{_LETTERS}(?:(?:[ '\u2019.\-]|\. ){_LETTERS})*\.?")
# Something dot something-of-two-letters, as in evil.com, bit.ly, x.io: a domain, even without http.
_DOMAIN = re.compile(r"[^\W_]\.[^\W\d_]{2,}")
_LINK_WORDS = frozenset({"http", "https", "hxxp", "hxxps", "www", "ftp"})
_TLDS = frozenset({"com", "net", "org", "io", "ly", "co", "me", "app", "xyz", "info", "biz", "us", "ca", "link"})

_LOOKS_LIKE = "We put this name in texts, so it can't look like {what}. Just a first name, like Sam, is perfect."


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^\w]+", text.casefold()) if w]


def _contains_phrase(words: list[str], phrase: list[str]) -> bool:
    n = len(phrase)
    return n > 0 and any(words[i:i + n] == phrase for i in range(len(words) - n + 1))


def name_problem(text: str, brand: str) -> str | None:
    """Why `text` cannot be used as a first name, in words for the person typing it; None if it can.

    `brand` is who sends (SENDER_NAME); it and "Closer" are refused as a word in any case."""
    name = " ".join(unicodedata.normalize("NFC", text or "").split())
    if not name:
        return "Enter a first name."
    words = _words(name)
    if "@" in name:
        return _LOOKS_LIKE.format(what="an email address")
    if ("://" in name or _DOMAIN.search(name) or any(w in _LINK_WORDS for w in words)
            or any(a == "dot" and b in _TLDS for a, b in itertools.pairwise(words))):
        return _LOOKS_LIKE.format(what="a web address")
    if any(ch.isdigit() for ch in name):
        return _LOOKS_LIKE.format(what="a phone number" if sum(ch.isdigit() for ch in name) >= 3 else "a number")
    for ours in (brand, OUR_NAME):
        if _contains_phrase(words, _words(ours)):
            return (f"{ours.strip()} is our name, so it would be confusing in a text. "
                    "Just a first name, like Sam, is perfect.")
    if len(name) > MAX_NAME_CHARS:
        return (f"That's a little long for a text: a first name or nickname of up to {MAX_NAME_CHARS} "
                "characters works best.")
    if len(name.split()) > MAX_NAME_WORDS:
        return "Up to three words, please: a first name or nickname, like Sam or Jean Luc, works best."
    if not _NAME.fullmatch(name):
        return "A name is letters, with a space, hyphen or apostrophe between parts, like Sam or Anne-Marie."
    return None

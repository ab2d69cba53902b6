"""A name is sent inside texts to another person, so it must read as a name: never as a link, a phone
number, an email address or our own brand."""

from __future__ import annotations

import pytest

from service.domain.names import name_problem
from service.domain.signup import MAX_NAME_CHARS

NOT_NAMES = [
    "Go evil.com now", "bit.ly", "Visit evil.com", "Closer Support", "www.x.io", "http://a",
    "+1 415 555 0100", "a@b.co", "CLOSER", "Closer Team", "closer", "Team Closer", "evil.com",
    "EVIL.COM", "Sam.ly", "x.io", "https://evil.example", "hxxp evil dot com", "415 555 0100",
    "Sam 4155550100", "Call 555", "sam@example.com", "Sam @ home", "Alex2", "WIN $100 at evil.example",
    "Ana Maria Lucia Sofia", "a" * (MAX_NAME_CHARS + 1), "", "   ", "Sam/Alex", "evil.com/x", "Ålex.bz",
    "closer.", "Mr Closer", "Acme Hugs",
]
REAL_NAMES = [
    "Mary-Jane", "José", "Anh", "O'Brien", "Jean Luc", "Zoë", "Nguyễn Văn An", "Anne-Marie", "Søren",
    "Mary Jane", "李小龍", "J.R.", "A.J.", "Dr. Sam", "St. John", "Closerie", "Sam Acme", "O’Brien",
    "Nguyễn Văn An",  # the same name typed with combining accents
]


@pytest.mark.parametrize("text", NOT_NAMES)
def test_what_does_not_read_as_a_name_is_refused_with_a_reason(text: str) -> None:
    brand = "Acme Hugs" if text in ("Acme Hugs", "Mr Closer") else "Closer"
    problem = name_problem(text, brand)
    assert problem is not None, text
    assert problem.strip() and problem[0].isupper() and problem.endswith("."), problem


@pytest.mark.parametrize("text", REAL_NAMES)
def test_real_names_pass(text: str) -> None:
    assert name_problem(text, "Closer") is None, text


def test_the_brand_is_the_configured_sender_and_closer_both() -> None:
    assert name_problem("Hugs Inc", "Hugs Inc") is not None
    assert name_problem("hugs inc", "Hugs Inc") is not None
    assert name_problem("Closer", "Hugs Inc") is not None
    assert name_problem("Hugs", "Hugs Inc") is None, "one word of a longer sender name is still a name"

"""Phone numbers, parsed and checked by `phonenumbers`, stored as E.164."""

from __future__ import annotations

from collections.abc import Sequence

import phonenumbers
from phonenumbers import PhoneNumberType

# Types that can receive a text. Landlines, toll-free, premium-rate and shared-cost numbers cannot, or
# cost the sender money (SMS pumping), so they are refused.
TEXTABLE_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})


def parse_phone(raw: str, allowed_countries: Sequence[str]) -> phonenumbers.PhoneNumber | None:
    raw = (raw or "").strip()
    if not raw or len(raw) > 32:
        return None
    default_region = allowed_countries[0] if allowed_countries else None
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    if phonenumbers.region_code_for_number(number) not in set(allowed_countries):
        return None
    return number


def normalize_phone(raw: str, allowed_countries: Sequence[str]) -> str | None:
    """E.164 for any valid number in an allowed country (for matching inbound texts)."""
    number = parse_phone(raw, allowed_countries)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) if number else None


def textable_phone(raw: str, allowed_countries: Sequence[str]) -> str | None:
    """E.164 for a mobile-capable number in an allowed country, else None."""
    number = parse_phone(raw, allowed_countries)
    if number is None or phonenumbers.number_type(number) not in TEXTABLE_TYPES:
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

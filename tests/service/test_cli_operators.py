"""`closer operators hash [NAME]`: a hash for OPERATOR_USERS, from a password typed at a prompt."""

from __future__ import annotations

from click.testing import CliRunner

from service.cli import main
from service.domain.operators import authenticate, parse_operator_users

PASSWORD = "a very long operator passphrase"


def test_hash_prints_an_entry_that_logs_in() -> None:
    result = CliRunner().invoke(main, ["operators", "hash", "dana"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    entry = result.stdout.strip().splitlines()[-1]
    assert entry.startswith("dana:scrypt:")
    assert PASSWORD not in result.stdout
    operators = parse_operator_users([entry])
    assert authenticate(operators, "dana", PASSWORD) is operators["dana"]


def test_hash_without_a_name_prints_the_hash_alone() -> None:
    result = CliRunner().invoke(main, ["operators", "hash"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0
    assert result.stdout.strip().splitlines()[-1].startswith("scrypt:")


def test_short_passwords_and_bad_names_are_refused() -> None:
    short = CliRunner().invoke(main, ["operators", "hash", "dana"], input="short\nshort\n")
    assert short.exit_code != 0 and "at least 12 characters" in short.output
    bad_name = CliRunner().invoke(main, ["operators", "hash", "da na"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert bad_name.exit_code != 0 and "letters, digits" in bad_name.output

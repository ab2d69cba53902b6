"""`closer programs list | check | preview KEY [--json]`, as a content author runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from service import programs as programs_module
from service.cli import main
from service.programs import LONG_NAME, ProgramLibrary, load_programs, render_sms

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def library() -> ProgramLibrary:
    return load_programs()


def closer(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_check_validates_every_program_and_reports_the_counts(library: ProgramLibrary) -> None:
    result = closer("programs", "check")
    assert result.exit_code == 0, result.output
    steps = sum(len(p.steps) for p in library)
    longest = max(render_sms(s, LONG_NAME, LONG_NAME).septets for p in library for s in p.steps)
    assert f"{len(library)} programs, {steps} steps: valid" in result.output
    assert f"longest SMS {longest}/160" in result.output


def test_check_fails_with_the_validators_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = (programs_module.PROGRAMS_DIR / "empathy.toml").read_text(encoding="utf-8")
    broken = source.replace('theme = "curiosity"', 'theme = "telepathy"', 1)
    assert broken != source
    (tmp_path / "empathy.toml").write_text(broken, encoding="utf-8")
    monkeypatch.setattr(programs_module, "PROGRAMS_DIR", tmp_path)
    result = CliRunner().invoke(main, ["programs", "check"])
    assert result.exit_code == 1
    assert re.search(r"empathy\.toml: step day \d+: field 'theme' is 'telepathy'", result.output), result.output


def test_list_shows_every_program_and_marks_opt_in(library: ProgramLibrary) -> None:
    result = closer("programs", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == len(library)
    for program, line in zip(library, lines, strict=True):
        assert line.split()[0] == program.key
        assert f"{program.days} days" in line and program.title in line
        assert ("(opt-in)" in line) is program.opt_in


@pytest.mark.parametrize("key", ["appreciation", "intimacy", "sampler"])
def test_preview_json_renders_every_step_for_both_partners(library: ProgramLibrary, key: str) -> None:
    result = closer("programs", "preview", key, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    program = library.get(key)
    assert len(rows) == 2 * program.days
    assert [row["day"] for row in rows] == [day for day in range(1, program.days + 1) for _ in (1, 2)]
    assert {row["partner"] for row in rows} == {"Alex", "Sam"}
    for row in rows:
        assert set(row) >= {"day", "theme", "reveal", "partner", "sms", "sms_septets", "email_subject",
                            "email_text", "email_html"}
        assert row["sms"].startswith(row["partner"] + ",")
        assert row["sms_septets"] <= 160
        assert row["email_text"].startswith(row["partner"])
        for field in ("sms", "email_subject", "email_text", "email_html"):
            assert "{{" not in row[field] and "}}" not in row[field]


def test_preview_every_program_as_text(library: ProgramLibrary) -> None:
    for program in library:
        result = closer("programs", "preview", program.key)
        assert result.exit_code == 0, result.output
        assert result.output.count("--- day ") == 2 * program.days
        assert "SMS [" in result.output and "Subject: " in result.output


def test_preview_of_an_unknown_key_is_a_clear_error(library: ProgramLibrary) -> None:
    result = CliRunner().invoke(main, ["programs", "preview", "no-such-program", "--json"])
    assert result.exit_code == 1
    assert "no program 'no-such-program'" in result.output
    for program in library:
        assert program.key in result.output
    assert "Traceback" not in result.output


def test_the_installed_command_checks_the_programs() -> None:
    # The console script itself, as an author or CI runs it, outside any test fixture.
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    completed = subprocess.run(
        [sys.executable, "-m", "service.cli", "programs", "check"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "valid" in completed.stdout

"""The data a program is made of, and nothing that reads or renders it: where the program files live, the
themes a step may carry, the placeholders a text may use, the longest first name every SMS is budgeted for,
the `Step` and `Program` records the loader builds, the `ProgramLibrary` the service looks them up in, and
the `ProgramError` raised for a file that breaks the format. Every other module of the package imports
from this one, and this one imports from none of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from service.settings import PROJECT_ROOT

TEMPLATES_DIR = PROJECT_ROOT / "message_templates"
PROGRAMS_DIR = TEMPLATES_DIR / "programs"
LAYOUTS_DIR = TEMPLATES_DIR / "layouts"

THEMES: Mapping[str, str] = {
    "safety": "A safe, non-judgmental space",
    "trust": "Trust",
    "empathy": "Empathy and reflective listening",
    "curiosity": "Understanding feelings through open questions",
    "quality_time": "Quality time",
    "intentions": "Acting on intentions",
    "communication": "Open communication and active listening",
    "boundaries": "Closeness and individuality",
    "gratitude": "Gratitude and recognition",
    "humor": "Shared humor",
    "intimacy": "Emotionally connected physical intimacy",
    "rituals": "Shared rituals",
}
STEP_PLACEHOLDERS = frozenset({"partner", "other"})
LONG_NAME = "Maximiliana-Josefine"  # 20 characters: the longest first name budgeted for


class ProgramError(ValueError):
    """A program file that breaks the format; the message names the file, the step and the field."""


@dataclass(frozen=True)
class Step:
    day: int
    theme: str
    sms: str
    email_subject: str
    email_text: str
    email_html: str | None
    reveal: bool


@dataclass(frozen=True)
class Program:
    key: str
    title: str
    description: str
    days: int
    themes: tuple[str, ...]
    cadence: str
    messages_per_week: int
    reply_window_hours: int
    opt_in: bool
    steps: tuple[Step, ...]
    path: Path

    def step(self, day: int) -> Step:
        return self.steps[day - 1]


class ProgramLibrary:
    def __init__(self, programs: Iterable[Program]) -> None:
        self._programs = {p.key: p for p in sorted(programs, key=lambda p: (p.opt_in, p.key))}

    def __contains__(self, key: object) -> bool:
        return key in self._programs

    def __iter__(self) -> Iterator[Program]:
        return iter(self._programs.values())

    def __len__(self) -> int:
        return len(self._programs)

    def get(self, key: str) -> Program:
        return self._programs[key]

    def keys(self) -> list[str]:
        return list(self._programs)

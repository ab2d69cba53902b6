"""Programs: TOML files in message_templates/, validated at load and rendered per partner.

Callers import from here; the package's modules each do one job:

- `model`: the data and constants (`Step`, `Program`, `ProgramLibrary`, `ProgramError`, `THEMES`,
  `STEP_PLACEHOLDERS`, `LONG_NAME`, and `TEMPLATES_DIR` / `PROGRAMS_DIR` / `LAYOUTS_DIR`);
- `loading`: reading program files and the checks run at load (`load_program`, `parse_program`,
  `parse_step`, `normalized_text`, `PROGRAM_FIELDS`, `STEP_FIELDS`, `DISCREET_SMS`);
- `sms`: GSM-7 and the one-segment SMS (`sms_septets`, `fits_one_segment`, `sms_name`, `render_sms`,
  `RenderedSms`, `SMS_SEPTETS`, `GSM7_EXTENSION`, `SMS_NAME_FALLBACKS`);
- `email_layout`: a step's email and the shared layout with its footer (`render_step_email`,
  `render_email`, `wrap_email`, `text_to_html`, `EmailFooter`, `RenderedEmail`);
- `templating`: the Jinja environment and cached compile the three above share;
- `authoring`: `preview`, every step rendered for two sample partners (`closer programs preview`).

Imports run one way: model and templating <- sms and email_layout <- loading and authoring <- this file.
`load_programs` lives here because its default directory is this package's `PROGRAMS_DIR`, read when it
is called, so pointing `service.programs.PROGRAMS_DIR` elsewhere moves the loader with it.
"""

from __future__ import annotations

from pathlib import Path

from service.programs import loading
from service.programs.authoring import preview
from service.programs.email_layout import (
    EmailFooter,
    RenderedEmail,
    render_email,
    render_step_email,
    text_to_html,
    wrap_email,
)
from service.programs.loading import (
    DISCREET_SMS,
    PROGRAM_FIELDS,
    STEP_FIELDS,
    load_program,
    normalized_text,
    parse_program,
    parse_step,
)
from service.programs.model import (
    LAYOUTS_DIR,
    LONG_NAME,
    PROGRAMS_DIR,
    STEP_PLACEHOLDERS,
    TEMPLATES_DIR,
    THEMES,
    Program,
    ProgramError,
    ProgramLibrary,
    Step,
)
from service.programs.sms import (
    GSM7_EXTENSION,
    SMS_NAME_FALLBACKS,
    SMS_SEPTETS,
    RenderedSms,
    fits_one_segment,
    render_sms,
    sms_name,
    sms_septets,
)


def load_programs(directory: Path | None = None) -> ProgramLibrary:
    """Every program in `directory` (message_templates/programs/ by default), validated."""
    return loading.load_programs(PROGRAMS_DIR if directory is None else directory)


__all__ = [
    "DISCREET_SMS",
    "GSM7_EXTENSION",
    "LAYOUTS_DIR",
    "LONG_NAME",
    "PROGRAMS_DIR",
    "PROGRAM_FIELDS",
    "SMS_NAME_FALLBACKS",
    "SMS_SEPTETS",
    "STEP_FIELDS",
    "STEP_PLACEHOLDERS",
    "TEMPLATES_DIR",
    "THEMES",
    "EmailFooter",
    "Program",
    "ProgramError",
    "ProgramLibrary",
    "RenderedEmail",
    "RenderedSms",
    "Step",
    "fits_one_segment",
    "load_program",
    "load_programs",
    "normalized_text",
    "parse_program",
    "parse_step",
    "preview",
    "render_email",
    "render_sms",
    "render_step_email",
    "sms_name",
    "sms_septets",
    "text_to_html",
    "wrap_email",
]

"""What a content author checks a program by: every step rendered as it will be sent, the SMS with its
septet count and the email's subject, text and inner HTML, once for each of two sample partners. It is
what `closer programs preview` prints.
"""

from __future__ import annotations

from typing import Any

from service.programs.email_layout import render_step_email
from service.programs.model import Program
from service.programs.sms import render_sms


def preview(program: Program, partner: str = "Alex", other: str = "Sam") -> list[dict[str, Any]]:
    """Every step rendered for both sample partners, for content authors."""
    rows = []
    for step in program.steps:
        for me, them in ((partner, other), (other, partner)):
            sms = render_sms(step, me, them)
            subject, text, inner_html = render_step_email(step, me, them)
            rows.append({
                "day": step.day, "theme": step.theme, "reveal": step.reveal, "partner": me,
                "sms": sms.body, "sms_septets": sms.septets, "email_subject": subject,
                "email_text": text, "email_html": inner_html,
            })
    return rows

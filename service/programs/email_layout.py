"""A step's email, and the shared layout every email the service sends is put into: the step's subject,
plain text and inner HTML rendered for a partner (the HTML part built from the text when the step has
none, names escaped), then wrapped in message_templates/layouts/email.html and email.txt with the
CAN-SPAM footer (why the reader gets it, the sender's postal address, the unsubscribe link). Named
email_layout rather than email so that it never reads as the standard library's email package.
"""

from __future__ import annotations

import functools
import html
import re
from dataclasses import dataclass

from jinja2 import Environment, StrictUndefined, Template
from markupsafe import Markup

from service.programs.model import LAYOUTS_DIR, Step
from service.programs.templating import jinja, render_html, render_plain


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class EmailFooter:
    program_title: str
    sender_name: str
    postal_address: str
    unsubscribe_url: str | None
    # Why this person gets the email: they said yes, or (for an invitation) someone signed them up.
    reason: str | None = None


def text_to_html(text: str) -> str:
    """The HTML part built from the plain one, one <p> per paragraph; Jinja tags survive escaping."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return "\n".join(
        "<p>" + html.escape(p, quote=False).replace("\n", "<br>\n") + "</p>" for p in paragraphs
    )


def render_step_email(step: Step, partner: str, other: str) -> tuple[str, str, str]:
    """Subject, text and inner HTML of a step; the layout adds greeting-free chrome and the footer."""
    values = {"partner": partner, "other": other}
    # A name is typed by a person; whatever it holds, the subject header stays one line.
    subject = " ".join(render_plain(step.email_subject, values).split())
    text = render_plain(step.email_text, values)
    html_source = step.email_html if step.email_html else text_to_html(step.email_text)
    return subject, text, render_html(html_source, values)


_layouts = Environment(undefined=StrictUndefined, autoescape=True, keep_trailing_newline=True)


@functools.cache
def _email_layouts() -> tuple[Template, Template]:
    return (
        _layouts.from_string((LAYOUTS_DIR / "email.html").read_text(encoding="utf-8")),
        jinja.from_string((LAYOUTS_DIR / "email.txt").read_text(encoding="utf-8")),
    )


def wrap_email(subject: str, text: str, inner_html: str, footer: EmailFooter) -> RenderedEmail:
    """Put a message into the shared layout with the CAN-SPAM footer (unsubscribe link, postal address)."""
    values = {
        "subject": subject, "program_title": footer.program_title, "sender_name": footer.sender_name,
        "postal_address": footer.postal_address, "unsubscribe_url": footer.unsubscribe_url,
        "reason": footer.reason
        or f"You're getting this because you said yes to {footer.program_title} from {footer.sender_name}.",
    }
    html_layout, text_layout = _email_layouts()
    return RenderedEmail(
        subject=subject,
        text=text_layout.render(body_text=text, **values).strip() + "\n",
        html=html_layout.render(body_html=Markup(inner_html), **values),  # noqa: S704 - escaped in render_step_email
    )


def render_email(step: Step, partner: str, other: str, footer: EmailFooter) -> RenderedEmail:
    """The step's email for `partner`, in the shared layout with `footer`."""
    subject, text, inner_html = render_step_email(step, partner, other)
    return wrap_email(subject, text, inner_html, footer)

"""Composing a nudge's message: the provider message (SMS, or email with its reply address and
one-click unsubscribe headers) for a send plan, with the wording of prompts and of the invitation to a
next program rendered here per partner, the email footer, and the unsubscribe link every email carries
(signup and reveal emails use it too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.domain.send_plans import TIMED_KINDS, SendPlan
from service.domain.tokens import make_token
from service.models import Channel, NudgeKind
from service.programs import EmailFooter, ProgramLibrary, render_email, render_sms, text_to_html, wrap_email
from service.providers import OutboundEmail, OutboundSms
from service.settings import Settings


def unsubscribe_url(settings: Settings, partner_id: int) -> str:
    token = make_token(settings.secret_key, "unsubscribe", partner_id)
    return f"{settings.public_base_url.rstrip('/')}/unsubscribe/{token}"


@dataclass(frozen=True)
class Composed:
    message: OutboundSms | OutboundEmail
    store: dict[str, str | None] = field(default_factory=dict)  # rendered now: stored with the claim


def compose(plan: SendPlan, programs: ProgramLibrary, settings: Settings) -> Composed:
    """The provider message for a plan; prompts and invitations are rendered here, once.

    The words are stored with the claim (subject and text, encrypted): the HTML part carries the same
    words in the shared layout, so it is not kept twice."""
    store: dict[str, str | None] = {}
    subject, text, html = plan.subject, plan.body_text, plan.body_html
    unsubscribe = unsubscribe_url(settings, plan.partner_id) if plan.channel is Channel.EMAIL else None
    if plan.kind in TIMED_KINDS:
        # Rendered every time (a retry sends the same words, in the full layout); stored the first time.
        render = _render_prompt if plan.kind is NudgeKind.PROMPT else _render_invitation
        subject, text, html = render(plan, programs, settings, unsubscribe)
        if plan.body_text is None:
            store = {"subject": subject, "body_text": text}
    if text is None:
        raise ValueError(f"nudge {plan.nudge_id} has no text to send")
    if plan.channel is Channel.SMS:
        # The provider points its status reports at its own webhook, with the nudge id.
        return Composed(OutboundSms(to=plan.address or "", body=text, nudge_id=plan.nudge_id), store)
    return Composed(OutboundEmail(
        to=plan.address or "", subject=subject or settings.sender_name, text=text, html=html or text_to_html(text),
        reply_to=plan.reply_to,
        headers={"List-Unsubscribe": f"<{unsubscribe}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        custom_args={"nudge_id": str(plan.nudge_id)}, nudge_id=plan.nudge_id,
    ), store)


def _footer(title: str, settings: Settings, unsubscribe: str | None) -> EmailFooter:
    return EmailFooter(title, settings.sender_name, settings.sender_postal_address, unsubscribe)


def _render_prompt(
    plan: SendPlan, programs: ProgramLibrary, settings: Settings, unsubscribe: str | None
) -> tuple[str | None, str, str | None]:
    program = programs.get(plan.program_key)
    step = program.step(plan.step_day)
    if plan.channel is Channel.SMS:
        return None, render_sms(step, plan.name, plan.other_name).body, None
    email = render_email(step, plan.name, plan.other_name, _footer(program.title, settings, unsubscribe))
    return email.subject, email.text, email.html


def _render_invitation(
    plan: SendPlan, programs: ProgramLibrary, settings: Settings, unsubscribe: str | None
) -> tuple[str | None, str, str | None]:
    program = programs.get(plan.program_key)
    next_url = f"{settings.public_base_url.rstrip('/')}/programs"
    if plan.channel is Channel.SMS:
        return None, (f"{plan.name}, that was the last step of {program.title}. Thank you both. "
                      f"If you'd like a next program: {next_url}"), None
    subject = f"You finished {program.title}"
    text = (
        f"{plan.name}, that was the last step of {program.title}.\n\n"
        f"Thank you, both of you, for making room for each other these past {program.days} days. "
        f"Before you move on, you might ask {plan.other_name} one question: what do we want to keep doing?\n\n"
        f"If you'd like another program, you can choose one here: {next_url}\n\n"
        "Your shared log stays where it is, whenever you want to read it together."
    )
    email = wrap_email(subject, text, text_to_html(text), _footer(program.title, settings, unsubscribe))
    return email.subject, email.text, email.html

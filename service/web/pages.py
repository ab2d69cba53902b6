"""Public pages: landing, programs, terms and privacy."""

from __future__ import annotations

from flask import Blueprint, Flask, render_template
from flask.typing import ResponseReturnValue

from service.programs import THEMES, render_sms
from service.web.context import current_runtime

bp = Blueprint("pages", __name__)


@bp.record_once
def _filters(state: object) -> None:
    app: Flask = state.app  # type: ignore[attr-defined]
    app.add_template_filter(lambda key: THEMES.get(key, key), "theme_label")


@bp.get("/programs")
def programs() -> ResponseReturnValue:
    library = current_runtime().programs
    samples = {}
    for program in library:
        picks = [program.steps[i] for i in sorted({0, len(program.steps) // 3, (2 * len(program.steps)) // 3})]
        samples[program.key] = [render_sms(step, "Alex", "Sam").body for step in picks]
    return render_template("pages/programs.html", programs=list(library), samples=samples)


@bp.get("/terms")
def terms() -> ResponseReturnValue:
    return render_template(
        "pages/legal.html", kind="terms", title="Terms", support=current_runtime().settings.support_contact
    )


@bp.get("/privacy")
def privacy() -> ResponseReturnValue:
    return render_template(
        "pages/legal.html", kind="privacy", title="Privacy", support=current_runtime().settings.support_contact
    )

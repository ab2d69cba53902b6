"""The /programs page: every program with a few sample prompts, linked from the landing page."""

from __future__ import annotations

import html
import re

from flask.testing import FlaskClient

from service.programs import render_sms
from service.runtime import Runtime


def page_text(client: FlaskClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, path
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


def test_programs_page_lists_every_program_with_sample_prompts(client: FlaskClient, runtime: Runtime) -> None:
    page = page_text(client, "/programs")
    readable = html.unescape(page)
    assert len(runtime.programs) >= 6
    for program in runtime.programs:
        assert f'id="{program.key}"' in page
        assert f'href="#{program.key}"' in page
        assert program.title in readable and program.description in readable
        assert f"{program.days} days" in readable
        section = page.split(f'id="{program.key}"', 1)[1].split("</section>", 1)[0]
        samples = re.findall(r"<li>(.*?)</li>", section)
        assert len(samples) >= 3, program.key
        if program.opt_in:
            continue
        prompts = {render_sms(step, "Alex", "Sam").body for step in program.steps}
        for sample in samples:
            assert html.unescape(sample) in prompts, f"{program.key}: {sample!r} is not one of its prompts"


def test_an_opt_in_program_shows_its_email_subjects_not_its_discreet_texts(
    client: FlaskClient, runtime: Runtime
) -> None:
    page = page_text(client, "/programs")
    opt_in = [program for program in runtime.programs if program.opt_in]
    assert opt_in
    for program in opt_in:
        section = html.unescape(page.split(f'id="{program.key}"', 1)[1].split("</section>", 1)[0])
        assert "opt-in" in section
        assert "lock screen" in section
        subjects = {step.email_subject for step in program.steps}
        shown = re.findall(r"<li>(.*?)</li>", section)
        assert shown and set(shown) <= subjects
        assert "in your email." not in section  # the pointer texts say nothing about the program


def test_programs_page_leaves_no_template_syntax(client: FlaskClient) -> None:
    page = page_text(client, "/programs")
    for marker in ("{{", "}}", "{%", "%}"):
        assert marker not in page


def test_landing_page_links_to_the_programs(client: FlaskClient) -> None:
    page = page_text(client, "/")
    assert 'href="/programs"' in page

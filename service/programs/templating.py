"""The Jinja environment a step's texts are written for, shared by the SMS renderer, the email renderer and
the checks run at load: undefined names raise, nothing is escaped unless asked (SMS and plain text are not
HTML), and each distinct source is compiled once and cached, since a morning peak renders the same few
steps for many partners. `render_html` is the one place a step's HTML part gets its values escaped.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from jinja2 import Environment, StrictUndefined, Template
from markupsafe import escape

jinja = Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)  # noqa: S701 - SMS and plain text; HTML is escaped by hand in render_html


@functools.lru_cache(maxsize=2048)
def compiled(source: str) -> Template:
    """`source` compiled in `jinja`, once per distinct source."""
    # Compiling is far slower than rendering, and a morning peak renders the same few steps for many partners.
    return jinja.from_string(source)


def render_plain(source: str, values: Mapping[str, str]) -> str:
    """`source` rendered with `values` as they are, stripped: for SMS, subjects and plain-text bodies."""
    return compiled(source).render(**values).strip()


def render_html(source: str, values: Mapping[str, str]) -> str:
    """`source` rendered with every value HTML-escaped, stripped: for a step's HTML part."""
    escaped = {k: escape(v) for k, v in values.items()}
    return str(compiled(source).render(**escaped)).strip()

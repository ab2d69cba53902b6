"""Provider webhooks. Each one authenticates first; a bad or unsigned request changes nothing."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

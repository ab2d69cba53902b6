"""/ops: the operator's status page, its JSON, and the controls, all behind a login.

Logins come from OPERATOR_USERS. Every form carries a CSRF token (Flask-WTF checks it app-wide);
every action is recorded with who did it and when. The page shows counts and ids only.

One blueprint, `bp`, defined with its login gate in `auth`; each module does one job:

- `auth`: the blueprint, the gate every other page passes, login and logout;
- `status`: the health checks and the status page and JSON (`/ops`, `/ops/status.json`);
- `charts`: the page's SVG charts, plain data with no Flask;
- `controls`: the operator's POST actions (sending, failed jobs, nudges awaiting review).

Importing this package registers every route on `bp`.
"""

from __future__ import annotations

from service.web.ops import controls, status
from service.web.ops.auth import bp

__all__ = ["bp", "controls", "status"]

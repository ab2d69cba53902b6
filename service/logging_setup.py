"""Structured JSON logs that never carry a message body or a full phone number."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_PHONE = re.compile(r"\+?\d[\d\s().-]{7,}\d")
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+)")
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# Fields whose values are the couples' words: dropped whatever the caller passed.
_FORBIDDEN_FIELDS = {"body", "text", "html", "subject", "reply", "message_body", "first_name", "name"}


def redact(text: str) -> str:
    """Mask phone numbers to their last two digits and emails to their first letter and domain."""
    text = _PHONE.sub(lambda m: "*" * max(len(m.group()) - 2, 0) + m.group()[-2:], text)
    return _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key in _RESERVED or key.startswith("_"):
                continue
            if key in _FORBIDDEN_FIELDS:
                payload[key] = "[redacted]"
            elif isinstance(value, str):
                payload[key] = redact(value)
            elif isinstance(value, int | float | bool) or value is None:
                payload[key] = value
            else:
                payload[key] = redact(repr(value))
        if record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, ensure_ascii=False)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (not the stream at start-up, which may be closed by then), and
    on a failure reports only that logging failed: the standard handler would print the record's raw
    arguments, phone numbers included."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass

    def handleError(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # nowhere left to report it
            sys.__stderr__.write(f"logging error in {record.name} (record withheld)\n")  # type: ignore[union-attr]


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if any(getattr(h, "_closer", False) for h in root.handlers):
        root.setLevel(level)
        return
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter())
    handler._closer = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # werkzeug's access log prints full URLs, which carry private tokens: keep it quiet.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

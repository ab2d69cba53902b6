"""The rate limit's admission, run right before a provider request's bytes are written.

Why: a rate limit only holds if nothing (building the request, say) comes between being admitted and
being on the wire. The sending code sets the gate around a provider call (`admission`); whatever
writes the request (the keep-alive connections, the console outbox) runs it last (`pass_gate`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_gate = threading.local()


class GateClosed(Exception):
    """The admission before writing failed (Redis unreachable, say): nothing was written."""


@contextmanager
def admission(gate: Callable[[], object]) -> Iterator[None]:
    """Run `gate` on this thread right before a request's bytes are written (a rate limit's admission),
    so nothing (building the request, say) comes between being admitted and being on the wire. If the
    gate raises, nothing was written."""
    previous = getattr(_gate, "check", None)
    _gate.check = gate
    try:
        yield
    finally:
        _gate.check = previous


def pass_gate() -> None:
    """Run this thread's pending admission, once; every provider calls it right before it sends."""
    gate: Callable[[], object] | None = getattr(_gate, "check", None)
    if gate is None:
        return
    _gate.check = None
    try:
        gate()
    except Exception as exc:
        raise GateClosed(str(exc)) from exc

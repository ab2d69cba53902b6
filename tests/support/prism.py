"""Stoplight Prism processes serving the providers' official OpenAPI specs (tests/contracts/specs/README.md).

`prism mock SPEC` answers like the provider and rejects a request that breaks the spec (Twilio 422,
SendGrid 400 with an `sl-violations` header). `prism proxy SPEC UPSTREAM --errors` relays to a server
and answers 500 VIOLATIONS when that server's answer breaks the spec: it checks our fake providers.

Prism takes seconds to start, so tests share one pair of mocks per session (`shared_mocks()`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRISM = ROOT / "tests" / "prism" / "node_modules" / ".bin" / "prism"
SPECS = Path(os.environ.get("CLOSER_SPECS_DIR") or ROOT / "tests" / "contracts" / "specs")
TWILIO_SPEC = SPECS / "twilio_api_v2010.json"
SENDGRID_SPEC = SPECS / "tsg_mail_v3.json"
START_TIMEOUT = 60.0


class PrismUnavailable(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_prism() -> None:
    missing = [str(p) for p in (PRISM, TWILIO_SPEC, SENDGRID_SPEC) if not p.exists()]
    if missing or shutil.which("node") is None:
        raise PrismUnavailable(
            "Prism or the provider specs are missing (" + ", ".join(missing or ["node"]) + "); run `make prism`"
            " (the specs are in tests/contracts/specs unless CLOSER_SPECS_DIR points elsewhere)."
        )


@dataclass
class PrismProcess:
    """One Prism server on a free loopback port, stopped with its whole process group."""

    args: list[str]
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrismProcess:
        require_prism()
        handle, name = tempfile.mkstemp(prefix="closer-prism-", suffix=".log")
        self.log_path = Path(name)
        self.process = subprocess.Popen(
            [str(PRISM), *self.args, "-h", "127.0.0.1", "-p", str(self.port)],
            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
        )
        os.close(handle)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrismUnavailable(f"prism exited with {self.process.returncode}: {self.log()[-2000:]}")
            if "Prism is listening" in self.log():
                return
            time.sleep(0.1)
        raise PrismUnavailable(f"prism did not start within {timeout:.0f} s: {self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


@dataclass
class PrismPair:
    twilio: PrismProcess
    sendgrid: PrismProcess

    def stop(self) -> None:
        self.twilio.stop()
        self.sendgrid.stop()


def start_pair(twilio_args: list[str], sendgrid_args: list[str], *, attempts: int = 3) -> PrismPair:
    """Start both at once (each takes a few seconds) and wait for both. A free port can be taken by another
    process before Prism binds it, so a start that fails with EADDRINUSE is tried again on new ports."""
    for attempt in range(1, attempts + 1):
        pair = PrismPair(PrismProcess(twilio_args).start(), PrismProcess(sendgrid_args).start())
        try:
            pair.twilio.wait_ready()
            pair.sendgrid.wait_ready()
        except PrismUnavailable as exc:
            pair.stop()
            if "EADDRINUSE" not in str(exc) or attempt == attempts:
                raise
            continue
        except BaseException:
            pair.stop()
            raise
        return pair
    raise AssertionError("unreachable")


def start_mocks() -> PrismPair:
    return start_pair(["mock", str(TWILIO_SPEC)], ["mock", str(SENDGRID_SPEC)])


def start_proxies(twilio_upstream: str, sendgrid_upstream: str) -> PrismPair:
    return start_pair(
        ["proxy", str(TWILIO_SPEC), twilio_upstream, "--errors"],
        ["proxy", str(SENDGRID_SPEC), sendgrid_upstream, "--errors"],
    )


_shared: PrismPair | None = None
_shared_lock = threading.Lock()


def shared_mocks() -> PrismPair:
    """The session's Prism mocks: started on first use, stopped when the test process exits."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = start_mocks()
            atexit.register(stop_shared_mocks)
        return _shared


def stop_shared_mocks() -> None:
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.stop()
            _shared = None

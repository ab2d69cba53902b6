"""`closer`: a Flask command group, so Flask's own commands (run, shell, routes) work too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
from flask import Flask
from flask.cli import FlaskGroup

from service.redis_runtime import die_with_parent
from service.settings import Settings

if TYPE_CHECKING:
    from service.runtime import Runtime


def _create_app() -> Flask:
    from service.app import create_app

    return create_app()


@contextmanager
def _runtime() -> Iterator[Runtime]:
    """What web, worker and scheduler share, without a Flask app: built from the environment
    (service.runtime.build_runtime) and let go of when the command ends, unless this process has one
    already (jobs.runtime; a test sets its own)."""
    from jobs.runtime import has_runtime, job_runtime
    from service.logging_setup import configure_logging
    from service.runtime import build_runtime

    if has_runtime():
        yield job_runtime()
        return
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    runtime = build_runtime(settings)
    try:
        yield runtime
    finally:
        runtime.close()


@click.group(cls=FlaskGroup, create_app=_create_app, add_version_option=False, load_dotenv=False)
def main() -> None:
    """Closer: timed nudges that help couples feel closer."""


# --- processes --------------------------------------------------------------------------------


@main.command("dev", with_appcontext=False)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
def dev_command(host: str, port: int) -> None:
    """Web, worker and scheduler together, on embedded defaults where nothing else is set."""
    os.environ.setdefault("CLOSER_ENV", "development")
    settings = Settings.from_env()
    embedded = None
    env = dict(os.environ)
    if not settings.redis_url:
        from service.redis_runtime import start_embedded_redis

        embedded = start_embedded_redis()
        env["REDIS_URL"] = embedded.url
        click.echo(f"closer dev: embedded Redis ({embedded.kind}) at {embedded.url}")
    if not settings.database_url:
        from service.embedded_postgres import development_server, with_database

        settings = with_database(settings)
        env["DATABASE_URL"] = settings.database_url
        server = development_server()
        assert server is not None
        how = "started" if server.owned else "already running"
        click.echo(f"closer dev: embedded PostgreSQL {server.version} ({how}) in {server.datadir}")
    from service.migrations import upgrade

    upgrade(settings)
    exe = [sys.executable, "-m", "service.cli"]
    commands = {
        "web": [*exe, "run", "--host", host, "--port", str(port), "--no-reload", "--no-debugger"],
        "worker": [*exe, "worker"],
        "scheduler": [*exe, "scheduler"],
    }
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for name, argv in commands.items():
            # Own sessions: Ctrl-C reaches only us, and we stop the children in order (Redis last).
            children[name] = subprocess.Popen(  # noqa: S603
                argv, env=env, start_new_session=True, preexec_fn=die_with_parent
            )
        click.echo(f"closer dev: serving http://{host}:{port}  (Ctrl-C stops web, worker and scheduler)")
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    click.echo(f"closer dev: {name} exited with {child.returncode}; stopping the rest", err=True)
                    stopping = True
            time.sleep(0.2)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if embedded is not None:
            embedded.stop()
        from service.embedded_postgres import development_server

        server = development_server()
        if server is not None:
            server.stop()
        click.echo("closer dev: stopped")


@main.command("worker", with_appcontext=False)
@click.option("--burst", is_flag=True, help="Drain the queues, then exit.")
@click.option("--fork", is_flag=True, help="Fork a work horse per job (slower; isolates crashes).")
def worker_command(burst: bool, fork: bool) -> None:
    """RQ workers for the send, reply and housekeeping queues."""
    from jobs.runtime import run_worker

    with _runtime() as runtime:
        run_worker(runtime, burst=burst, fork=fork)


@main.command("scheduler", with_appcontext=False)
def scheduler_command() -> None:
    """The scheduler loop: one pass every few seconds, one active scheduler at a time."""
    from jobs.scheduler import run_forever

    with _runtime() as runtime:
        run_forever(runtime)


@main.command("tick", with_appcontext=False)
@click.option("--now", "now_text", default=None, help="ISO-8601 instant to run the pass as of.")
def tick_command(now_text: str | None) -> None:
    """One scheduler pass as of NOW."""
    from jobs.scheduler import run_pass

    now = _parse_instant(now_text) if now_text else datetime.now(UTC)
    with _runtime() as runtime:
        report = run_pass(runtime, now)
    click.echo(json.dumps(report, sort_keys=True))


def _parse_instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not an ISO-8601 instant", param_hint="--now") from exc
    if value.tzinfo is None:
        raise click.BadParameter("give a time zone, e.g. 2026-03-08T09:00:00-05:00 or ...Z", param_hint="--now")
    return value.astimezone(UTC)


# --- database ---------------------------------------------------------------------------------


@main.group("db")
def db_group() -> None:
    """Database migrations (Alembic)."""


@db_group.command("upgrade", with_appcontext=False)
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    from service.migrations import upgrade

    upgrade(Settings.from_env(), revision)


@db_group.command("downgrade", with_appcontext=False)
@click.argument("revision", default="-1")
def db_downgrade(revision: str) -> None:
    from service.migrations import downgrade

    downgrade(Settings.from_env(), revision)


@db_group.command("check", with_appcontext=False)
def db_check() -> None:
    """Fail if the models and the migrations disagree."""
    from service.migrations import check

    check(Settings.from_env())
    click.echo("migrations match the models")


@db_group.command("revision", with_appcontext=False)
@click.option("-m", "--message", required=True)
def db_revision(message: str) -> None:
    from service.migrations import revision

    revision(Settings.from_env(), message)


# --- programs ---------------------------------------------------------------------------------


@main.group("programs")
def programs_group() -> None:
    """The programs in message_templates/."""


def _library_or_exit() -> Any:
    from service.programs import ProgramError, load_programs

    try:
        return load_programs()
    except ProgramError as exc:
        raise click.ClickException(str(exc)) from exc


@programs_group.command("list", with_appcontext=False)
def programs_list() -> None:
    for program in _library_or_exit():
        flag = " (opt-in)" if program.opt_in else ""
        click.echo(f"{program.key:14} {program.days:3} days  {program.title}{flag}")


@programs_group.command("check", with_appcontext=False)
def programs_check() -> None:
    from service.programs import LONG_NAME, render_sms, sms_septets

    library = _library_or_exit()
    steps = sum(len(p.steps) for p in library)
    longest = max(sms_septets(render_sms(s, LONG_NAME, LONG_NAME).body) for p in library for s in p.steps)
    click.echo(f"{len(library)} programs, {steps} steps: valid (longest SMS {longest}/160 septets with 20-char names)")


@programs_group.command("preview", with_appcontext=False)
@click.argument("key")
@click.option("--json", "as_json", is_flag=True)
def programs_preview(key: str, as_json: bool) -> None:
    from service.programs import preview

    library = _library_or_exit()
    if key not in library:
        raise click.ClickException(f"no program {key!r}; try one of: {', '.join(library.keys())}")
    rows = preview(library.get(key))
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    for row in rows:
        click.echo(f"--- day {row['day']} ({row['theme']}{', reveal' if row['reveal'] else ''}) to {row['partner']}")
        click.echo(f"SMS [{row['sms_septets']}/160]: {row['sms']}")
        click.echo(f"Subject: {row['email_subject']}")
        click.echo(row["email_text"])


# --- keys -------------------------------------------------------------------------------------


@main.group("keys")
def keys_group() -> None:
    """Encryption keys for the couples' words."""


@keys_group.command("rotate", with_appcontext=False)
def keys_rotate() -> None:
    """Re-encrypt every stored value under the first DATA_ENCRYPTION_KEY, so older keys can be retired."""
    from service.crypto import install_cipher
    from service.db import Database
    from service.domain.keys import rotate_all
    from service.embedded_postgres import with_database

    settings = with_database(Settings.from_env())
    cipher = install_cipher(settings.data_encryption_key)
    database = Database(settings.database_url)
    try:
        with database.transaction() as session:
            count = rotate_all(session, cipher)
    finally:
        database.dispose()
    click.echo(f"re-encrypted {count} values under the newest key")


# --- data rights ------------------------------------------------------------------------------


@main.command("export", with_appcontext=False)
@click.argument("couple_id", type=int)
@click.option("--csv", "as_csv", is_flag=True, help="Answers only, as CSV.")
def export_command(couple_id: int, as_csv: bool) -> None:
    """A couple's data out, as JSON (or its answers as CSV)."""
    from service.domain.data_rights import export_couple, export_csv
    from service.models import Couple

    with _runtime() as runtime, runtime.database.transaction() as session:
        couple = session.get(Couple, couple_id)
        if couple is None:
            raise click.ClickException(f"no couple {couple_id}")
        data = export_couple(session, couple)
    click.echo(export_csv(data) if as_csv else json.dumps(data, indent=2, ensure_ascii=False))


@main.command("forget", with_appcontext=False)
@click.argument("couple_id", type=int)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def forget_command(couple_id: int, yes: bool) -> None:
    """Erase a couple: both partners, their consents, prompts and answers."""
    from service.domain.data_rights import forget_couple
    from service.models import Couple

    with _runtime() as runtime, runtime.database.transaction() as session:
        couple = session.get(Couple, couple_id)
        if couple is None:
            raise click.ClickException(f"no couple {couple_id}")
        if not yes:
            click.confirm(f"Erase couple {couple_id} and everything about both partners?", abort=True)
        forget_couple(session, couple)
    click.echo(f"couple {couple_id} erased")


# --- operators --------------------------------------------------------------------------------


@main.group("operators")
def operators_group() -> None:
    """Operator logins for /ops (OPERATOR_USERS)."""


@operators_group.command("hash", with_appcontext=False)
@click.argument("name", required=False)
def operators_hash(name: str | None) -> None:
    """Print a password hash for OPERATOR_USERS; the password is read from a prompt, never an argument."""
    from service.domain.operators import OPERATOR_NAME, hash_password

    if name is not None and not OPERATOR_NAME.fullmatch(name):
        raise click.BadParameter("use letters, digits and ._@- (up to 64)", param_hint="NAME")
    password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    try:
        hashed = hash_password(password)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{name}:{hashed}" if name else hashed)


if __name__ == "__main__":
    main()

"""A `closer worker` killed with -9 leaves the live-worker count (/healthz, /ops, /metrics) within a
minute, and no process it started outlives it (RQ's built-in scheduler used to fork one that was
reparented to PID 1 and kept running)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from service.domain import ops_queues
from service.settings import Settings
from tests.support.sending import Scratch, wait_for


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _tree(pid: int) -> set[int]:
    children, found, todo = _children(), {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _health_count(scratch: Scratch) -> int:
    return int(scratch.app.test_client().get("/healthz").get_json()["workers"]["count"])


def _live(scratch: Scratch) -> int:
    return len(ops_queues.workers(scratch.redis()))


@pytest.mark.parametrize("fork", [False, True], ids=["simple", "fork"])
def test_a_worker_killed_with_9_leaves_the_count_and_leaves_no_process_behind(
    scratch: Scratch, monkeypatch: pytest.MonkeyPatch, fork: bool
) -> None:
    # A short heartbeat and window, so the test waits seconds; the defaults keep a minute's promise.
    monkeypatch.setattr(ops_queues, "WORKER_ALIVE_SECONDS", 6.0, raising=False)
    env = scratch.worker_env("http://127.0.0.1:9", WORKER_HEARTBEAT_SECONDS="1")
    worker = scratch.start_worker(env, fork=fork)
    assert wait_for(lambda: _health_count(scratch) == 1, timeout=60), "the worker never registered"
    wait_for(lambda: len(_tree(worker.pid)) > 1, timeout=3)  # RQ's scheduler, when it forks one
    family = _tree(worker.pid)
    # Alive and idle for longer than the window: still counted, because it keeps beating.
    assert not wait_for(lambda: _health_count(scratch) != 1 or _live(scratch) != 1, timeout=9)

    os.kill(worker.pid, signal.SIGKILL)  # the worker alone, not its process group: as a crash would
    worker.wait(timeout=30)
    assert wait_for(lambda: _health_count(scratch) == 0 and _live(scratch) == 0, timeout=20), (
        "a dead worker is still counted as alive")
    others = family - {worker.pid}
    assert wait_for(lambda: not any(_running(pid) for pid in others), timeout=10), (
        f"outlived the worker: {[pid for pid in others if _running(pid)]}")


def test_the_default_heartbeat_keeps_the_minute_promise() -> None:
    settings = Settings()
    assert ops_queues.WORKER_ALIVE_SECONDS <= 60
    assert settings.worker_heartbeat_seconds * 3 <= ops_queues.WORKER_ALIVE_SECONDS


def test_closer_worker_stopped_by_sigterm_leaves_no_process(scratch: Scratch) -> None:
    env = scratch.worker_env("http://127.0.0.1:9", WORKER_HEARTBEAT_SECONDS="1")
    worker = scratch.start_worker(env)
    assert wait_for(lambda: _health_count(scratch) == 1, timeout=60), "the worker never registered"
    wait_for(lambda: len(_tree(worker.pid)) > 1, timeout=3)
    family = _tree(worker.pid)
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("closer worker did not stop on SIGTERM")
    assert wait_for(lambda: not any(_running(pid) for pid in family), timeout=10)
    assert wait_for(lambda: _health_count(scratch) == 0, timeout=5), "a stopped worker leaves at once"


def test_a_fork_workers_work_horse_dies_with_it(scratch: Scratch) -> None:
    from rq import Queue

    from service.queues import QUEUE_NAMES

    env = scratch.worker_env("http://127.0.0.1:9", WORKER_HEARTBEAT_SECONDS="1")
    worker = scratch.start_worker(env, fork=True)
    assert wait_for(lambda: _health_count(scratch) == 1, timeout=60), "the worker never registered"
    Queue(QUEUE_NAMES[0], connection=scratch.redis()).enqueue("time.sleep", 60, job_timeout=120)
    assert wait_for(lambda: len(_tree(worker.pid)) > 1, timeout=30), "no work horse was forked"
    horses = _tree(worker.pid) - {worker.pid}
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    assert wait_for(lambda: not any(_running(pid) for pid in horses), timeout=10), (
        f"the work horse outlived the worker: {[pid for pid in horses if _running(pid)]}")

"""``RUN/status.json``: what a run is doing or how its last session ended, for ``tfpipe runs ls`` and
``tfpipe launch``.

Written atomically by the chief: ``running`` when a session starts, after every checkpoint and every
``HEARTBEAT_S`` seconds in between (:class:`Heartbeat`: the host, pid, checkpoint and best R²), then
``finished``, ``stopped`` (with the reason: time budget, stop-after-sub-epochs, a signal, pruned by a
sweep) or ``failed`` (with the first line of the error). A session killed by SIGKILL leaves
``running`` behind: :func:`effective_state` tells it from a live one by its pid (same host) or its
heartbeat's age; :func:`busy_message` refuses a second trainer of a run dir that a tfpipe without
claims trains (the run dir's claim, :mod:`tfpipe.train.claim`, refuses the others at once).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable

from tfpipe import storage
from tfpipe.train.rundir import STATUS

STATUS_FILE = STATUS
HEARTBEAT_S = 60.0
"""Seconds between the rewrites of a ``running`` status while a sub-epoch trains."""
STALE_AFTER_S = 5 * HEARTBEAT_S
"""A ``running`` status from another host whose heartbeat is older than this is taken as dead."""


def status_path(run_dir: str) -> str:
    return storage.join(run_dir, STATUS_FILE)


def write_status(run_dir: str, state: str, **fields: object) -> None:
    """Record ``state`` (running, finished, stopped, failed) with ``fields``; never raises."""
    record = {"state": state, "time": time.time(), "host": socket.gethostname(), "pid": os.getpid(), **fields}
    try:
        storage.write_bytes(status_path(run_dir), (json.dumps(record, sort_keys=True) + "\n").encode())
    except (OSError, RuntimeError) as err:  # StorageError is a RuntimeError; a status must not kill a run
        print(f"[train] warning: cannot write {status_path(run_dir)}: {err}", flush=True)


def read_status(run_dir: str) -> dict | None:
    """The recorded status, or None (no file, or unreadable)."""
    try:
        return json.loads(storage.read_bytes(status_path(run_dir)))
    except (OSError, RuntimeError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def effective_state(status: dict | None, now: float | None = None) -> str:
    """``running`` only if the recording process still lives; else the recorded state, or ``killed``
    for a ``running`` record whose process is gone (a SIGKILL, a lost machine)."""
    if status is None:
        return "unknown"
    state = str(status.get("state", "unknown"))
    if state != "running":
        return state
    if status.get("host") == socket.gethostname():
        return "running" if _alive(int(status.get("pid", -1))) else "killed"
    age = (now or time.time()) - float(status.get("time", 0.0))
    return "running" if age < STALE_AFTER_S else "killed"


def live_session(run_dir: str) -> dict | None:
    """The ``running`` status of a session of ``run_dir`` that still lives, or None."""
    status = read_status(run_dir)
    return status if status is not None and effective_state(status) == "running" else None


def busy_message(run_dir: str) -> str | None:
    """Why ``run_dir`` must not be trained now (another live session trains it), or None."""
    status = live_session(run_dir)
    if status is None:
        return None
    host, pid = status.get("host"), int(status.get("pid", -1))
    if host == socket.gethostname() and pid == os.getpid():
        return None  # this process's own earlier session (an in-process sweep, say)
    age = time.time() - float(status.get("time", 0.0))
    return (
        f"{run_dir} is being trained by {host} pid {pid} (heartbeat {age:.0f} s ago): wait for it, stop "
        f"it, or use another run dir (a session on another host counts as dead {STALE_AFTER_S:.0f} s after "
        "its last heartbeat)"
    )


class Heartbeat:
    """Calls ``beat`` every ``interval`` seconds on a daemon thread until :meth:`stop` (a ``with`` block)."""

    def __init__(self, beat: Callable[[], None], interval: float = HEARTBEAT_S) -> None:
        self._beat, self._interval = beat, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tfpipe-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._beat()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()


def first_line(err: BaseException) -> str:
    """The first line of an error, with its type when the message is empty."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]

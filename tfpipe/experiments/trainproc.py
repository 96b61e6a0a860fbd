"""One attempt of one zoo run: ``python -m tfpipe.train`` as a child process, with its log.

Shared by both engines of ``tfpipe launch``: the local engine polls :class:`Attempt` objects from
its loop, a Ray task runs one and waits (:func:`run_to_end`). The child trains in its run dir, so a
retry (another attempt, perhaps on another node when the run dir is ``gs://``) resumes from the
latest checkpoint. Its stdout and stderr go to ``RUN/launch/{UTC time}-attempt{N}.log``: written as
it runs for a local run dir, published when the attempt ends for a ``gs://`` one.

The child gets its own session (Ctrl-C in a terminal reaches only the launcher, which forwards one
SIGTERM: a clean stop after the current chunk of steps) and, on Linux, SIGTERM when the process that
started it dies, so a killed launcher or Ray worker leaves no trainer behind to race a retry. In a
Ray task it is started through :mod:`tfpipe.experiments.shield` (an exiting Ray worker SIGKILLs its
direct children). Its environment names the launcher (``TFPIPE_LAUNCHER_PID``), so that a relaunch
waits for a trainer that a killed launch left stopping (:func:`launcher_gone`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from tfpipe import storage

BAD_INPUT = 2
"""``tfpipe train``'s exit code for a bad input (config, data, a refused resume): never retried."""
LOG_FOLDER = "launch"
"""``RUN/launch/{UTC time}-attempt{N}.log``: the attempts' logs."""
LAUNCHER_ENV = "TFPIPE_LAUNCHER_PID"
"""Set in each trainer's environment: the pid of the process that started it (a launcher, a Ray
worker), so that a later launch can tell a trainer whose launcher was killed (it is stopping after
its current chunk: it got SIGTERM) from one that a live launch runs."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def launcher_gone(pid: int) -> bool:
    """True if the local process ``pid`` is a trainer started by a launcher that is dead (Linux:
    read from ``/proc``; elsewhere False)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            items = file.read().split(b"\0")
    except OSError:
        return False
    for item in items:
        key, _, value = item.partition(b"=")
        if key == LAUNCHER_ENV.encode() and value.isdigit():
            return not _alive(int(value))
    return False


def wait_for_exit(pid: int, timeout_s: float, poll_s: float = 0.2) -> bool:
    """Wait until the local process ``pid`` is gone, at most ``timeout_s``; whether it is."""
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


class TrainProcessDied(RuntimeError):
    """The trainer exited with an error or was killed: worth another attempt (it resumes)."""


class TrainBadInput(ValueError):
    """The trainer refused its input (exit code 2): another attempt would fail the same way."""


def _death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to send the child SIGTERM when its parent dies (None elsewhere).

    ``prctl`` is looked up here, in the parent: the child only calls it between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_pdeathsig() -> None:  # pragma: no cover - runs in the child
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG

    return set_pdeathsig


@dataclass
class Result:
    """How an attempt ended."""

    returncode: int
    tail: list[str]
    """The last lines of its output."""
    log: str

    def detail(self) -> str:
        """Why it failed: the signal that killed it, else the output's last error line (``PROG: error:
        ...`` or a traceback's ``SomeError: ...``), else the exit code."""
        if self.returncode < 0:
            return f"killed by {signal.Signals(-self.returncode).name}"
        for line in reversed(self.tail):
            if "error:" in line.lower() or re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line):
                return line.strip()[:300]
        return f"exit code {self.returncode}"


class Attempt:
    """A running ``python -m tfpipe.train`` for ``args`` in ``run_dir``."""

    def __init__(
        self, args: list[str], run_dir: str, attempt: int, env: dict[str, str] | None = None,
        cwd: str | None = None, module: str = "tfpipe.train", folder: str = LOG_FOLDER,
        pass_fds: tuple[int, ...] = (), shield: bool = False,
    ) -> None:  # fmt: skip
        """``shield``: start the trainer through :mod:`tfpipe.experiments.shield` (in a Ray task)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.log = storage.join(run_dir, folder, f"{stamp}-attempt{attempt}.log")
        self._local_log = storage.local_temp_for(self.log) if storage.is_remote(self.log) else self.log
        os.makedirs(os.path.dirname(os.path.abspath(self._local_log)), exist_ok=True)
        self._file: IO[bytes] = open(self._local_log, "wb")  # noqa: SIM115 - closed in finish()
        command = [sys.executable, "-m", module, *args]
        self._file.write(f"# attempt {attempt}: {' '.join(command)}\n".encode())
        self._file.flush()
        if shield:
            command = [sys.executable, "-m", "tfpipe.experiments.shield", *command]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._file, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {}), LAUNCHER_ENV: str(os.getpid())}, cwd=cwd,
            start_new_session=True, preexec_fn=_death_signal(), pass_fds=pass_fds,
        )  # fmt: skip

    def poll(self) -> int | None:
        return self.process.poll()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the trainer if it still runs."""
        if self.process.poll() is None:
            try:
                self.process.send_signal(signum)
            except ProcessLookupError:
                pass

    def finish(self) -> Result:
        """Wait for the trainer; close (and for ``gs://``, publish) the log."""
        code = self.process.wait()
        self._file.close()
        with open(self._local_log, "rb") as log:
            tail = [line.decode(errors="replace").rstrip() for line in deque(log, maxlen=20)]
        if self._local_log != self.log:
            try:
                storage.publish(self._local_log, self.log)
            except (OSError, RuntimeError) as err:
                print(f"[launch] warning: cannot publish {self.log}: {err}", file=sys.stderr)
        return Result(code, [line for line in tail if line.strip()], self.log)


def latest_log(run_dir: str, folder: str = LOG_FOLDER) -> str | None:
    """The newest attempt log in ``RUN/{folder}`` (names sort by time, then attempt), or None."""
    where = storage.join(run_dir, folder)
    try:
        logs = storage.list_files(where, suffix=".log") if storage.exists(where) else []
    except (OSError, RuntimeError):
        return None
    return max(logs, key=lambda p: p.rsplit("/", 1)[-1]) if logs else None


def run_to_end(args: list[str], run_dir: str, attempt: int, env: dict[str, str] | None = None,
               cwd: str | None = None, shield: bool = False) -> Result:  # fmt: skip
    """One attempt, waited for; TrainBadInput on exit code 2, TrainProcessDied on any other failure."""
    running = Attempt(args, run_dir, attempt, env, cwd, shield=shield)
    try:
        while running.poll() is None:  # not wait(): ray.cancel()'s KeyboardInterrupt must get through
            time.sleep(0.2)
    except KeyboardInterrupt:  # stop the trainer cleanly, then end the task
        running.signal(signal.SIGTERM)
        running.finish()
        raise
    result = running.finish()
    if result.returncode == BAD_INPUT:
        raise TrainBadInput(result.detail())
    if result.returncode != 0:
        raise TrainProcessDied(result.detail())
    return result


@dataclass
class Outcome:
    """What the launcher did with one run."""

    attempts: int = 0
    result: Result | None = None
    state: str = "queued"
    """queued, skipped (finished before), busy (another session trains it), done, failed, bad-input."""
    detail: str = ""


def final_state(outcome: Outcome, info: Any) -> str:
    """finished, stopped (time budget or a signal), failed, busy or queued (never started)."""
    if info is not None and info.state == "finished":
        return "finished"
    if outcome.state == "done":
        return "stopped"
    if outcome.state in ("failed", "bad-input"):
        return "failed"
    return outcome.state if outcome.state == "busy" else "queued"

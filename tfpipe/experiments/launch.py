"""``tfpipe launch``: train every run of a RUNS file (:mod:`tfpipe.experiments.zoo`) in parallel.

Each run is ``python -m tfpipe.train ... --run-dir RUNS_DIR/NAME`` as a child process
(:mod:`tfpipe.experiments.trainproc`), so a retry or a re-launch resumes from the run dir. A run
whose ``status.json`` says finished is skipped; one that another live session is training is left
alone. Engines:

* ``local``: a queue and ``slots`` concurrent trainers (default: one per visible GPU, each with its
  own ``CUDA_VISIBLE_DEVICES``; without GPUs ``cpus // cpus_per_run``). A trainer that dies (an exit
  code other than 0 and 2, or a signal) is started again up to ``max_retries`` times; exit code 2
  (bad input) is not retried.
* ``ray``: one Ray task per run (:mod:`tfpipe.experiments.launch_ray`), with ``num_cpus`` /
  ``num_gpus`` and Ray's own retries (also when a worker or a node dies). When every run is finished
  (or busy) already, Ray is not started at all.

An attempt that continues a run with checkpoints says so on the console (``NAME: attempt N resumes
from its latest checkpoint (ckpt-K of T)``). The summary's ``log`` is the run's
newest attempt log, also when the engine lost track of it (a cancelled Ray task); a run that never
started stays ``queued`` with 0 attempts, with either engine.

The first SIGTERM or Ctrl-C stops the trainers cleanly after their current chunk of steps (they
resume on the next launch); a second Ctrl-C aborts them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, TextIO

from tfpipe import storage
from tfpipe.experiments.progress import Board
from tfpipe.experiments.trainproc import (
    BAD_INPUT,
    Attempt,
    Outcome,
    Result,
    final_state,
    latest_log,
    launcher_gone,
    wait_for_exit,
)
from tfpipe.experiments.zoo import RunSpec
from tfpipe.train.status import live_session


@dataclass
class LaunchOptions:
    """How ``tfpipe launch`` runs the zoo."""

    engine: str = "local"
    address: str | None = None
    """Ray: ``auto``, ``HOST:PORT`` or None (Ray's own default: ``RAY_ADDRESS``, else a local Ray)."""
    gpus_per_run: int | None = None
    """None: 1 where GPUs are visible (local) or the cluster has some (Ray), else 0."""
    cpus_per_run: int = 2
    slots: int | None = None
    """Local: concurrent trainers; None: one per GPU group, else ``cpus // cpus_per_run`` (at least 1)."""
    max_retries: int = 2
    poll_s: float = 0.2


@dataclass
class Stopper:
    """SIGTERM / SIGINT while launching: remembered here, forwarded to the trainers by the engine."""

    received: list[int] = field(default_factory=list)
    _previous: dict[int, Any] = field(default_factory=dict)

    def __enter__(self) -> Stopper:
        self.install()
        return self

    def install(self) -> None:
        """(Re)install the handlers: ``ray.init`` sets its own SIGTERM handler."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                continue
            self._previous.setdefault(sig, previous)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        what = "stopping the trainers after their current chunk" if len(self.received) == 1 else "aborting"
        print(f"\n[launch] {signal.Signals(signum).name}: {what}", file=sys.stderr, flush=True)

    def forward_signal(self) -> int | None:
        """SIGTERM for the first signal (a clean stop), SIGINT for a second (an abort), else None."""
        if not self.received:
            return None
        return signal.SIGTERM if len(self.received) == 1 else signal.SIGINT


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``'s."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = []
        for item in listed.split(","):
            if not item.strip() or item.strip() == "-1":
                break  # CUDA stops at the first invalid id
            ids.append(item.strip())
        return ids
    try:
        text = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in text.splitlines() if line.startswith("GPU "))]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_slots(options: LaunchOptions, gpus: list[str] | None = None) -> list[dict[str, str]]:
    """The environment of each local slot (its ``CUDA_VISIBLE_DEVICES``); as many as there are slots."""
    gpus = visible_gpus() if gpus is None else gpus
    per_run = options.gpus_per_run if options.gpus_per_run is not None else (1 if gpus else 0)
    if per_run > len(gpus):
        raise ValueError(f"--gpus-per-run {per_run}: only {len(gpus)} GPU(s) visible")
    if per_run == 0:
        n = options.slots or max(1, cpu_count() // max(1, options.cpus_per_run))
        return [{"CUDA_VISIBLE_DEVICES": "-1"} if gpus else {} for _ in range(n)]
    n = options.slots or max(1, len(gpus) // per_run)
    shared = n * per_run > len(gpus)  # several trainers per GPU: let each take only what it needs
    return [
        {"CUDA_VISIBLE_DEVICES": ",".join(gpus[(i * per_run + j) % len(gpus)] for j in range(per_run)),
         **({"TF_FORCE_GPU_ALLOW_GROWTH": "true"} if shared else {})}
        for i in range(n)
    ]  # fmt: skip


STOPPING_WAIT_S = 300.0
"""How long a launch waits for a trainer that a killed launch left stopping (it got SIGTERM and
ends after its current chunk of steps) before it calls the run busy."""


def pre_check(spec: RunSpec, board: Board) -> Outcome | None:
    """An Outcome for a run that must not start: finished before, or trained by a live session now.

    A trainer on this host whose launcher is dead is stopping (a relaunch right after a kill -9 of
    ``tfpipe launch``): it is waited for, at most STOPPING_WAIT_S, and the run then resumes."""
    info = board.read(spec.name)
    if info is not None and info.state == "finished":
        board.set(spec.name, "finished")
        return Outcome(state="skipped", detail="finished before")
    status = live_session(spec.run_dir)
    waited = ""
    pid = int(status.get("pid", -1)) if status is not None else -1
    if status is not None and status.get("host") == socket.gethostname() and launcher_gone(pid):
        print(f"[launch] {spec.name}: its trainer (pid {pid}) outlived a killed launch and stops after its "
              f"current chunk; waiting for it (at most {STOPPING_WAIT_S:.0f} s)", file=sys.stderr,
              flush=True)  # fmt: skip
        if wait_for_exit(pid, STOPPING_WAIT_S):
            return pre_check(spec, board)
        waited = f"; still stopping after {STOPPING_WAIT_S:.0f} s"
    if status is not None:
        board.set(spec.name, "busy")
        host, pid = status.get("host"), status.get("pid")
        return Outcome(state="busy", detail=f"another session trains it (host {host}, pid {pid}){waited}")
    return None


def run_local(
    specs: list[RunSpec], options: LaunchOptions, board: Board, stop: Stopper
) -> dict[str, Outcome]:
    """The local engine: a queue, ``slots`` concurrent trainers, retries of the ones that die."""
    slots = local_slots(options)
    outcomes = {spec.name: pre_check(spec, board) or Outcome() for spec in specs}
    queue = deque(spec for spec in specs if outcomes[spec.name].state == "queued")
    active: dict[int, tuple[RunSpec, Attempt]] = {}
    try:
        _local_loop(queue, active, slots, outcomes, options, board, stop)
    except BaseException:  # an attempt that cannot start, a bug: the running trainers stop with us
        for _spec, attempt in active.values():
            attempt.signal(signal.SIGTERM)
        for _spec, attempt in active.values():
            attempt.finish()
        raise
    return outcomes


def _local_loop(queue: deque, active: dict, slots: list, outcomes: dict[str, Outcome], options: LaunchOptions,
                board: Board, stop: Stopper) -> None:  # fmt: skip
    """Start queued runs on free slots, reap ended attempts, forward stop signals, until all ended."""
    forwarded = 0
    while queue or active:
        for slot, (spec, attempt) in list(active.items()):
            if attempt.poll() is not None:
                del active[slot]
                _reap(spec, attempt.finish(), outcomes[spec.name], options, board, queue, stop)
        while queue and len(active) < len(slots) and not stop.received:
            spec, slot = queue.popleft(), min(set(range(len(slots))) - set(active))
            outcome = outcomes[spec.name]
            outcome.attempts += 1
            board.started(spec.name, outcome.attempts)
            board.set(spec.name, "running", outcome.attempts)
            active[slot] = (spec, Attempt(spec.train_args(), spec.run_dir, outcome.attempts, slots[slot]))
        if stop.received:
            queue.clear()
            if len(stop.received) > forwarded:
                forwarded = len(stop.received)
                for spec, attempt in active.values():
                    attempt.signal(stop.forward_signal() or signal.SIGTERM)
                    board.set(spec.name, "stopping")
        board.refresh(spec.name for spec, _ in active.values())
        time.sleep(options.poll_s)


def _reap(spec: RunSpec, result: Result, outcome: Outcome, options: LaunchOptions, board: Board,
          queue: deque, stop: Stopper) -> None:  # fmt: skip
    """Record an ended attempt; queue a retry (first in line) when the trainer died."""
    outcome.result = result
    if result.returncode == 0:
        outcome.state, outcome.detail = "done", ""
    elif stop.received and result.returncode in (128 + signal.SIGTERM, 128 + signal.SIGINT):
        # the forwarded signal reached the trainer before its loop did (during imports or set-up)
        outcome.state, outcome.detail = "done", f"stopped by {signal.Signals(result.returncode - 128).name}"
    elif result.returncode == BAD_INPUT:
        outcome.state, outcome.detail = "bad-input", result.detail()
    else:
        outcome.state, outcome.detail = "failed", result.detail()
        if outcome.attempts <= options.max_retries and not stop.received:
            print(f"[launch] {spec.name}: attempt {outcome.attempts} failed ({outcome.detail}); retrying "
                  f"(log: {result.log})", file=sys.stderr, flush=True)  # fmt: skip
            queue.appendleft(spec)
            board.set(spec.name, "retrying")
            return
    board.read(spec.name)
    board.set(spec.name, final_state(outcome, board.info[spec.name]))


def summary(specs: list[RunSpec], outcomes: dict[str, Outcome], board: Board, options: LaunchOptions,
            runs_dir: str) -> dict[str, Any]:  # fmt: skip
    """The JSON summary: every run with its state, best R², attempts; the counts per state."""
    runs = []
    for spec in specs:
        outcome, info = outcomes[spec.name], board.read(spec.name)
        state = final_state(outcome, info)
        if state == "finished":
            detail = outcome.detail if outcome.state == "skipped" else ""
        else:
            detail = outcome.detail or (info.detail if info is not None else "")
        runs.append({
            "name": spec.name, "run_dir": spec.run_dir, "state": state, "detail": detail,
            "best_r2": info.best_r2 if info else None, "r2": info.r2 if info else None,
            "kaggle_r2": info.kaggle_r2 if info else None, "checkpoints": info.checkpoints if info else 0,
            "total": info.total if info else None, "attempts": outcome.attempts,
            "skipped": outcome.state in ("skipped", "busy"),
            "log": outcome.result.log if outcome.result else latest_log(spec.run_dir) if outcome.attempts
            else None, "origin": spec.origin,
        })  # fmt: skip
    counts = Counter(run["state"] for run in runs)
    return {
        "engine": options.engine, "runs_dir": runs_dir, "runs": runs, "counts": dict(sorted(counts.items())),
        "finished": counts["finished"], "total": len(runs),
    }  # fmt: skip


def launch(specs: list[RunSpec], options: LaunchOptions, runs_dir: str, stream: TextIO | None = None) -> dict:
    """Train ``specs`` with ``options.engine``; the summary (progress lines go to ``stream``)."""
    if options.engine not in ("local", "ray"):
        raise ValueError(f"unknown engine {options.engine!r} (local or ray)")
    if (
        options.max_retries < 0
        or options.cpus_per_run < 1
        or (options.slots is not None and options.slots < 1)
    ):
        raise ValueError("--max-retries must be >= 0, --cpus-per-run and --slots >= 1")
    if options.gpus_per_run is not None and options.gpus_per_run < 0:
        raise ValueError(f"--gpus-per-run must be >= 0, got {options.gpus_per_run}")
    if options.engine == "local" and options.address is not None:
        raise ValueError("--address is for --engine ray")
    if options.engine == "ray" and options.slots is not None:
        raise ValueError(
            "--slots is for --engine local (Ray places runs by --cpus-per-run and --gpus-per-run)"
        )
    remote = any(storage.is_remote(spec.run_dir) for spec in specs)  # fewer requests to gs://
    board = Board(specs, stream, interval_s=5.0 if remote else 1.0 if options.engine == "local" else 2.0)
    with Stopper() as stop:
        if options.engine == "ray":
            from tfpipe.experiments.launch_ray import run_ray

            outcomes = run_ray(specs, options, board, stop, pre_check)
        else:
            outcomes = run_local(specs, options, board, stop)
    report = summary(specs, outcomes, board, options, runs_dir)
    board.refresh(force=True)
    if stop.received:
        report["stopped_by"] = signal.Signals(stop.received[0]).name
    return report

"""``tfpipe launch --engine ray``: every run a Ray task that runs ``python -m tfpipe.train`` and waits.

``ray.init(address=...)`` unless Ray is already initialised in this process (then that Ray is used
and left running). Each task asks for ``num_cpus`` / ``num_gpus`` and has ``max_retries``: Ray
retries it when the trainer dies (the task raises :class:`TrainProcessDied`) and when its worker or
node dies; the retry resumes from the run dir, so on a cluster the run dirs should be ``gs://`` (or
a shared file system) and data paths absolute or ``gs://``. Exit code 2 (bad input) raises
:class:`TrainBadInput`, which is not retried. A small actor counts the attempts of every run and is
the gate a stopping launch closes, so that a queued run never starts once Ctrl-C is in. A task makes
no blocking Ray call from its main thread: Ray would lend its CPUs to a queued run meanwhile, and two
trainers would share CPUs meant for one.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tfpipe import storage
from tfpipe.experiments.trainproc import (
    Outcome,
    Result,
    TrainBadInput,
    TrainProcessDied,
    final_state,
    run_to_end,
)
from tfpipe.experiments.zoo import RunSpec


class AttemptCounter:
    """A Ray actor: how many attempts each run has started (a retry on another node counts too), and the
    gate a stopping launch closes: after :meth:`close`, no attempt starts (``start`` answers 0)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.closed = False

    def start(self, name: str) -> int:
        if self.closed:
            return 0
        self.counts[name] = self.counts.get(name, 0) + 1
        return self.counts[name]

    def close(self) -> None:
        self.closed = True

    def all(self) -> dict[str, int]:
        return dict(self.counts)


def train_task(spec: dict[str, Any], config_text: str, cwd: str, counter: Any) -> dict[str, Any]:
    """The body of a run's Ray task: one attempt (a run finished by an earlier attempt is not redone)."""
    import ray

    from tfpipe.experiments.runs import read_run

    # Not from this (the main) thread: a task that blocks in ray.get there gives its CPUs back until the
    # call returns, and Ray starts a queued run on them; both would then train at once on those CPUs.
    with ThreadPoolExecutor(1) as helper:
        attempt = helper.submit(ray.get, counter.start.remote(spec["name"])).result()
    if attempt == 0:  # the launch is stopping: this run stays queued, never started
        return {"returncode": None, "attempt": 0, "log": None}
    try:
        if read_run(spec["run_dir"]).state == "finished":
            return {"returncode": 0, "attempt": attempt, "log": None}
    except (ValueError, OSError, RuntimeError):  # not started yet
        pass
    run = RunSpec(**spec)
    with tempfile.TemporaryDirectory(prefix="tfpipe-launch-") as tmp:
        if not storage.is_remote(run.config) and not os.path.exists(run.config):
            run.config = os.path.join(tmp, os.path.basename(run.config) or "config.yaml")
            with open(run.config, "w") as file:  # this node lacks the file: the driver's copy
                file.write(config_text)
        result = run_to_end(  # shielded: an exiting worker SIGKILLs its children; the trainer gets SIGTERM
            run.train_args(), run.run_dir, attempt, cwd=cwd if os.path.isdir(cwd) else None, shield=True
        )
    return {"returncode": result.returncode, "attempt": attempt, "log": result.log}


def _portable(spec: RunSpec) -> tuple[dict[str, Any], str]:
    """The spec with absolute local paths (a worker may start elsewhere) and the config's text."""
    data = spec.to_dict()
    for key in ("config", "run_dir"):
        if not storage.is_remote(data[key]):
            data[key] = os.path.abspath(data[key])
    return data, storage.read_bytes(spec.config).decode()


def check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """A ``HOST:PORT`` (or ``ray://HOST:PORT``) address must accept a connection: Ray itself retries an
    unreachable one for minutes. ConnectionError (an OSError: one line, exit code 2) if not."""
    import socket

    if not address or address == "auto" or address == "local":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address {address!r}: expected auto or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConnectionError(f"no Ray cluster reachable at {address}: {err.strerror or err}") from None


def _gpus_per_run(ray: Any, requested: int | None) -> int:
    available = ray.cluster_resources().get("GPU", 0)
    if requested is None:
        return 1 if available >= 1 else 0
    if requested > available:
        print(f"[launch] warning: each run asks for {requested} GPU(s) and the Ray cluster has {available} "
              "now: the runs wait until nodes with GPUs join", file=sys.stderr)  # fmt: skip
    return requested


def _outcome_of_error(err: BaseException) -> tuple[str, str]:
    """(outcome state, detail) of a task that raised."""
    import ray.exceptions as rex

    cause = getattr(err, "cause", None) or err
    if isinstance(cause, TrainBadInput):
        return "bad-input", str(cause)
    if isinstance(err, rex.TaskCancelledError):
        return "done", ""  # the trainer was stopped cleanly; its run dir says where it stands
    if isinstance(cause, TrainProcessDied):
        return "failed", str(cause)
    return "failed", " ".join(str(err).split())[:300]


def run_ray(specs: list[RunSpec], options: Any, board: Any, stop: Any, pre_check: Callable) -> dict[str, Any]:
    """Submit every run as a task, follow them to the end; Outcomes by run name. Ray is not started
    when no run needs training (all finished or busy)."""
    import logging

    from tfpipe.experiments import require

    outcomes: dict[str, Outcome] = {spec.name: pre_check(spec, board) or Outcome() for spec in specs}
    if all(outcome.state != "queued" for outcome in outcomes.values()):
        return outcomes
    require("ray", "tfpipe launch --engine ray")
    import ray

    started = not ray.is_initialized()
    if started:
        check_reachable(options.address)
        ray.init(address=options.address, logging_level=logging.WARNING)
        stop.install()
    try:
        counter = ray.remote(num_cpus=0)(AttemptCounter).remote()
        gpus = _gpus_per_run(ray, options.gpus_per_run)
        task = ray.remote(train_task)
        pending: dict[Any, RunSpec] = {}
        for spec in specs:
            if outcomes[spec.name].state == "queued":
                data, text = _portable(spec)
                ref = task.options(
                    name=f"tfpipe-train:{spec.name}", num_cpus=options.cpus_per_run, num_gpus=gpus,
                    max_retries=options.max_retries, retry_exceptions=[TrainProcessDied],
                ).remote(data, text, os.getcwd(), counter)  # fmt: skip
                pending[ref] = spec
        _follow(ray, pending, outcomes, counter, board, stop)
        return outcomes
    finally:
        if started:
            ray.shutdown()


def _follow(ray: Any, pending: dict, outcomes: dict, counter: Any, board: Any, stop: Any) -> None:
    """Wait for the tasks, keeping the board's states and attempt counts current."""

    cancelled = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=1.0)
        attempts = ray.get(counter.all.remote())
        for spec in pending.values():  # attempts that started since the last look
            for attempt in range(outcomes[spec.name].attempts + 1, attempts.get(spec.name, 0) + 1):
                board.started(spec.name, attempt)
        for ref in ready:
            spec = pending.pop(ref)
            outcome = outcomes[spec.name]
            try:
                value = ray.get(ref)
                outcome.state = "done"
                if value.get("log"):
                    outcome.result = Result(value["returncode"], [], value["log"])
            except Exception as err:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, NodeDiedError, ...
                outcome.state, outcome.detail = _outcome_of_error(err)
            outcome.attempts = attempts.get(spec.name, outcome.attempts)
            if outcome.attempts == 0 and outcome.state == "done":  # cancelled before it started
                outcome.state = "queued"
            board.read(spec.name)
            board.set(spec.name, final_state(outcome, board.info[spec.name]), outcome.attempts)
        for spec in pending.values():
            outcomes[spec.name].attempts = attempts.get(spec.name, 0)
            state = "stopping" if stop.received else "running" if outcomes[spec.name].attempts else "queued"
            board.set(spec.name, state, outcomes[spec.name].attempts)
        if len(stop.received) > cancelled:  # first signal: interrupt (trainers stop cleanly); then force
            # the gate closes first: a queued task that Ray starts on the CPUs a stopping run frees (its
            # cancel can land after that) finds it closed and returns without training
            ray.get(counter.close.remote())
            for ref in pending:
                ray.cancel(ref, force=cancelled > 0)
            cancelled = len(stop.received)
        board.refresh([spec.name for spec in pending.values()])

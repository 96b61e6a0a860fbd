"""Run directories: checkpoints, the run state, the best model, the resume target and its guards.

Layout of ``RUN`` (local or ``gs://``)::

    config.yaml   stats.json   metrics.csv   tb/   best.keras   best.json
    checkpoints/checkpoint  ckpt-N.index  ckpt-N.data-*  ckpt-N.state.json
    best/checkpoint  ckpt-N.*

``ckpt-N`` (``tf.train.CheckpointManager``) holds the model (its normalisation statistics included)
and the optimizer (slots, EMA, step); ``ckpt-N.state.json`` is written last and commits it: a
checkpoint counts only when the manager's index lists it and its state exists. When a sub-epoch
improves the validation score, ``best/ckpt-N``, ``best.json`` and ``best.keras`` are written (in this
order) before the state that names them, so no state ever points at a best model that is not there.
``best.json`` says which checkpoint ``best.keras`` holds (or is being replaced by). Where it disagrees
with the newest committed state (a kill between the two), ``best.keras`` is not the committed best:
readers take ``best/ckpt-B`` instead (:func:`tfpipe.train.committed.best_model_path`), and the next
start re-exports ``best.keras`` from ``best/`` (which keeps the two latest).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

from tfpipe import storage
from tfpipe.config import TrainConfig, changed_fields, config_to_dict, resume_conflicts
from tfpipe.train.rundir import BEST, CHECKPOINTS, RunDir

BEST_KEEP = 2


class TrainError(ValueError):
    """A run that cannot start or continue: bad resume target, config mismatch, unusable data."""


class CorruptCheckpoint(TrainError):
    """A checkpoint (its state record or its variables) that cannot be read back."""

    def __init__(self, number: int, message: str) -> None:
        super().__init__(message)
        self.number = number


@dataclass
class RunState:
    """What a checkpoint records besides the variables (``ckpt-N.state.json``)."""

    checkpoint: int
    epoch: int
    """The next epoch to run."""
    sub_epoch: int
    """The next sub-epoch to run."""
    seed: int
    step: int
    model_hash: str
    """Model config and statistics."""
    data_hash: str
    """The sources' files (names and sample counts per split; ``tfpipe.data.pipeline.data_fingerprint``)."""
    stats_sha256: str
    replicas: int
    global_batch: int
    plan_hash: str
    """Steps of every stage and the fresh learning-rate phases (``tfpipe.train.plan.plan_hash``)."""
    schedule: list[dict]
    """The learning-rate phases in use (re-anchored by resumes that changed the plan)."""
    best_metric: float | None
    best_checkpoint: int | None
    wall_time_s: float
    val: dict
    config: dict
    plan_steps: list[int] = field(default_factory=list)


def ckpt_dir(run_dir: str) -> str:
    return storage.join(run_dir, CHECKPOINTS)


def state_path(run_dir: str, n: int) -> str:
    return storage.join(ckpt_dir(run_dir), f"ckpt-{n}.state.json")


def read_state(run_dir: str, n: int) -> RunState:
    path = state_path(run_dir, n)
    try:
        return RunState(**json.loads(storage.read_bytes(path).decode()))
    except (storage.StorageError, ValueError) as err:
        raise CorruptCheckpoint(n, f"{path}: cannot read the checkpoint's state ({err})") from None
    except TypeError as err:
        raise TrainError(f"{path}: written by another tfpipe version ({err}); start a new run dir") from None


def write_state(run_dir: str, state: RunState) -> None:
    """Write ``ckpt-N.state.json`` (atomically): the commit of checkpoint N."""
    data = json.dumps(dataclasses.asdict(state), indent=1).encode()
    storage.write_bytes(state_path(run_dir, state.checkpoint), data)


def listed_checkpoints(folder: str) -> list[int]:
    """Numbers in a CheckpointManager's ``checkpoint`` index file (its commit marker)."""
    index = storage.join(folder, "checkpoint")
    if not storage.exists(index):
        return []
    text = storage.read_bytes(index).decode()
    return sorted({int(n) for n in re.findall(r'all_model_checkpoint_paths: ".*?ckpt-(\d+)"', text)})


def available_checkpoints(run_dir: str) -> list[int]:
    """Checkpoint numbers in the run directory that are complete (index, data and state present)."""
    return [n for n in listed_checkpoints(ckpt_dir(run_dir)) if storage.exists(state_path(run_dir, n))]


def resume_target(run_dir: str, resume: str | None) -> int | None:
    """The checkpoint to resume from: ``ckpt-N``, ``latest``, or by default the latest if any."""
    numbers = available_checkpoints(run_dir)
    if resume is None:
        if numbers:
            print(f"[train] {run_dir} has checkpoints: resuming from ckpt-{numbers[-1]}", file=sys.stderr)
            return numbers[-1]
        return None
    if resume == "latest":
        if not numbers:
            raise TrainError(f"--resume latest: {run_dir} has no checkpoints")
        return numbers[-1]
    name = os.path.basename(resume.rstrip("/"))
    if not name.startswith("ckpt-") or not name[5:].isdigit():
        raise TrainError(f"--resume {resume}: expected ckpt-N or latest")
    n = int(name[5:])
    if n not in numbers:
        have = ", ".join(f"ckpt-{k}" for k in numbers) or "none"
        raise TrainError(f"--resume {resume}: no such checkpoint in {run_dir} (available: {have})")
    return n


@dataclass
class ResumeFacts:
    """What the current command would train with, to compare with a checkpoint's state."""

    config: TrainConfig
    model_hash: str
    data_hash: str
    stats_sha256: str
    replicas: int
    global_batch: int


@dataclass
class AllowedChanges:
    config: bool = False
    data: bool = False
    replicas: bool = False


def check_resume(state: RunState, now: ResumeFacts, allow: AllowedChanges, n: int) -> list[str]:
    """Refuse a resume that would change the model, the data, the step plan or the LR curve unasked.

    Returns the changes that were allowed (for the log). Raises TrainError naming what changed and
    the flag that allows it (or, for changes no flag allows, that a new run dir is needed).
    """
    changed = changed_fields(state.config, config_to_dict(now.config))
    conflicts = resume_conflicts(state.config, config_to_dict(now.config))
    if conflicts:
        raise TrainError(
            f"ckpt-{n} was trained with another {', '.join(conflicts)}; these cannot change during a run: "
            "start a new run dir (--run-dir) to train with them"
        )
    if now.model_hash != state.model_hash and not changed:
        raise TrainError(f"ckpt-{n} was trained with another model or data layout: start a new run dir")
    notes: list[str] = []
    checks = [
        (bool(changed), allow.config, "--allow-config-change", f"the config differs in {', '.join(changed)}"),
        (now.data_hash != state.data_hash, allow.data, "--allow-data-change",
         "the training or validation files differ (added, removed or re-split shards)"),
        (now.stats_sha256 != state.stats_sha256, allow.data, "--allow-data-change",
         "the statistics file differs from the run's (the model keeps normalising with RUN/stats.json)"),
        (now.replicas != state.replicas, allow.replicas,
         "--allow-replica-change", f"{now.replicas} replicas (global batch {now.global_batch}) instead of "
         f"{state.replicas} ({state.global_batch}): the remaining steps are re-planned"),
    ]  # fmt: skip
    for differs, allowed, flag, what in checks:
        if not differs:
            continue
        if not allowed:
            raise TrainError(f"cannot resume ckpt-{n} unchanged: {what}; pass {flag} to continue anyway")
        notes.append(what)
    return notes


class CheckpointMirror:
    """Where TensorFlow writes checkpoints: the write dir itself, or a local folder mirrored to it.

    Object stores have no appends or renames, and the GCS emulator cannot take TF's checkpoint uploads,
    so for a ``gs://`` dir TF saves locally and :meth:`push` uploads the new files, the ``checkpoint``
    index last (the commit marker), then deletes what the manager rotated out. Reads (``restore_path``)
    come from ``read_dir``, writes go to ``write_dir`` (a scratch dir on a non-chief worker).

    The local folder starts with the remote ``checkpoint`` index of each of ``subs``: a manager then
    counts the checkpoints of earlier sessions, as it does in a local dir, and keeps ``max_to_keep`` of
    all of them, not only of this session's.
    """

    def __init__(self, read_dir: str, write_dir: str, subs: tuple[str, ...] = (CHECKPOINTS, BEST)) -> None:
        self.read_dir, self.write_dir = read_dir, write_dir
        self.remote = storage.is_remote(write_dir)
        self.root = tempfile.mkdtemp(prefix="tfpipe-ckpt-") if self.remote else write_dir
        if self.remote:
            for sub in subs:
                self._pull_index(sub)

    def _pull_index(self, sub: str) -> None:
        index = storage.join(self.write_dir, sub, "checkpoint")
        if storage.exists(index):
            os.makedirs(self.local(sub), exist_ok=True)
            storage.download_file(index, os.path.join(self.local(sub), "checkpoint"))

    def local(self, sub: str) -> str:
        return os.path.join(self.root, sub)

    def restore_path(self, sub: str, n: int) -> str:
        """A local (or directly readable) path of checkpoint ``n`` of ``sub``, fetched if needed."""
        if not storage.is_remote(self.read_dir):
            return os.path.join(self.read_dir, sub, f"ckpt-{n}")
        os.makedirs(self.local(sub), exist_ok=True)
        for path in storage.list_files(storage.join(self.read_dir, sub)):
            name = path.rsplit("/", 1)[-1]
            if name.startswith(f"ckpt-{n}.") and not name.endswith(".state.json"):
                storage.download_file(path, os.path.join(self.local(sub), name))
        return os.path.join(self.local(sub), f"ckpt-{n}")

    def push(self, sub: str, keep: list[int]) -> None:
        """Upload checkpoints ``keep`` of ``sub`` that the remote lacks, the index last; drop the others."""
        if not self.remote:
            return
        remote = storage.join(self.write_dir, sub)
        there = {p.rsplit("/", 1)[-1] for p in storage.list_files(remote)}
        for name in sorted(os.listdir(self.local(sub))):
            n = re.match(r"ckpt-(\d+)\.", name)
            if n and int(n[1]) in keep and name not in there:
                storage.upload_file(os.path.join(self.local(sub), name), storage.join(remote, name))
        storage.upload_file(os.path.join(self.local(sub), "checkpoint"), storage.join(remote, "checkpoint"))
        for name in there:
            n = re.match(r"ckpt-(\d+)\.", name)
            if n and int(n[1]) not in keep and not name.endswith(".state.json"):
                storage.delete(storage.join(remote, name), missing_ok=True)

    def close(self) -> None:
        """Remove the local mirror of a remote dir."""
        if self.remote:
            shutil.rmtree(self.root, ignore_errors=True)


def numbers(manager) -> list[int]:
    """Checkpoint numbers a CheckpointManager keeps."""
    return [int(p.rsplit("ckpt-", 1)[1]) for p in manager.checkpoints]


def drop_stale_states(run_dir: str, keep: list[int], best: int | None) -> list[str]:
    """Delete state records of checkpoints the manager has rotated out (the best one's is kept);
    the paths deleted."""
    kept = set(keep) | {best}
    dropped = []
    for path in storage.list_files(ckpt_dir(run_dir), suffix=".state.json"):
        n = int(path.rsplit("ckpt-", 1)[1].split(".")[0])
        if n not in kept:
            storage.delete(path, missing_ok=True)
            dropped.append(path)
    return dropped


def read_best_record(run_dir: str) -> dict | None:
    """``best.json`` (which checkpoint ``best.keras`` holds), or None."""
    path = RunDir(run_dir).best_record
    if not storage.exists(path):
        return None
    try:
        return json.loads(storage.read_bytes(path).decode())
    except ValueError:
        return None


def write_best_record(run_dir: str, checkpoint: int, metric: str, value: float) -> None:
    """``best.json``: ``{"checkpoint": "ckpt-N", "metric": METRIC, METRIC: value}`` (METRIC: the config's
    ``select_metric``)."""
    record = {"checkpoint": f"ckpt-{checkpoint}", "metric": metric, metric: value}
    storage.write_bytes(RunDir(run_dir).best_record, json.dumps(record).encode())


def remove_leftovers(run_dir: str) -> list[str]:
    """Delete what a killed session of this run left in a local run dir: TF's ``ckpt-N_temp`` folders
    and ``checkpoint.tmp<hex>`` index files (a kill while TF wrote its index), and the temporary files
    of atomic writes. (A ``gs://`` run dir gets only complete uploads.) Called by the run dir's holder."""
    if storage.is_remote(run_dir) or not os.path.isdir(run_dir):
        return []
    removed = storage.remove_temps(run_dir)
    for sub in (CHECKPOINTS, BEST):
        folder = os.path.join(run_dir, sub)
        removed += storage.remove_temps(folder)
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if re.fullmatch(r"ckpt-\d+_temp.*|checkpoint\.tmp[0-9a-f]+", name):
                path = os.path.join(folder, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
                removed.append(path)
    return removed


def is_chief(strategy) -> bool:
    """Whether this process writes the run dir (always, except on non-chief multi-worker tasks)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type or task_type == "chief":
        return True
    cluster = resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


def export_keras(step: Any, target: str) -> None:
    """Save the inference weights (EMA when on) as a ``.keras`` file, atomically."""
    with step.inference_weights(), storage.staged_output(target, suffix=".keras") as local:
        step.model.save(local)

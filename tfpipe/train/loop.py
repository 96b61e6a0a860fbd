"""The training loop: sub-epochs in order, validation, checkpoints, the time budget and signals.

:func:`train` opens a session (:mod:`tfpipe.train.session`), builds the :class:`TrainStep`, restores
the resume checkpoint and runs the remaining stages. After each sub-epoch: validation (EMA weights
when on), logs, then the writes in commit order: ``best/ckpt-N``, ``best.json`` and ``best.keras``
when the score improved, ``checkpoints/ckpt-N``, and last ``ckpt-N.state.json``.

Stops: ``--stop-after-sub-epochs``, ``--time-budget`` (before a sub-epoch that would not fit),
SIGTERM or Ctrl-C (at the next chunk of ``steps_per_execution`` steps; the unfinished sub-epoch is
redone by the next run; a second Ctrl-C aborts at once).

(Just over 400 lines: the Trainer's methods share the commit order of the writes above, which is
easier to check in one room; the step, checkpoints, session, status and logs are their own modules.)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np

from tfpipe import storage
from tfpipe.config import TrainConfig, dump_config
from tfpipe.evaluate.metrics import TRAIN_VAR_DOC
from tfpipe.train.checkpoints import (
    BEST,
    BEST_KEEP,
    CHECKPOINTS,
    AllowedChanges,
    CheckpointMirror,
    CorruptCheckpoint,
    RunState,
    TrainError,
    available_checkpoints,
    drop_stale_states,
    export_keras,
    numbers,
    read_best_record,
    remove_leftovers,
    state_path,
    write_best_record,
    write_state,
)
from tfpipe.train.claim import Claim, RunDirBusy
from tfpipe.train.committed import drop_unlisted_states, writing
from tfpipe.train.logs import RunLogs, StageProgress, val_summary
from tfpipe.train.plan import group_mask
from tfpipe.train.rundir import RunDir
from tfpipe.train.session import Session, open_session
from tfpipe.train.signals import Signals
from tfpipe.train.status import Heartbeat, busy_message, first_line, write_status
from tfpipe.train.step import TrainStep
from tfpipe.train.tracking import preflight, tracked_session

CheckpointHook = Callable[[dict], "str | None"]
"""Called with each sub-epoch's ``metrics.csv`` row; a non-empty string stops the run with that reason."""


class Trainer:
    """Runs the remaining stages of a session; owns the step, the checkpoint managers and the logs."""

    def __init__(
        self,
        session: Session,
        stop_after: int | None,
        verbose: int,
        on_checkpoint: CheckpointHook | None = None,
    ) -> None:
        import tensorflow as tf

        self.s, self.config, self.stop_after, self.verbose = session, session.config, stop_after, verbose
        self.on_checkpoint = on_checkpoint
        state = session.state
        self.best_metric = None if state is None else state.best_metric
        self.explained = False  # the note on what the headline R² is, once per session
        self.best_ckpt = None if state is None else state.best_checkpoint
        self.wall_before = 0.0 if state is None else state.wall_time_s
        self.masks = [group_mask(self._schema, g) for g in self.config.finetune.groups]
        self.mirror = CheckpointMirror(session.run_dir, session.write_dir)
        first = session.plan.stages[min(session.start_index, len(session.plan.stages) - 1)]
        self.step, self.manager, self.best_manager = self._build(self._precision_for(first.epoch))
        self.t_start = time.time()
        self.logs: RunLogs | None = None
        self._running: dict | None = None  # the last `running` status, which the heartbeat rewrites
        self._tf = tf

    @property
    def _schema(self):
        from tfpipe.data.schema import get_schema

        return get_schema(self.config.data.schema)

    def _precision_for(self, epoch: int) -> str:
        switch = self.config.float32_after_epoch
        return "float32" if switch is not None and epoch >= switch else self.s.precision

    def _build(self, precision: str):
        """(TrainStep, its CheckpointManager, its best-model CheckpointManager) under ``precision``."""
        import tensorflow as tf

        step = TrainStep(
            self.config, self.s.strategy, self.s.normalization_config, self.s.segments, precision
        )
        managers = [
            tf.train.CheckpointManager(step.checkpoint, self.mirror.local(sub), keep, checkpoint_name="ckpt")
            for sub, keep in ((CHECKPOINTS, self.config.keep_checkpoints), (BEST, BEST_KEEP))
        ]
        return step, *managers

    def restore(self) -> None:
        """Repair ``best.keras`` if a kill left it behind its state, then restore the resume checkpoint.

        Raises CorruptCheckpoint (naming the files) when the checkpoint's variables cannot be read.
        """
        s = self.s
        if s.start is None:
            return
        record = read_best_record(s.run_dir)
        if self.best_ckpt is not None and (record or {}).get("checkpoint") != f"ckpt-{self.best_ckpt}":
            try:
                self._restore(BEST, self.best_ckpt, partial=True)
                self._write_best(self.best_ckpt)
                print(f"[train] best.keras re-exported from best/ckpt-{self.best_ckpt}", file=sys.stderr)
            except CorruptCheckpoint as err:
                print(f"[train] warning: best.keras not repaired: {err}", file=sys.stderr)
        self._restore(CHECKPOINTS, s.start, partial=False)
        bad = self.step.normalization.mismatched_weights()
        if bad:
            raise TrainError(
                f"ckpt-{s.start} normalises with other statistics than {s.run_dir}/stats.json ({bad})"
            )

    def _restore(self, sub: str, n: int, partial: bool) -> None:
        tf = self._tf
        path = self.mirror.restore_path(sub, n)
        try:
            self.step.restore(path, partial)
        except (tf.errors.OpError, ValueError, IndexError, AssertionError, OSError) as err:
            where = f"{storage.join(self.s.run_dir, sub, f'ckpt-{n}')}.index / .data-*"
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise CorruptCheckpoint(
                n, f"{where}: cannot be restored ({type(err).__name__}: {first})"
            ) from None

    def _write_best(self, n: int) -> None:
        run = self.s.write_dir
        with writing(storage.join(run, BEST, f"ckpt-{n}"), n):
            self.best_manager.save(checkpoint_number=n, options=self.step.checkpoint_options)
            self.mirror.push(BEST, numbers(self.best_manager))
        value = float(self.best_metric) if self.best_metric is not None else 0.0
        # best.json first: once best.keras changes, best.json already disagrees with the committed
        # state, so readers (and the next start) know best.keras is not the committed best
        with writing(RunDir(run).best_record, n):
            write_best_record(run, n, self.config.select_metric, value)
        with writing(RunDir(run).best_keras, n):
            export_keras(self.step, RunDir(run).best_keras)

    def run(self) -> dict:
        """Run stages until the end or a stop; returns the summary."""
        s = self.s
        storage.makedirs(s.write_dir)
        dump_config(self.config, RunDir(s.write_dir).config)
        if s.start is None:
            storage.write_bytes(RunDir(s.write_dir).stats, s.stats_text.encode())
        self.logs = RunLogs(s.write_dir)
        index, done_here, longest, last_val, stopped = s.start_index, 0, 0.0, {}, "finished"
        self._status("running", index)
        try:
            with Signals() as signals, Heartbeat(self._heartbeat):
                while index < len(s.plan.stages):
                    stopped = self._stop_reason(done_here, longest)
                    if stopped:
                        break
                    t0 = time.time()
                    parts = self._train_stage(index, signals)
                    if signals.received:
                        stopped = f"signal {signals.received[0]}"
                        break
                    last_val = self._finish_stage(index, parts, t0)
                    index, done_here = index + 1, done_here + 1
                    longest = max(longest, time.time() - t0)
                    self._status("running", index)
                    if self.on_checkpoint is not None and (reason := self.on_checkpoint(last_val)):
                        stopped = reason
                        break
                else:
                    stopped = "finished"
        except KeyboardInterrupt:  # a second Ctrl-C
            self._status("stopped", index, reason="aborted")
            raise
        except BaseException as err:  # (a run refused before it started keeps its status as it was)
            self._status("failed", index, error=f"{type(err).__name__}: {first_line(err)}")
            raise
        finally:
            self.logs.close()
            self.mirror.close()
        stopped = stopped or "finished"
        finished = index >= len(s.plan.stages)
        self._status("finished" if finished else "stopped", index, reason=None if finished else stopped)
        return self._summary(index, done_here, last_val, stopped)

    def _status(self, state: str, index: int, **fields: object) -> None:
        """``RUN/status.json`` (the chief's run dir only)."""
        s = self.s
        if s.write_dir != s.run_dir:
            return
        record = dict(
            checkpoint=index, checkpoints=len(s.plan.stages), best_r2=self.best_metric,
            best_checkpoint=self.best_ckpt, step=self.step.step, **fields,
        )  # fmt: skip
        self._running = record if state == "running" else None
        write_status(s.run_dir, state, **record)

    def _heartbeat(self) -> None:
        """The heartbeat thread: the last ``running`` record again, with the time of now."""
        record = self._running
        if record is not None:
            write_status(self.s.run_dir, "running", **record)

    def _stop_reason(self, done_here: int, longest: float) -> str:
        budget = self.config.time_budget_s
        if budget is not None and done_here and time.time() - self.t_start + longest * 1.1 > budget:
            return "time budget"
        if self.stop_after is not None and done_here >= self.stop_after:
            return "stop-after-sub-epochs"
        return ""

    def _train_stage(self, index: int, signals: Signals) -> dict:

        from tfpipe.data.pipeline import diagnose_read_error, make_train_dataset

        tf, s, stage = self._tf, self.s, self.s.plan.stages[index]
        if self._precision_for(stage.epoch) != self.step.precision:
            print(
                f"[train] epoch {stage.epoch}: switching from {self.step.precision} to float32",
                file=sys.stderr,
            )
            old = self.step
            self.step, self.manager, self.best_manager = self._build(self._precision_for(stage.epoch))
            self.step.copy_from(old)
        data = self.config.data
        ds = make_train_dataset(
            s.sources, data, self.config.seed, stage.epoch, stage.sub_epoch, stage.data, s.replicas
        )
        iterator = iter(s.strategy.experimental_distribute_dataset(ds))
        mask = None if stage.group is None else self.masks[stage.group]
        progress = StageProgress(
            f"epoch {stage.epoch} sub-epoch {stage.sub_epoch}", stage.steps, self.verbose
        )
        done, parts = 0, {}
        while done < stage.steps and not signals.received:
            n = min(self.config.steps_per_execution, stage.steps - done)
            try:
                parts = self.step.run_steps(iterator, n, mask)
            except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as err:
                files = [p.path for pieces in stage.data.pieces for p in pieces]
                problem = diagnose_read_error(files) or err.message.splitlines()[0]
                raise TrainError(f"unreadable training data in epoch {stage.epoch} sub-epoch "
                                 f"{stage.sub_epoch}: {problem}") from None  # fmt: skip
            done += n
            if not np.isfinite(parts["total"]):
                raise TrainError(
                    f"the loss became {parts['total']} in epoch {stage.epoch} sub-epoch {stage.sub_epoch} "
                    f"(step {self.step.step}): a diverging model (try a lower optim.learning_rate) "
                    "or bad data"
                )
            progress.update(done, parts["total"], parts["main"], self.step.learning_rate)
        return parts

    def _finish_stage(self, index: int, parts: dict, t0: float) -> dict:
        from tfpipe.data.pipeline import make_validation_dataset
        from tfpipe.train.validation import validate

        s, stage = self.s, self.s.plan.stages[index]
        val_ds = make_validation_dataset(
            s.sources[0].val_paths, self.step.normalization.schema, s.plan.global_batch
        )
        val = validate(self.step, s.strategy.experimental_distribute_dataset(val_ds))
        n_ckpt, step = index + 1, self.step.step
        metric = val[self.config.select_metric]
        improved = self.best_metric is None or metric > self.best_metric
        if improved:
            self.best_metric, self.best_ckpt = metric, n_ckpt
        row = {
            "checkpoint": n_ckpt, "epoch": stage.epoch, "sub_epoch": stage.sub_epoch, "step": step,
            "finetune_group": "" if stage.group is None else self.config.finetune.groups[stage.group],
            "loss": parts["total"], "main": parts["main"], "lr": self.step.learning_rate, **val,
            "seconds": round(time.time() - t0, 2),
        }  # fmt: skip
        self.logs.write(row, step)
        self._commit(index, val, improved)
        print(f"[train] ckpt-{n_ckpt}: epoch {stage.epoch} sub-epoch {stage.sub_epoch} "
              f"loss {row['loss']:.4f} {val_summary(val)} in {row['seconds']} s",
              file=sys.stderr, flush=True)  # fmt: skip
        if not self.explained and val["val_r2"] < val["val_r2_train_var"] - 0.1:
            self.explained = True
            print(f"[train] note: {TRAIN_VAR_DOC}; here {val['val_near_constant']} target(s) have nearly "
                  "constant validation truth", file=sys.stderr, flush=True)  # fmt: skip
        return row

    def _commit(self, index: int, val: dict, improved: bool) -> None:
        """Best model first, then the checkpoint, then the state that names both (the commit)."""
        from tfpipe.config import config_to_dict

        s, n_ckpt = self.s, index + 1
        wall = round(self.wall_before + time.time() - self.t_start, 2)
        if improved:
            self._write_best(n_ckpt)
        with writing(storage.join(s.write_dir, CHECKPOINTS, f"ckpt-{n_ckpt}"), n_ckpt):
            self.manager.save(checkpoint_number=n_ckpt, options=self.step.checkpoint_options)
            keep = numbers(self.manager)
            self.mirror.push(CHECKPOINTS, keep)
        epoch, k = s.plan.after(index)
        state = RunState(
            n_ckpt, epoch, k, self.config.seed, self.step.step, s.model_hash, s.data_hash,
            s.normalization_config["stats_sha256"], s.replicas, s.plan.global_batch, s.plan_hash,
            s.segments, self.best_metric, self.best_ckpt, wall, val, config_to_dict(self.config),
            s.plan_steps,
        )  # fmt: skip
        with writing(state_path(s.write_dir, n_ckpt), n_ckpt):
            write_state(s.write_dir, state)
        drop_stale_states(s.write_dir, keep, self.best_ckpt)

    def _summary(self, index: int, done_here: int, last_val: dict, stopped: str) -> dict:
        s = self.s
        finished = index >= len(s.plan.stages)
        if finished:
            epoch, k = s.plan.after(len(s.plan.stages) - 1)
        else:
            epoch, k = s.plan.stages[index].epoch, s.plan.stages[index].sub_epoch
            print(f"[train] stopped ({stopped}) before epoch {epoch} sub-epoch {k}; to continue, run the "
                  f"same command again (it resumes from the latest checkpoint in {s.run_dir}) or add "
                  "--resume latest", file=sys.stderr)  # fmt: skip
        return {
            "run_dir": s.run_dir, "resumed_from": None if s.start is None else f"ckpt-{s.start}",
            "sub_epochs_run": done_here, "next": {"epoch": epoch, "sub_epoch": k}, "finished": finished,
            "stopped": "finished" if finished else stopped, "step": self.step.step,
            "val_r2_train_var": last_val.get("val_r2_train_var"), "val_r2": last_val.get("val_r2"),
            "best_r2": self.best_metric, "select_metric": self.config.select_metric,
            "best_checkpoint": None if self.best_ckpt is None else f"ckpt-{self.best_ckpt}",
            "strategy": s.kind, "replicas": s.replicas, "global_batch": s.plan.global_batch,
            "precision": self.step.precision, "seconds": round(time.time() - self.t_start, 2),
        }  # fmt: skip


def train(
    config: TrainConfig,
    resume: str | None = None,
    allow_config_change: bool = False,
    stop_after_sub_epochs: int | None = None,
    deterministic: bool = False,
    strategy: str = "auto",
    verbose: int = 1,
    allow_data_change: bool = False,
    allow_replica_change: bool = False,
    fallback: bool = True,
    on_checkpoint: CheckpointHook | None = None,
) -> dict:
    """Run (or continue) training; returns a summary dict. TrainError (a ValueError) on unusable input.

    Args:
        config: the experiment.
        resume: ``ckpt-N``, ``latest`` or None (the latest checkpoint of the run dir, if any).
        allow_config_change, allow_data_change, allow_replica_change: let a resume continue with a
            changed config (mutable keys only), other files or statistics, or another replica count.
        stop_after_sub_epochs: end this session after N sub-epochs.
        deterministic: deterministic ops and data order (bitwise-reproducible resumes).
        strategy: ``auto``, ``tpu``, ``mirrored``, ``multiworker``, ``default`` or ``cpu-mirrored``.
        verbose: 1 for a progress bar (on stderr), 0 for none.
        fallback: when the checkpoint to resume (the latest, not one named by ``resume``) cannot be
            read back, say so and resume from the newest older one that can.
        on_checkpoint: called with the ``metrics.csv`` row after every committed sub-epoch; a
            non-empty string it returns stops the session there, with that reason (e.g. a sweep's
            pruner: ``"pruned"``).

    With ``tracking.backend: mlflow`` the chief logs the session to MLflow
    (:mod:`tfpipe.train.tracking`); TrackingError (a ValueError) at once if it cannot.

    Keras' global dtype policy is restored afterwards.
    """
    import dataclasses

    import keras
    import tensorflow as tf

    preflight(config.tracking)  # a missing mlflow or an unreachable server: one line, before anything
    previous = keras.mixed_precision.global_policy()
    if deterministic:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, deterministic=True))
        keras.utils.set_random_seed(config.seed)
        tf.config.experimental.enable_op_determinism()
    allow = AllowedChanges(allow_config_change, allow_data_change, allow_replica_change)
    fallback = fallback and resume in (None, "latest")
    try:
        while True:
            try:
                return _session(
                    config, resume, allow, strategy, stop_after_sub_epochs, verbose, on_checkpoint
                )
            except CorruptCheckpoint as err:
                resume = _fallback_target(config, err) if fallback else None
                if resume is None:
                    raise
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _session(config, resume, allow, strategy, stop_after, verbose, on_checkpoint) -> dict:
    session = open_session(config, resume, allow, strategy)
    claim = None
    try:
        if session.write_dir == session.run_dir:  # the chief: take the run dir before touching it
            claim = Claim(session.run_dir)
            if busy := busy_message(session.run_dir):  # a session of a tfpipe without claims
                raise RunDirBusy(busy)
            for path in remove_leftovers(session.run_dir) + drop_unlisted_states(
                session.run_dir, session.state
            ):
                print(f"[train] removed {path} (left by a killed session)", file=sys.stderr)
        trainer = Trainer(session, stop_after, verbose, on_checkpoint)
        trainer.restore()
        if session.write_dir != session.run_dir:  # a non-chief worker: no status, no tracking
            return trainer.run()
        with tracked_session(session.config, session.run_dir, on_checkpoint) as hook:
            trainer.on_checkpoint = hook  # MLflow logging of each row, then the caller's hook
            return trainer.run()
    finally:
        session.close()
        if claim is not None:
            claim.release()


def _fallback_target(config: TrainConfig, err: CorruptCheckpoint) -> str | None:
    """``ckpt-M`` of the newest complete checkpoint older than the corrupt one, or None."""
    run_dir = config.resolved_run_dir
    older = [n for n in available_checkpoints(run_dir) if n < err.number]
    if not older:
        return None
    print(
        f"[train] {err}; resuming from ckpt-{older[-1]} instead (--no-fallback stops here)", file=sys.stderr
    )
    return f"ckpt-{older[-1]}"

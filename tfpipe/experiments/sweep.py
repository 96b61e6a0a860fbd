"""``tfpipe sweep``: an Optuna study whose trials are ordinary ``tfpipe train`` runs.

Each trial samples the search space (:mod:`tfpipe.experiments.space`) and trains in
``{runs_dir}/{study}/trial-NNNN`` as a child process (:mod:`tfpipe.experiments.trial`: a fresh
interpreter per trial, so no TensorFlow state, device memory or determinism setting carries over);
the child reports every sub-epoch's ``select_metric`` (step = checkpoint number), this process
reports it to the pruner and answers whether to stop there. The trial's value is the run's best
``select_metric`` (maximised). TensorFlow is never imported in the sweep process itself. Any
number of ``tfpipe sweep`` processes, on any machines, work on one study together
(:mod:`tfpipe.experiments.study`); the study ends when it holds ``trials`` COMPLETE + PRUNED trials.

A trial whose process died is failed and retried in its own run dir, so the run resumes from its
last checkpoint; a trial stopped by a signal or a time budget is queued the same way before the
sweep ends.

Trial user attributes: ``overrides`` (the ``key=value`` list ``tfpipe train --config CONFIG`` needs:
the command line's, then the sampled ones), ``config``, ``run_dir``, ``worker`` (``host:pid:number``),
``resumed_from`` (the train summary's: ``ckpt-N`` when the run continued a checkpoint) and ``error``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from tfpipe import storage
from tfpipe.experiments import check_name, require
from tfpipe.experiments.space import Param, check_space, load_space, override
from tfpipe.experiments.study import (
    COUNTED,
    SweepError,
    counted,
    fail_trial,
    frozen_trial,
    log,
    open_study,
    redact,
    retry_callback,
    retry_dead_trials,
    states,
    summarize,
    worker_id,
)
from tfpipe.storage.paths import is_remote
from tfpipe.train.rundir import RunDir
from tfpipe.train.status import first_line

MAX_FAILURES_IN_A_ROW = 3
"""The sweep stops (exit 2) after this many trials in a row failed with an error in this process."""
MAX_KILLED_RETRIES = 2
"""A trial whose trainer was killed by a signal (the OOM killer, a stray kill) is queued again, to
resume in its run dir, at most this many times."""


@dataclass
class SweepSpec:
    """What ``tfpipe sweep`` was asked to do."""

    config: str
    space: str
    trials: int
    study: str
    overrides: list[str] = field(default_factory=list)
    storage: str = "sweeps.journal"
    sampler: str = "tpe"
    pruner: str = "median"
    runs_dir: str = "runs/sweeps"
    seed: int | None = None
    heartbeat_interval: int = 60
    verbose: bool = True
    """Progress lines on stderr."""


class Interrupted(BaseException):
    """Training stopped before its end (a signal, a time budget): the trial is queued again.

    A BaseException, so that Optuna's ``optimize`` leaves the trial RUNNING and hands the stop on."""


class TrialFailed(Exception):
    """The trial's trainer failed (its error line, or how its process ended, with its log)."""


class _Surplus(Exception):
    """Another process started the study's last trial first (this one ends FAIL, marked surplus)."""


def study_dir(spec: SweepSpec) -> str:
    """``{runs_dir}/{study}``, absolute when local (other commands read the trials' run dirs elsewhere)."""
    runs_dir = spec.runs_dir if is_remote(spec.runs_dir) else os.path.abspath(spec.runs_dir)
    return storage.join(runs_dir, spec.study)


def trial_dir(spec: SweepSpec, number: int) -> str:
    """``{runs_dir}/{study}/trial-NNNN``."""
    return storage.join(study_dir(spec), f"trial-{number:04d}")


def original_number(trial: Any) -> int:
    """The number of the trial that ``trial`` retries (its first attempt), else its own."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen_trial(trial.study, trial.number))
    return trial.number if retried is None else int(retried)


class Objective:
    """Optuna's objective: sample, train the trial's run in a child process, report, return its best R²."""

    def __init__(self, spec: SweepSpec, space: dict[str, Param], parent_run_id: str | None = None) -> None:
        self.spec, self.space, self.parent_run_id = spec, space, parent_run_id
        self.current: int | None = None
        """The trial this process trains (kept when a stop interrupts it)."""
        self.failures = 0

    def optimize(self, study: Any) -> None:
        """Run trials until the study holds ``spec.trials``; an interrupted trial is queued again."""
        from optuna.study import MaxTrialsCallback

        limit = MaxTrialsCallback(self.spec.trials, states=states(*COUNTED))
        try:
            study.optimize(self, callbacks=[self.after_trial, limit], catch=(Exception,))
        except Interrupted as stop:
            run_dir = self.requeue(study)
            log(f"training stopped ({stop}); the trial continues in {run_dir} with the next tfpipe sweep "
                "of this study", self.spec.verbose)  # fmt: skip
        except BaseException:  # Ctrl-C twice, SIGTERM outside training: the trial is queued all the same
            self.requeue(study)
            raise

    def __call__(self, trial: Any) -> float:
        self.current = trial.number
        try:
            value = self._run(trial)
        except Exception:  # an error or a pruned trial: it has ended (a stop is a BaseException)
            self.current = None
            raise
        self.current = None
        return value

    def _run(self, trial: Any) -> float:
        import optuna

        from tfpipe.config import load_config

        spec = self.spec
        trial.set_user_attr("worker", worker_id(trial.number))
        if self._surplus(trial):
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"the study already holds {spec.trials} trials")
        values = {key: param.suggest(trial) for key, param in self.space.items()}
        number = original_number(trial)
        run_dir = trial_dir(spec, number)
        if number == trial.number and storage.exists(RunDir(run_dir).config):
            error = f"{run_dir} already holds a run (of an earlier study of this name?)"
            trial.set_user_attr("error", error)
            raise SweepError(error)
        overrides = [*spec.overrides, *(override(key, value) for key, value in values.items())]
        for key, value in (("config", spec.config), ("overrides", overrides), ("run_dir", run_dir)):
            trial.set_user_attr(key, value)
        log(f"trial {trial.number} in {run_dir}: {' '.join(overrides[len(spec.overrides) :])}", spec.verbose)
        try:
            config = load_config(spec.config, [*overrides, f"run_dir={run_dir}"])  # a bad value: one line now
        except ValueError as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
            raise
        summary = self._train(trial, [*overrides, f"run_dir={run_dir}"], run_dir, config.select_metric)
        trial.set_user_attr("resumed_from", summary["resumed_from"])
        if summary["stopped"] == "pruned":
            raise optuna.TrialPruned(f"pruned before {summary['next']}")
        if not summary["finished"]:
            raise Interrupted(summary["stopped"])
        if summary["best_r2"] is None:
            raise SweepError(f"{run_dir}: the run finished without a validation score")
        return float(summary["best_r2"])

    def _train(self, trial: Any, overrides: list[str], run_dir: str, metric: str) -> dict:
        """Train the trial in a child process; report each sub-epoch's ``metric`` (the config's
        ``select_metric``, what ``train`` picks its best checkpoint by) at step = checkpoint and prune.
        Its summary; Interrupted when a signal stopped it early, TrialFailed when it failed."""
        import signal

        from tfpipe.experiments.trial import Forward, TrialProcess, wait_for_orphan

        say = lambda text: log(text, self.spec.verbose)  # noqa: E731

        def report(checkpoint: int, value: float) -> bool:
            trial.report(value, checkpoint)
            prune = trial.should_prune()
            say(f"trial {trial.number} ckpt-{checkpoint}: {metric} {value:.4g}{'; pruned' if prune else ''}")
            return prune

        wait_for_orphan(run_dir, say)
        child = TrialProcess(self.spec.config, overrides, run_dir, metric, trial.number, self.parent_run_id)
        with Forward(child.attempt, say) as stop:
            summary, error, result = child.run(report)
        if len(stop.received) > 1:
            raise KeyboardInterrupt
        if summary is not None:
            return summary
        if stop.received:
            raise Interrupted(f"signal {signal.Signals(stop.received[0]).name}")
        error = error or result.detail()
        trial.set_user_attr("error", error)
        if result.returncode < 0:  # killed (not by us): worth another attempt, which resumes
            trial.set_user_attr("killed", int(trial.user_attrs.get("killed", 0)) + 1)
            trial.set_user_attr("killed_trial", trial.number)  # this attempt's, not an inherited count
        raise TrialFailed(f"{error} (log: {result.log})")

    def _surplus(self, trial: Any) -> bool:
        """Whether ``spec.trials`` trials with smaller numbers already ended or run (two processes
        asked for the last trial at the same moment: the later one steps back)."""
        earlier = trial.study.get_trials(deepcopy=False, states=states(*COUNTED))
        return sum(t.number < trial.number for t in earlier) >= self.spec.trials

    def after_trial(self, study: Any, trial: Any) -> None:
        """A progress line; stop after MAX_FAILURES_IN_A_ROW failed trials in a row."""
        spec, run_dir = self.spec, trial.user_attrs.get("run_dir")
        if trial.state.name == "FAIL" and trial.user_attrs.get("surplus"):
            log(f"trial {trial.number} not run: the study already holds {spec.trials}", spec.verbose)
            return
        killed = int(trial.user_attrs.get("killed", 0))
        killed_now = trial.user_attrs.get("killed_trial") == trial.number
        if trial.state.name == "FAIL" and killed_now and killed <= MAX_KILLED_RETRIES:
            retry_callback()(study, trial)
            log(f"trial {trial.number}'s trainer was {trial.user_attrs.get('error')}: queued again to resume "
                f"in {run_dir} (retry {killed} of {MAX_KILLED_RETRIES})", spec.verbose)  # fmt: skip
            return
        if trial.state.name == "FAIL":
            self.failures += 1
            error = trial.user_attrs.get("error", "an error")
            log(f"trial {trial.number} failed ({run_dir}): {error}", spec.verbose)
            if self.failures >= MAX_FAILURES_IN_A_ROW:
                raise SweepError(f"{self.failures} trials in a row failed; the last, trial {trial.number} "
                                 f"({run_dir}): {error}")  # fmt: skip
            return
        self.failures = 0
        value = "" if trial.value is None else f" R² {trial.value:.4f}"
        resumed = trial.user_attrs.get("resumed_from")
        log(f"trial {trial.number} {trial.state.name.lower()}{value} ({run_dir}"
            f"{f', resumed from {resumed}' if resumed else ''}); {counted(study)}/{spec.trials} trials "
            "done or running", spec.verbose)  # fmt: skip

    def requeue(self, study: Any) -> str | None:
        """Fail the interrupted trial (if still RUNNING) and queue its retry in the same run dir."""
        if self.current is None:
            return None
        number, self.current = self.current, None
        trial = frozen_trial(study, number)
        if trial.state.name == "RUNNING":
            if not fail_trial(study, number):
                return None
        elif trial.state.name != "FAIL":
            return None
        retry_callback()(study, trial)
        return trial.user_attrs.get("run_dir")


def _check_new_study(study: Any, spec: SweepSpec) -> None:
    """A study without trials must not find run dirs of an earlier study of its name (they would be
    resumed as its own trials)."""
    folder = study_dir(spec)
    if not study.get_trials(deepcopy=False) and storage.exists(folder) and storage.listdir(folder):
        raise SweepError(f"study {spec.study!r} is new in {redact(spec.storage)} but {folder} already "
                         "holds runs: use another --study or --runs-dir, or the storage that holds the "
                         "study")  # fmt: skip


def run_sweep(spec: SweepSpec) -> dict:
    """Run (or join, or resume) the study until it holds ``spec.trials`` trials; the JSON summary.

    The space and the config are checked before Optuna is imported.

    Raises:
        SweepError, SpaceError, ConfigError (ValueErrors): a bad space, config, storage or study, or
            MAX_FAILURES_IN_A_ROW failed trials in a row.
    """
    import warnings

    t0 = time.time()
    if spec.trials < 1:
        raise SweepError(f"--trials must be at least 1, got {spec.trials}")
    try:  # the study names the folder of its trials: RUNS_DIR/STUDY/trial-NNNN
        check_name(spec.study, "--study")
    except ValueError as err:
        raise SweepError(str(err)) from None
    if spec.heartbeat_interval < 1:
        raise SweepError(f"--heartbeat-interval must be at least 1 (seconds), got {spec.heartbeat_interval}")
    space = load_space(spec.space)
    check_space(space, spec.space, spec.config, spec.overrides)
    require("optuna", "tfpipe sweep")
    from optuna.exceptions import ExperimentalWarning, OptunaError

    from tfpipe.config import load_config
    from tfpipe.experiments.study_tracking import study_run

    with warnings.catch_warnings():  # heartbeats and retries are "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", ExperimentalWarning)
        study = open_study(
            spec.study, spec.storage, spec.sampler, spec.pruner, spec.seed, spec.heartbeat_interval
        )
        _check_new_study(study, spec)
        retry_dead_trials(study, spec.verbose)
        if counted(study) >= spec.trials:
            log(f"study {spec.study!r} already holds {spec.trials} finished or running trials", spec.verbose)
        else:
            with study_run(load_config(spec.config, spec.overrides).tracking, spec.study) as parent:
                try:
                    Objective(spec, space, parent).optimize(study)
                except OptunaError as err:  # e.g. StorageInternalError: a locked or lost database
                    raise SweepError(
                        f"{redact(spec.storage)}: {type(err).__name__}: {first_line(err)}"
                    ) from None
    summary = summarize(study, spec.storage, spec.trials)
    return {**summary, "study_dir": study_dir(spec), "seconds": round(time.time() - t0, 2)}

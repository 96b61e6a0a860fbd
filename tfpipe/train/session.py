"""What one training session starts from: strategy, data, statistics, plan and the checkpoint to resume.

:func:`open_session` does everything before the first step: it picks the strategy, resolves the data,
decides fresh start or resume (and checks that a resume changes nothing unasked), loads the run's
statistics (a fresh run copies them into ``RUN/stats.json``; a resumed run keeps using that copy) and
fixes the learning-rate phases. The loop (:mod:`tfpipe.train.loop`) then only runs stages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import sys
import tempfile
from dataclasses import dataclass

from tfpipe import storage
from tfpipe.config import TrainConfig, config_hash
from tfpipe.data.normalize import Normalization, stats_sha256
from tfpipe.data.pipeline import Source, data_fingerprint, resolve_sources
from tfpipe.data.stats import Stats, StatsError
from tfpipe.distribute import choose_strategy, resolve_precision
from tfpipe.train.checkpoints import (
    AllowedChanges,
    ResumeFacts,
    RunState,
    check_resume,
    is_chief,
    read_state,
    resume_target,
)
from tfpipe.train.plan import TrainPlan, make_plan, peak_ratio, phase_at, phase_segments, plan_hash, reanchor
from tfpipe.train.rundir import RunDir


@dataclass
class Session:
    """Everything a training session needs before its first step."""

    config: TrainConfig
    strategy: object
    kind: str
    precision: str
    run_dir: str
    write_dir: str
    """``run_dir``, or a scratch dir on a non-chief multi-worker task (removed at the end)."""
    sources: list[Source]
    stats: Stats
    stats_text: str
    normalization_config: dict
    plan: TrainPlan
    plan_steps: list[int]
    """Steps of every stage as actually run (recorded ones for done stages after a re-plan)."""
    segments: list[dict]
    plan_hash: str
    model_hash: str
    data_hash: str
    start: int | None
    state: RunState | None
    notes: list[str]

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def start_index(self) -> int:
        if self.state is None:
            return 0
        return self.plan.index_of(self.state.epoch, self.state.sub_epoch)

    def close(self) -> None:
        if self.write_dir != self.run_dir:
            shutil.rmtree(self.write_dir, ignore_errors=True)


def _read_stats(path: str, what: str) -> tuple[Stats, str]:
    if not storage.exists(path):
        raise StatsError(f"{path}: {what} not found (run python -m data_prep.stats)")
    text = storage.read_bytes(path).decode()
    return Stats.from_json(text, path), text


def _run_stats(config: TrainConfig, run_dir: str, resuming: bool) -> tuple[Stats, str, str | None]:
    """(statistics the model uses, their JSON, sha256 of the config's statistics file or None)."""
    schema = config.data.schema
    configured = config.data.stats_path
    config_sha = None
    if storage.exists(configured):
        config_sha = stats_sha256(_read_stats(configured, "statistics")[0])
    if resuming:
        stats, text = _read_stats(RunDir(run_dir).stats, "the run's copy of its statistics")
    else:
        stats, text = _read_stats(configured, "statistics file")
    if stats.schema != schema:
        raise StatsError(
            f"{configured}: statistics are for schema {stats.schema!r}, the config says {schema!r}"
        )
    return stats, text, config_sha


def _with_demo_data(config: TrainConfig) -> TrainConfig:
    """Fill an empty data path with the built-in demo data (prepared once in the cache)."""
    if config.data.sources[0].path:
        return config
    from tfpipe.demo_data import prepare_demo_data

    path = prepare_demo_data()
    sources = [dataclasses.replace(config.data.sources[0], path=path), *config.data.sources[1:]]
    return dataclasses.replace(config, data=dataclasses.replace(config.data, sources=sources))


def _schedule(config: TrainConfig, plan: TrainPlan, state: RunState | None, new_plan_hash: str):
    """(steps per stage as run, learning-rate phases) for a fresh start or a resume."""
    if state is None:
        return plan.steps, [s.to_dict() for s in plan.segments]
    if new_plan_hash == state.plan_hash:
        return state.plan_steps, state.schedule
    from tfpipe.schedule import Segment

    done = plan.index_of(state.epoch, state.sub_epoch)
    steps = state.plan_steps[:done] + plan.steps[done:]
    groups = [s.group for s in plan.stages]
    fresh = phase_segments(config, groups, steps)
    old = [Segment(**s) for s in state.schedule]
    old_config = _config_of(state)
    ratio = peak_ratio(old_config, config, phase_at(fresh, state.step)) if old_config is not None else 1.0
    segments = reanchor(old, fresh, state.step, ratio)
    rate = segments[phase_at(segments, state.step)].start_lr
    print(f"[train] the plan changed: {sum(steps[done:])} steps remain; the learning rate continues from "
          f"{rate:.4g} at step {state.step}", file=sys.stderr)  # fmt: skip
    return steps, [s.to_dict() for s in segments]


def _config_of(state: RunState) -> TrainConfig | None:
    from tfpipe.config import ConfigError, config_from_dict

    try:
        return config_from_dict(state.config, "the checkpoint's state")
    except ConfigError:
        return None


def keep_run_select_metric(config: TrainConfig, state: RunState) -> TrainConfig:
    """``config`` with the run's own ``select_metric`` when the command leaves it at the default.

    Runs started before ``val_r2_train_var`` became the default pick their best checkpoint by
    ``val_r2``; re-running their command must continue them as they started, not refuse.
    """
    saved = state.config.get("select_metric", "val_r2")
    default = TrainConfig.__dataclass_fields__["select_metric"].default
    if config.select_metric != default or saved == default:
        return config
    print(f"[train] this run picks its best checkpoint by {saved}, as when it started (the default is now "
          f"{default}; a new run dir can use it)", file=sys.stderr)  # fmt: skip
    return dataclasses.replace(config, select_metric=saved)


def open_session(config: TrainConfig, resume: str | None, allow: AllowedChanges, prefer: str) -> Session:
    """Strategy, data, statistics, plan and resume point of a session (ValueErrors on bad input)."""
    from tfpipe.train.preflight import check_validation_data

    check_validation_data(config)  # (the command line checked it already; a library caller may not have)
    config = _with_demo_data(config)
    run_dir = config.resolved_run_dir
    strategy, kind = choose_strategy(prefer)
    precision = resolve_precision(config.precision, kind)
    write_dir = run_dir if is_chief(strategy) else tempfile.mkdtemp(prefix="tfpipe-worker-")
    sources = resolve_sources(config.data)
    start = resume_target(run_dir, resume)
    state = read_state(run_dir, start) if start is not None else None
    stats, stats_text, config_stats_sha = _run_stats(config, run_dir, state is not None)
    data = config.data
    layer = Normalization.for_data(data, stats)
    replicas = strategy.num_replicas_in_sync
    plan = make_plan(config, sources, replicas)
    model_hash = hashlib.sha256((config_hash(config, "model") + layer.stats_sha256).encode()).hexdigest()
    data_hash = data_fingerprint(sources)
    notes: list[str] = []
    if state is not None:
        config = keep_run_select_metric(config, state)
        facts = ResumeFacts(config, model_hash, data_hash, config_stats_sha or state.stats_sha256, replicas,
                            plan.global_batch)  # fmt: skip
        notes = check_resume(state, facts, allow, start)
        if config_stats_sha is None:
            notes.append(f"{data.stats_path} not found: the run keeps its own statistics")
        for note in notes:
            print(f"[train] resuming with a change: {note}", file=sys.stderr)
    new_hash = plan_hash(plan)
    plan_steps, segments = _schedule(config, plan, state, new_hash)
    return Session(
        config, strategy, kind, precision, run_dir, write_dir, sources, stats, stats_text, layer.get_config(),
        plan, plan_steps, segments, new_hash, model_hash, data_hash, start, state, notes,
    )  # fmt: skip

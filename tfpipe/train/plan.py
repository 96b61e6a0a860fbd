"""The training plan: every sub-epoch in order with its steps and source mix, and the learning-rate phases.

Pure functions of the config, the resolved sources and the replica count, so a resumed run rebuilds
the plan it was following; :func:`plan_hash` tells when it would not.

Stages: the main epochs (``epochs x sub_epochs``), then ``finetune.sub_epochs_per_group`` stages
per fine-tune group. The learning rate (:class:`tfpipe.schedule.SegmentedSchedule`) has one phase
for the main epochs (linear warm-up, half-cosine to ``min_lr_ratio``) and one per fine-tune group
(its own warm-up and half-cosine from ``finetune.learning_rate``). A resume whose plan changed (more
epochs, another replica count) re-anchors the current phase at the resume step with
:func:`reanchor`, so the rate continues from where it was instead of jumping to the new curve.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from tfpipe.config import TrainConfig
from tfpipe.data.pipeline import Source
from tfpipe.data.sampling import SubEpochPlan, plan_stage
from tfpipe.schedule import Segment
from tfpipe.train.checkpoints import TrainError


class PlanError(ValueError):
    """A configuration the data cannot train (a sub-epoch without one whole global batch)."""


@dataclass(frozen=True)
class Stage:
    """One sub-epoch: its place in the run and its data plan."""

    epoch: int
    sub_epoch: int
    group: int | None
    """Index of the fine-tune group, None in the main epochs."""
    data: SubEpochPlan

    @property
    def steps(self) -> int:
        return self.data.steps


@dataclass
class TrainPlan:
    """Every stage of a run, the batch layout and the learning-rate phases."""

    stages: list[Stage]
    replicas: int
    global_batch: int
    segments: list[Segment]

    @property
    def steps(self) -> list[int]:
        return [s.steps for s in self.stages]

    @property
    def total_steps(self) -> int:
        return sum(self.steps)

    def index_of(self, epoch: int, sub_epoch: int) -> int:
        """Index of stage (epoch, sub_epoch); ``len(stages)`` past the end."""
        for i, s in enumerate(self.stages):
            if (s.epoch, s.sub_epoch) == (epoch, sub_epoch):
                return i
        return len(self.stages)

    def after(self, index: int) -> tuple[int, int]:
        """(epoch, sub_epoch) that follows stage ``index`` (one past the last epoch at the end)."""
        if index + 1 < len(self.stages):
            nxt = self.stages[index + 1]
            return nxt.epoch, nxt.sub_epoch
        return self.stages[-1].epoch + 1, 0


def _warmup(spec: int | float, steps: int) -> int:
    """Warm-up steps: a count, or a fraction (< 1) of ``steps``; never beyond ``steps``."""
    return min(int(round(spec * steps)) if 0 < spec < 1 else int(spec), steps)


def _stage(config: TrainConfig, sources: list[Source], replicas: int, epoch: int, k: int, group) -> Stage:
    data = config.data
    plan = plan_stage(
        {s.name: s.train_files for s in sources}, [s.weight for s in sources], data.batch_size,
        replicas, config.seed, epoch, k, data.sub_epochs,
    )  # fmt: skip
    if plan.steps < 1:
        samples = sum(p.samples for p in plan.pieces[0])
        raise PlanError(
            f"sub-epoch {k} of epoch {epoch} has {samples} samples of "
            f"{sources[0].name!r}, less than one global batch of {replicas * data.batch_size} "
            "(batch_size x replicas): use a smaller batch_size or fewer sub_epochs"
        )
    return Stage(epoch, k, group, plan)


def phase_segments(config: TrainConfig, groups: list[int | None], steps: list[int]) -> list[Segment]:
    """The fresh learning-rate phases of stages (their fine-tune ``groups`` and ``steps``): the main
    epochs, then one per fine-tune group."""
    optim, floor_ratio = config.optim, config.optim.min_lr_ratio
    main = sum(n for g, n in zip(groups, steps, strict=True) if g is None)
    warm = _warmup(optim.warmup_steps, main)
    segments = [Segment(0, main, 0.0 if warm else optim.learning_rate, optim.learning_rate, warm,
                        optim.learning_rate * floor_ratio)]  # fmt: skip
    start = main
    peak = config.finetune.learning_rate or 0.1 * optim.learning_rate
    for g in range(len(config.finetune.groups)):
        n = sum(k for h, k in zip(groups, steps, strict=True) if h == g)
        warm = _warmup(config.finetune.warmup_steps, n)
        segments.append(
            Segment(start, start + n, 0.0 if warm else peak, peak, start + warm, peak * floor_ratio)
        )
        start += n
    return segments


def make_plan(config: TrainConfig, sources: list[Source], replicas: int) -> TrainPlan:
    """Stages, batch layout and fresh learning-rate phases of a run on ``replicas`` replicas."""
    main = [(e, k, None) for e in range(config.epochs) for k in range(config.data.sub_epochs)]
    groups = [
        (config.epochs + g, k, g)
        for g in range(len(config.finetune.groups))
        for k in range(config.finetune.sub_epochs_per_group)
    ]
    stages = [_stage(config, sources, replicas, e, k, g) for e, k, g in main + groups]
    segments = phase_segments(config, [s.group for s in stages], [s.steps for s in stages])
    return TrainPlan(stages, replicas, replicas * config.data.batch_size, segments)


def plan_hash(plan: TrainPlan) -> str:
    """sha256 of what fixes the steps and the fresh learning-rate curve of a plan."""
    payload = {
        "steps": plan.steps,
        "mix": [s.data.counts.sum(axis=1).tolist() for s in plan.stages],
        "replicas": plan.replicas,
        "global_batch": plan.global_batch,
        "segments": [s.to_dict() for s in plan.segments],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def schedule_value(segments: list[Segment], step: int) -> float:
    """The rate of ``segments`` at ``step`` (the last segment starting at or before it)."""
    current = [s for s in segments if s.start <= step]
    return current[-1].value(step) if current else 0.0


def peak_ratio(old: TrainConfig, new: TrainConfig, phase: int) -> float:
    """New over old peak rate of phase ``phase`` (0: the main epochs, g + 1: fine-tune group g)."""

    def peak(c: TrainConfig) -> float:
        return (
            c.optim.learning_rate if phase == 0 else c.finetune.learning_rate or 0.1 * c.optim.learning_rate
        )

    return peak(new) / peak(old)


def phase_at(segments: list[Segment], step: int) -> int:
    """Index of the phase that contains ``step``."""
    return max(i for i, s in enumerate(segments) if s.start <= step)


def reanchor(old: list[Segment], fresh: list[Segment], step: int, ratio: float = 1.0) -> list[Segment]:
    """``fresh`` phases with the one containing ``step`` restarted there from the old curve's rate.

    Continuity: the new curve has the old one's rate at ``step`` (times ``ratio``, the new over the
    old peak of the phase: a changed ``learning_rate`` is the one deliberate jump), then warms
    up to the new peak (if still in warm-up) and decays to the new floor at the new end of the
    phase. A resume exactly at the start of a phase (a fine-tune group) takes that phase as it is.
    """
    j = phase_at(fresh, step)
    if step == fresh[j].start or step >= fresh[j].end:
        return fresh
    rate = schedule_value(old, step) * ratio
    seg = fresh[j]
    if step < seg.warmup_end:
        anchored = Segment(step, seg.end, rate, seg.peak, seg.warmup_end, seg.floor)
    else:
        anchored = Segment(step, seg.end, rate, rate, step, seg.floor)
    return fresh[:j] + [anchored] + fresh[j + 1 :]


def group_mask(schema, group: str) -> np.ndarray:
    """``[T]`` 0/1 mask of a fine-tune group: target variables joined by ``+`` (``cam_out``: all scalars)."""
    names: list[str] = []
    for part in (p.strip() for p in group.split("+")):
        if part == "cam_out":
            names += list(schema.target_scalars)
        elif part in schema.targets:
            names.append(part)
        else:
            raise TrainError(f"finetune group {group!r}: {part!r} is not a target of schema {schema.name!r}")
    mask = np.zeros(schema.n_targets, np.float32)
    for name in names:
        mask[schema.target_slice(name)] = 1.0
    return mask

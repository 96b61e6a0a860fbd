"""Learning-rate schedule and optimizer.

The schedule is a pure function of the optimizer's global step (``optimizer.iterations``), which
lives in every checkpoint: a resumed run continues the schedule exactly where it stopped, with no
offsets to edit by hand.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import keras
import tensorflow as tf

from tfpipe.config import OptimConfig


@keras.saving.register_keras_serializable(package="tfpipe")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then half-cosine to ``min_lr_ratio * peak``.

    The rate reaches its floor at ``total_steps`` and stays there afterwards.

    Args:
        peak: learning rate at the end of warm-up.
        total_steps: step at which the decay ends.
        warmup_steps: steps of linear warm-up (0: start at ``peak``).
        min_lr_ratio: final rate as a fraction of ``peak``.

    Example:
        >>> lr = WarmupCosine(1e-3, total_steps=1000, warmup_steps=100)
        >>> round(float(lr(50)), 6)  # half-way through warm-up
        0.0005
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0):
        if peak <= 0 or total_steps < 1 or not 0 <= warmup_steps <= total_steps or not 0 <= min_lr_ratio <= 1:
            raise ValueError(
                f"need peak > 0, 0 <= warmup_steps <= total_steps >= 1, 0 <= min_lr_ratio <= 1; got "
                f"peak={peak}, warmup_steps={warmup_steps}, total_steps={total_steps}, "
                f"min_lr_ratio={min_lr_ratio}"
            )
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step: tf.Tensor | int) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        warmup = float(self.warmup_steps)
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        floor = self.peak * self.min_lr_ratio
        progress = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
        cosine = floor + (self.peak - floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        if self.warmup_steps == 0:
            return cosine
        return tf.where(step < warmup, self.peak * step / warmup, cosine)

    def get_config(self) -> dict:
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "min_lr_ratio": self.min_lr_ratio,
        }


@dataclass(frozen=True)
class Segment:
    """One phase of the learning rate over global steps ``[start, end)``.

    Linear from ``start_lr`` at ``start`` to ``peak`` at ``warmup_end``, then a half-cosine from
    ``peak`` down to ``floor`` at ``end`` (and ``floor`` after it).
    """

    start: int
    end: int
    start_lr: float
    peak: float
    warmup_end: int
    floor: float

    def __post_init__(self) -> None:
        if not self.start <= self.warmup_end <= self.end or self.end <= self.start:
            raise ValueError(f"need start <= warmup_end <= end and start < end, got {self}")

    def value(self, step: int) -> float:
        """The rate at ``step`` (Python float; what :class:`SegmentedSchedule` computes in TF)."""
        if step < self.warmup_end:
            return self.start_lr + (self.peak - self.start_lr) * (step - self.start) / (
                self.warmup_end - self.start
            )
        progress = min(max((step - self.warmup_end) / max(self.end - self.warmup_end, 1), 0.0), 1.0)
        return self.floor + (self.peak - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@keras.saving.register_keras_serializable(package="tfpipe")
class SegmentedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate as consecutive :class:`Segment` phases of the global step.

    The main epochs are one warm-up + half-cosine; each fine-tune group adds its own; a resume that
    changes the plan re-anchors the current phase at the resume step (see :mod:`tfpipe.train.plan`).
    Before the first segment the rate is 0; after the last, its floor.

    Args:
        segments: dicts of :class:`Segment` fields, ordered by ``start``.
    """

    def __init__(self, segments: list[dict]) -> None:
        if not segments:
            raise ValueError("a schedule needs at least one segment")
        self.segments = [Segment(**dict(s)) for s in segments]
        starts = [s.start for s in self.segments]
        if starts != sorted(starts):
            raise ValueError(f"segments must be ordered by start, got starts {starts}")

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        value = tf.constant(0.0, tf.float32)
        for seg in self.segments:
            ramp = seg.start_lr + (seg.peak - seg.start_lr) * (step - seg.start) / float(
                max(seg.warmup_end - seg.start, 1)
            )
            progress = tf.clip_by_value(
                (step - seg.warmup_end) / float(max(seg.end - seg.warmup_end, 1)), 0.0, 1.0
            )
            cosine = seg.floor + (seg.peak - seg.floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))
            here = tf.where(step < seg.warmup_end, ramp, cosine)
            value = tf.where(step >= seg.start, here, value)
        return value

    def get_config(self) -> dict:
        return {"segments": [s.to_dict() for s in self.segments]}


def make_schedule(optim: OptimConfig, total_steps: int) -> WarmupCosine:
    """The schedule of ``optim`` over ``total_steps`` (a fractional warm-up is taken of them)."""
    warmup = min(optim.resolved_warmup_steps(total_steps), total_steps)
    return WarmupCosine(optim.learning_rate, total_steps, warmup, optim.min_lr_ratio)


def clip_factors(norms: tf.Tensor, clipnorm: float | None, global_clipnorm: float | None) -> tf.Tensor:
    """Factors that clip gradients whose norms are ``norms`` (one per weight): each to ``clipnorm``,
    then all together to ``global_clipnorm`` (``tf.clip_by_norm``, then ``tf.clip_by_global_norm``).

    As factors they also clip a sum from its parts: :class:`tfpipe.train.step.TrainStep` scales each
    replica's gradients by the factors of their sum, and the optimizer sums them. An infinite norm
    gives a factor of 0: an infinite gradient element becomes NaN, still non-finite, so the loss
    scale skips that step as it would without clipping.

    Example:
        >>> [round(float(f), 3) for f in clip_factors(tf.constant([3.0, 4.0]), None, 1.0)]
        [0.2, 0.2]
    """
    factors = tf.ones_like(norms)
    if clipnorm is not None:
        factors = clipnorm / tf.maximum(norms, clipnorm)
    if global_clipnorm is not None:
        total = tf.norm(norms * factors)
        factors = factors * (global_clipnorm / tf.maximum(total, global_clipnorm))
    return factors


def make_optimizer(
    optim: OptimConfig, schedule: int | keras.optimizers.schedules.LearningRateSchedule
) -> keras.optimizers.AdamW:
    """AdamW with the schedule, weight decay (default 4 x peak LR) and optional EMA.

    Args:
        optim: the optimizer config.
        schedule: a learning-rate schedule, or total steps for :func:`make_schedule`.

    No clipping: Keras would clip each replica's share before summing them, so the train step clips
    the summed gradient itself (:func:`clip_factors`). Build it inside the strategy scope. Under
    ``mixed_float16`` wrap it in ``keras.optimizers.LossScaleOptimizer`` (bfloat16 needs no loss
    scaling).
    """
    if isinstance(schedule, int):
        schedule = make_schedule(optim, schedule)
    return keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=optim.resolved_weight_decay,
        beta_1=optim.beta_1,
        beta_2=optim.beta_2,
        use_ema=optim.use_ema,
        ema_momentum=optim.ema_momentum,
    )

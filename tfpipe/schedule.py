"""Learning-rate schedule and optimizer.

The schedule is a pure function of the optimizer's global step (``optimizer.iterations``), which
lives in every checkpoint: a resumed run continues the schedule exactly where it stopped, with no
offsets to edit by hand.
"""

from __future__ import annotations

import math

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


def make_schedule(optim: OptimConfig, total_steps: int) -> WarmupCosine:
    """The schedule of ``optim`` over ``total_steps`` (a fractional warm-up is taken of them)."""
    warmup = min(optim.resolved_warmup_steps(total_steps), total_steps)
    return WarmupCosine(optim.learning_rate, total_steps, warmup, optim.min_lr_ratio)


def make_optimizer(optim: OptimConfig, total_steps: int) -> keras.optimizers.AdamW:
    """AdamW with :class:`WarmupCosine`, weight decay (default 4 x peak LR), clipnorm and optional EMA.

    Build it inside the strategy scope. Under ``mixed_float16`` wrap it in
    ``keras.optimizers.LossScaleOptimizer`` (bfloat16 needs no loss scaling).
    """
    return keras.optimizers.AdamW(
        learning_rate=make_schedule(optim, total_steps),
        weight_decay=optim.resolved_weight_decay,
        beta_1=optim.beta_1,
        beta_2=optim.beta_2,
        clipnorm=optim.clipnorm,
        use_ema=optim.use_ema,
        ema_momentum=optim.ema_momentum,
    )

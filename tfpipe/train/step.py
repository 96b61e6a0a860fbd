"""The train step: model, optimizer and the compiled train and validation steps. No file access of its
own: the loop names the checkpoint to restore and saves :attr:`TrainStep.checkpoint` itself.

One :class:`TrainStep` per precision (a switch to float32 mid-run builds a second one and copies the
weights and optimizer slots over). Under a ``tf.distribute`` strategy:

- training: ``strategy.run`` of the per-replica step. The forward and backward pass (the targets
  normalised by the model's own :class:`tfpipe.data.normalize.Normalization`, on the device) is compiled
  with XLA. With clipping on, the gradients are summed over the replicas (one all-reduce) for their
  norms, each replica's share is scaled by the factors that clip the sum
  (:func:`tfpipe.schedule.clip_factors`: ``optim.clipnorm`` per weight, then ``optim.global_clipnorm``
  over all weights), and the optimizer sums the shares (Keras's own all-reduce) and applies them: the
  clip bounds the summed gradient whatever the replica count. ``steps_per_execution`` steps run per
  call.
- checkpoint (:attr:`TrainStep.checkpoint`): the model, the inner AdamW (slots, EMA, step) and, under
  ``mixed_float16``, the loss scale and its growth counter (``loss_scale/``), so that a resume goes on
  with the scale it stopped at instead of 2^15.
- validation: ``strategy.run`` of the forward pass on a distributed dataset of padded batches; the
  normalised-scale error is summed with ``strategy.reduce`` and the predictions are gathered to the
  host for the float64 physical-scale R².
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

from tfpipe.config import TrainConfig
from tfpipe.data.normalize import Normalization
from tfpipe.distribute import checkpoint_options
from tfpipe.evaluate.export import exact_targets
from tfpipe.losses import total_loss
from tfpipe.models import build_normalized_model
from tfpipe.schedule import SegmentedSchedule, clip_factors, make_optimizer

LOSS_PARTS = ("main", "confidence", "aux", "level_diff", "total")


class TrainStep:
    """Model, optimizer and compiled steps under one strategy and one precision.

    Args:
        config: the run's config.
        strategy: where the replicas are.
        normalization_config: ``Normalization.get_config()`` of the run's statistics (each
            TrainStep builds its own layer from it).
        segments: learning-rate phases (``SegmentedSchedule`` dicts).
        precision: Keras dtype policy name.
    """

    def __init__(
        self, config: TrainConfig, strategy, normalization_config: dict, segments: list[dict], precision: str
    ) -> None:
        self.config, self.strategy, self.precision = config, strategy, precision
        self.replicas = strategy.num_replicas_in_sync
        keras.mixed_precision.set_global_policy(precision)
        with strategy.scope():
            keras.utils.set_random_seed(config.seed)
            self.normalization = Normalization.from_config(normalization_config)
            self.model = build_normalized_model(config.model, self.normalization)
            self.inner = make_optimizer(config.optim, SegmentedSchedule(segments))
            self.loss_scaled = precision == "mixed_float16"
            self.optimizer = (
                keras.optimizers.LossScaleOptimizer(self.inner) if self.loss_scaled else self.inner
            )
            self.optimizer.build(self.model.trainable_variables)
        self._core = tf.train.Checkpoint(model=self.model, optimizer=self.inner)
        parts, self._loss_scale = {"model": self.model, "optimizer": self.inner}, None
        if self.loss_scaled:
            lso = self.optimizer
            parts["loss_scale"] = tf.train.Checkpoint(scale=lso.dynamic_scale, counter=lso.step_counter)
            self._loss_scale = tf.train.Checkpoint(loss_scale=parts["loss_scale"])
        self.checkpoint = tf.train.Checkpoint(**parts)
        """What ``ckpt-N`` holds (see the module's docstring)."""
        self.checkpoint_options = checkpoint_options(strategy)
        """For every save and restore: file operations in this process, also on a TPU node."""
        self.loss_config = dataclasses.replace(
            config.loss, n_profiles=len(self.normalization.schema.target_profiles)
        )
        self.target_mask = tf.constant(self.normalization.target_mask())
        self._gradients = tf.function(self._replica_gradients, jit_compile=config.jit_compile)
        self._forward = tf.function(self._replica_forward, jit_compile=config.jit_compile)
        self._train = tf.function(self._run_steps)
        self._validate = tf.function(self._validation_step)

    # -- training

    def _replica_gradients(self, x, y, aux_t, aux_m, mask):
        with tf.GradientTape() as tape:
            out = self.model(x, training=True)
            y_norm = self.normalization.normalize_targets(y)
            loss, parts = total_loss(out, y_norm, mask, aux_t, aux_m, self.loss_config)
            scaled = loss / self.replicas
            if self.loss_scaled:
                scaled = self.optimizer.scale_loss(scaled)
        return tape.gradient(scaled, self.model.trainable_variables), parts

    def _replica_step(self, x, y, aux_t, aux_m, mask):
        grads, parts = self._gradients(x, y, aux_t, aux_m, mask)
        grads = self._clipped(grads)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        return parts

    def _clipped(self, grads: list) -> list:
        """This replica's gradients times the factors that clip their sum over the replicas.

        The optimizer sums the replicas' gradients itself (Keras all-reduces in ``apply_gradients``
        and would clip before that), so the factors come from a sum of our own: one more all-reduce
        per step while clipping is on.
        """
        optim = self.config.optim
        if optim.clipnorm is None and optim.global_clipnorm is None:
            return grads
        present = [g for g in grads if g is not None]  # (a weight the loss does not reach has none)
        total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, present)
        norms = tf.stack([tf.norm(tf.cast(g, tf.float32)) for g in total])
        if self.loss_scaled:  # the gradients of the scaled loss: clip what will be applied
            norms = norms / tf.cast(self.optimizer.dynamic_scale, tf.float32)
        factors = iter(tf.unstack(clip_factors(norms, optim.clipnorm, optim.global_clipnorm)))
        return [None if g is None else g * tf.cast(next(factors), g.dtype) for g in grads]

    def _run_steps(self, iterator, n, mask):
        total = {k: tf.constant(0.0) for k in LOSS_PARTS}
        for _ in tf.range(n):
            parts = self.strategy.run(self._replica_step, args=(*next(iterator), mask))
            total = {k: total[k] + self.strategy.reduce("MEAN", parts[k], axis=None) for k in total}
        return {k: v / tf.cast(n, tf.float32) for k, v in total.items()}

    def run_steps(self, iterator: Iterator, n: int, group_mask: np.ndarray | None = None) -> dict[str, float]:
        """Run ``n`` train steps from a distributed iterator; the mean loss parts.

        ``group_mask`` (``[T]``, fine-tuning) restricts the loss to a target group.
        """
        mask = self.target_mask if group_mask is None else self.target_mask * tf.constant(group_mask)
        parts = self._train(iterator, tf.constant(n), mask)
        return {k: float(v) for k, v in parts.items()}

    # -- validation

    def _replica_forward(self, x):
        return self.model(x, training=False)["pred"]

    def _replica_validation(self, batch: dict) -> dict:
        pred = self._forward(batch["inputs"])
        y_norm = self.normalization.normalize_targets(batch["targets"])
        weight = self.target_mask[None, :] * batch["valid"][:, None]
        return {
            "pred": pred, "targets": batch["targets"], "x64": batch["x64"], "y64": batch["y64"],
            "valid": batch["valid"],
            "abs_error": tf.reduce_sum(tf.abs(pred - y_norm) * weight), "weight": tf.reduce_sum(weight),
        }  # fmt: skip

    def _validation_step(self, dist_batch) -> dict:
        per_replica = self.strategy.run(self._replica_validation, args=(dist_batch,))
        keys = ("pred", "targets", "x64", "y64", "valid")
        out = {k: self.strategy.gather(per_replica[k], axis=0) for k in keys}
        for k in ("abs_error", "weight"):
            out[k] = self.strategy.reduce("SUM", per_replica[k], axis=None)
        return out

    def validation_batch(self, dist_batch) -> dict[str, np.ndarray]:
        """One distributed validation batch → host arrays: the real rows of ``pred`` (normalised),
        ``targets`` (float64, exact where the records have float64 copies), ``x64`` (float64) and the
        summed normalised ``abs_error`` and its ``weight``."""
        out = self._validate(dist_batch)
        valid = out["valid"].numpy() > 0
        x64, y64 = (out[k].numpy().view(np.float64).reshape(len(valid), -1)[valid] for k in ("x64", "y64"))
        targets = exact_targets(out["targets"].numpy()[valid], y64, self.normalization.schema)
        return {
            "pred": out["pred"].numpy()[valid], "targets": targets, "x64": x64,
            "abs_error": float(out["abs_error"]), "weight": float(out["weight"]),
        }  # fmt: skip

    # -- weights

    def restore(self, path: str, partial: bool) -> None:
        """Restore checkpoint ``path``; ``partial``: only what it holds (else every weight must be there).

        A ``mixed_float16`` checkpoint of an older tfpipe has no loss scale: the scale then restarts
        at 2^15 (said on stderr) instead of refusing the checkpoint.
        """
        status = self._core.restore(path, options=self.checkpoint_options)
        status.expect_partial() if partial else status.assert_existing_objects_matched()
        if self._loss_scale is not None:
            status = self._loss_scale.restore(path, options=self.checkpoint_options)
            try:
                status.assert_existing_objects_matched()
            except AssertionError:
                status.expect_partial()
                print(f"[train] {path} holds no loss scale (an older tfpipe): it restarts at "
                      f"{float(self.optimizer.dynamic_scale):g}", file=sys.stderr)  # fmt: skip

    @property
    def loss_scale(self) -> float | None:
        """The current dynamic loss scale (``mixed_float16``), else None."""
        return float(self.optimizer.dynamic_scale.numpy()) if self.loss_scaled else None

    @contextlib.contextmanager
    def inference_weights(self):
        """Within the block the model holds the weights that are validated and shipped (EMA if on)."""
        if not self.config.optim.use_ema:
            yield
            return
        variables = self.model.trainable_variables
        backup = [v.numpy() for v in variables]
        self.inner.finalize_variable_values(variables)
        try:
            yield
        finally:
            for v, value in zip(variables, backup, strict=True):
                v.assign(value)

    def copy_from(self, other: TrainStep) -> None:
        """Take the weights and optimizer state of ``other`` (another precision)."""
        with self.strategy.scope():
            self.model.set_weights(other.model.get_weights())
            for mine, theirs in zip(self.inner.variables, other.inner.variables, strict=True):
                mine.assign(theirs)

    @property
    def step(self) -> int:
        return int(self.inner.iterations.numpy())

    @property
    def learning_rate(self) -> float:
        return float(self.inner.learning_rate)

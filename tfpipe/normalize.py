"""Feature and target normalisation in pure TF ops (no Python callbacks; runs in tf.data and XLA).

Features become the model input ``[batch, 60, C]``: for each representation, one channel per
input variable; a profile gives its 60 levels, a scalar is repeated on every level. Representations:

- ``column``: z-score per column, ``(x - mean_col) / std_col``;
- ``variable``: z-score per variable with the 60 levels pooled, so the vertical shape survives;
- ``log``: ``sign(z) * log1p(|z|)`` of the column z-score, keeping heavy tails readable.

``state_q0002`` (down to 1e-50, below float32) is normalised in float64 from the records' exact copy.
A column with standard deviation <= ``MIN_STD`` is constant to the model (z = 0, never Inf/NaN).
Everything is then soft-clipped (:func:`soft_clip`): identity for ``|z| <= t``, logarithmic beyond;
continuous, monotone, smooth at ``t``, and exactly invertible. Targets are z-scored per target with
their own clip threshold; :func:`denormalize_targets` inverts that in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from data_prep.stats import MIN_STD, Stats
from tfpipe.records import FLOAT64_VARIABLE
from tfpipe.schema import NLEV, VARIABLES, Schema

REPRESENTATIONS = ("column", "variable", "log")


class NormalizeError(ValueError):
    """An unknown representation or stats that do not fit the schema."""


def soft_clip(z: tf.Tensor, threshold: float) -> tf.Tensor:
    """``z`` for ``|z| <= t``; ``sign(z) * (t + log1p(|z| - t))`` beyond (C1, monotone, invertible)."""
    t = tf.cast(threshold, z.dtype)
    a = tf.abs(z)
    return tf.where(a <= t, z, tf.sign(z) * (t + tf.math.log1p(tf.maximum(a - t, 0))))


def soft_unclip(c: tf.Tensor, threshold: float) -> tf.Tensor:
    """Inverse of :func:`soft_clip`."""
    t = tf.cast(threshold, c.dtype)
    a = tf.abs(c)
    return tf.where(a <= t, c, tf.sign(c) * (t + tf.math.expm1(tf.maximum(a - t, 0))))


def _safe_std(std: np.ndarray) -> np.ndarray:
    return np.where(std > MIN_STD, std, 1.0)


def channel_layout(schema: Schema) -> np.ndarray:
    """``[60, V]`` input-column index of each (level, variable) channel; scalars repeat over levels."""
    index = np.zeros((NLEV, len(schema.inputs)), dtype=np.int32)
    for v, name in enumerate(schema.inputs):
        cols = schema.input_slice(name)
        index[:, v] = np.arange(cols.start, cols.stop) if VARIABLES[name].profile else cols.start
    return index


def n_channels(schema: Schema, representations: tuple[str, ...]) -> int:
    """C of the model input ``[batch, 60, C]``."""
    return len(schema.inputs) * len(representations)


@dataclass
class Normalizer:
    """Constants and ops that turn raw float32 features/targets into model inputs/targets."""

    schema: Schema
    stats: Stats
    representations: tuple[str, ...] = REPRESENTATIONS
    feature_clip: float = 6.0
    target_clip: float = 6.0

    def __post_init__(self) -> None:
        unknown = [r for r in self.representations if r not in REPRESENTATIONS]
        if unknown or not self.representations:
            raise NormalizeError(f"unknown representation(s) {unknown}; known: {', '.join(REPRESENTATIONS)}")
        if self.stats.schema != self.schema.name:
            raise NormalizeError(f"stats are for schema {self.stats.schema!r}, data is {self.schema.name!r}")
        s, x = self.schema, self.stats.inputs
        self.q = s.input_slice(FLOAT64_VARIABLE)
        var_mean, var_std = np.zeros(s.n_inputs), np.ones(s.n_inputs)
        for name, v in self.stats.variable_stats("inputs").items():
            var_mean[s.input_slice(name)] = v["mean"]
            var_std[s.input_slice(name)] = v["std"]
        self.col_mean, self.col_std = x.mean, _safe_std(x.std)
        self.var_mean, self.var_std = var_mean, _safe_std(var_std)
        if self.stats.targets is not None:
            self.target_mean = self.stats.targets.mean
            self.target_scale = _safe_std(self.stats.targets.std)

    @property
    def n_channels(self) -> int:
        return n_channels(self.schema, self.representations)

    def _z(self, inputs: tf.Tensor, x64: tf.Tensor, mean: np.ndarray, std: np.ndarray) -> tf.Tensor:
        """Per-column z-scores: float32 arithmetic, except state_q0002 from its float64 copy."""
        q = self.q
        z = (inputs - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
        zq = tf.cast((x64 - tf.constant(mean[q], tf.float64)) / tf.constant(std[q], tf.float64), tf.float32)
        return tf.concat([z[:, : q.start], zq, z[:, q.stop :]], axis=1)

    def features(self, inputs: tf.Tensor, x64: tf.Tensor) -> tf.Tensor:
        """``[n, 556] float32`` + ``[n, 60] float64`` → ``[n, 60, C] float32`` (soft-clipped).

        Element-wise work (z-scores, log, clipping, the NaN check) runs on the flat columns, then one
        reshape/transpose per run of profiles and one broadcast per run of scalars lays out the
        channels (the same result as gathering with :func:`channel_layout`, several times faster).
        """
        column = self._z(inputs, x64, self.col_mean, self.col_std)
        reps = {"column": lambda: column, "log": lambda: tf.sign(column) * tf.math.log1p(tf.abs(column))}
        reps["variable"] = lambda: self._z(inputs, x64, self.var_mean, self.var_std)
        flat = soft_clip(tf.concat([reps[r]() for r in self.representations], axis=1), self.feature_clip)
        flat = tf.debugging.check_numerics(flat, "normalised features (NaN/Inf in the input data)")
        n, width = tf.shape(flat)[0], self.schema.n_inputs
        channels = []
        for r in range(len(self.representations)):
            for start, count, profile in self._runs:
                block = flat[:, r * width + start : r * width + start + count * (NLEV if profile else 1)]
                if profile:
                    channels.append(tf.transpose(tf.reshape(block, [n, count, NLEV]), [0, 2, 1]))
                else:
                    channels.append(tf.broadcast_to(block[:, None, :], [n, NLEV, count]))
        return tf.concat(channels, axis=-1)

    @property
    def _runs(self) -> list[tuple[int, int, bool]]:
        """(first column, variables, is_profile) for each run of consecutive profiles or scalars."""
        runs: list[tuple[int, int, bool]] = []
        column = 0
        for name in self.schema.inputs:
            profile = VARIABLES[name].profile
            if runs and runs[-1][2] == profile:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1, profile)
            else:
                runs.append((column, 1, profile))
            column += VARIABLES[name].width
        return runs

    def targets(self, targets: tf.Tensor) -> tf.Tensor:
        """``[n, T]`` float32 physical targets → normalised, soft-clipped float32."""
        mean = tf.constant(self.target_mean, tf.float32)
        scale = tf.constant(self.target_scale, tf.float32)
        out = soft_clip((targets - mean) / scale, self.target_clip)
        return tf.debugging.check_numerics(out, "normalised targets (NaN/Inf in the target data)")

    def denormalize_targets(self, normalized) -> np.ndarray:
        """Normalised targets (any float) → physical values, in float64 (numpy)."""
        z = tf.cast(normalized, tf.float64)
        y = soft_unclip(z, self.target_clip) * self.target_scale + self.target_mean
        return y.numpy()

    def normalize_targets64(self, targets: np.ndarray) -> np.ndarray:
        """float64 version of :meth:`targets` (exact inverse of :meth:`denormalize_targets`)."""
        z = (tf.constant(targets, tf.float64) - self.target_mean) / self.target_scale
        return soft_clip(z, self.target_clip).numpy()

    def target_mask(self, replacement_levels: tuple[int, ...]) -> np.ndarray:
        """``[T] float32``: 0 for zero-weight targets and ptend_q0002 replacement levels, else 1."""
        off = set(self.schema.zero_weight_targets)
        off |= {t for t, _ in self.schema.q0002_replacement_columns(tuple(replacement_levels))}
        return np.array([0.0 if c in off else 1.0 for c in self.schema.target_columns], dtype=np.float32)

"""Normalisation as the model's first layer: :class:`Normalization` carries its statistics.

The layer turns raw float32 input columns ``[batch, n_inputs]`` into the model input
``[batch, 60, C]`` on the accelerator: for each representation one channel per input variable (a
profile gives its 60 levels, a scalar is repeated on every level), then soft clipping.
Representations:

- ``column``: z-score per column, ``(x - mean_col) / std_col``;
- ``variable``: z-score per variable with the 60 levels pooled, so the vertical shape survives;
- ``log``: ``sign(z) * log1p(|z|)`` of the column z-score, keeping heavy tails readable.

A column with standard deviation <= ``MIN_STD`` (1e-30) is constant to the model (scale 1, never
Inf/NaN). That bound is also why float32 arithmetic is exact enough here, ``state_q0002`` included:
values below float32's range (down to 1e-50) differ from 0 by less than 1e-20 of any scale used.

Soft clipping (:func:`soft_clip`): identity for ``|z| <= t``, logarithmic beyond; continuous,
monotone, smooth at ``t`` and exactly invertible. Targets are z-scored per target with their own
threshold (:meth:`Normalization.normalize_targets`, float32, in the train step) and mapped back in
float64 on the host (:meth:`Normalization.denormalize_targets`).

The statistics live twice in the layer, on purpose: as non-trainable float32 weights (what the
accelerator uses, saved in every checkpoint) and as float64 values in its config (saved in
``.keras`` files; what the exact float64 inverse uses). :meth:`Normalization.mismatched_weights`
checks that the two agree after a checkpoint restore.
"""

from __future__ import annotations

import hashlib
import json

import keras
import numpy as np
from keras import ops

from tfpipe.data.schema import NLEV, VARIABLES, Schema, get_schema
from tfpipe.data.stats import MIN_STD, Stats

REPRESENTATIONS = ("column", "variable", "log")
_ARRAYS = ("input_mean", "input_std", "variable_mean", "variable_std", "target_mean", "target_scale")


class NormalizeError(ValueError):
    """An unknown representation or statistics that do not fit the schema."""


def soft_clip(z, threshold: float):
    """``z`` for ``|z| <= t``; ``sign(z) * (t + log1p(|z| - t))`` beyond (C1, monotone, invertible)."""
    t = ops.cast(threshold, z.dtype)
    a = ops.abs(z)
    return ops.where(a <= t, z, ops.sign(z) * (t + ops.log1p(ops.maximum(a - t, 0))))


def soft_unclip(c, threshold: float):
    """Inverse of :func:`soft_clip`."""
    t = ops.cast(threshold, c.dtype)
    a = ops.abs(c)
    return ops.where(a <= t, c, ops.sign(c) * (t + ops.expm1(ops.maximum(a - t, 0))))


def soft_clip64(z: np.ndarray, threshold: float) -> np.ndarray:
    """:func:`soft_clip` in numpy float64 (host side)."""
    a = np.abs(z)
    return np.where(a <= threshold, z, np.sign(z) * (threshold + np.log1p(np.maximum(a - threshold, 0))))


def soft_unclip64(c: np.ndarray, threshold: float) -> np.ndarray:
    """:func:`soft_unclip` in numpy float64 (host side)."""
    a = np.abs(c)
    return np.where(a <= threshold, c, np.sign(c) * (threshold + np.expm1(np.maximum(a - threshold, 0))))


def safe_std(std: np.ndarray) -> np.ndarray:
    """``std``, with 1 where it is at or below ``MIN_STD`` (constant columns)."""
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


def _runs(schema: Schema) -> list[tuple[int, int, bool]]:
    """(first column, variables, is_profile) for each run of consecutive profiles or scalars."""
    runs: list[tuple[int, int, bool]] = []
    column = 0
    for name in schema.inputs:
        profile = VARIABLES[name].profile
        if runs and runs[-1][2] == profile:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, profile)
        else:
            runs.append((column, 1, profile))
        column += VARIABLES[name].width
    return runs


def stats_sha256(stats: Stats) -> str:
    """sha256 of the statistics a model normalises with (input and target moments, float64)."""
    parts = [stats.schema, stats.inputs.to_dict(), None if stats.targets is None else stats.targets.to_dict()]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@keras.saving.register_keras_serializable(package="tfpipe")
class Normalization(keras.layers.Layer):
    """Raw input columns → ``[batch, 60, C]`` model input; also normalises and restores targets.

    Args:
        schema: schema name (``kaggle``, ``v1``, ``v2``).
        representations: channels per column, from ``column``, ``variable``, ``log``.
        feature_clip, target_clip: soft-clip thresholds.
        input_mean, input_std, variable_mean, variable_std: ``[n_inputs]`` float64 (std already safe).
        target_mean, target_scale: ``[n_targets]`` float64.
        replacement_levels: levels where ``ptend_q0002 = -state_q0002 / 1200`` replaces the model.
        stats_sha256: hash of the statistics these values came from.

    Example:
        >>> layer = Normalization.from_stats(get_schema("kaggle"), stats)  # doctest: +SKIP
        >>> layer(raw_inputs).shape  # [batch, 60, 75]  # doctest: +SKIP
    """

    def __init__(
        self,
        schema: str,
        representations: tuple[str, ...] | list[str],
        feature_clip: float,
        target_clip: float,
        input_mean,
        input_std,
        variable_mean,
        variable_std,
        target_mean,
        target_scale,
        replacement_levels: tuple[int, ...] | list[int] = (),
        stats_sha256: str = "",
        **kwargs,
    ) -> None:
        kwargs.setdefault("dtype", "float32")  # statistics and clipping stay float32 under mixed precision
        kwargs.setdefault("name", "normalization")
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.schema_name = schema
        self.schema = get_schema(schema)
        self.representations = tuple(representations)
        unknown = [r for r in self.representations if r not in REPRESENTATIONS]
        if unknown or not self.representations:
            raise NormalizeError(f"unknown representation(s) {unknown}; known: {', '.join(REPRESENTATIONS)}")
        self.feature_clip, self.target_clip = float(feature_clip), float(target_clip)
        self.replacement_levels = tuple(int(k) for k in replacement_levels)
        self.stats_sha256 = stats_sha256
        values = dict(zip(_ARRAYS, (input_mean, input_std, variable_mean, variable_std, target_mean,
                                    target_scale), strict=True))  # fmt: skip
        self.values64 = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
        widths = {
            "input": self.schema.n_inputs,
            "variable": self.schema.n_inputs,
            "target": self.schema.n_targets,
        }
        for key, array in self.values64.items():
            if array.shape != (widths[key.split("_")[0]],):
                raise NormalizeError(f"{key} has shape {array.shape}, schema {schema!r} needs {widths}")
        self._runs = _runs(self.schema)

    @classmethod
    def from_stats(
        cls,
        schema: Schema,
        stats: Stats,
        representations: tuple[str, ...] = REPRESENTATIONS,
        feature_clip: float = 6.0,
        target_clip: float = 6.0,
        replacement_levels: tuple[int, ...] = (),
        **kwargs,
    ) -> Normalization:
        """The layer for ``stats`` (which must have targets)."""
        if stats.schema != schema.name:
            raise NormalizeError(f"stats are for schema {stats.schema!r}, data is {schema.name!r}")
        if stats.targets is None:
            raise NormalizeError("statistics without targets cannot train or restore a model")
        var_mean, var_std = np.zeros(schema.n_inputs), np.ones(schema.n_inputs)
        for name, v in stats.variable_stats("inputs").items():
            var_mean[schema.input_slice(name)] = v["mean"]
            var_std[schema.input_slice(name)] = v["std"]
        return cls(
            schema.name, representations, feature_clip, target_clip,
            stats.inputs.mean, safe_std(stats.inputs.std), var_mean, safe_std(var_std),
            stats.targets.mean, safe_std(stats.targets.std), replacement_levels, stats_sha256(stats),
            **kwargs,
        )  # fmt: skip

    @classmethod
    def for_data(cls, data, stats: Stats, **kwargs) -> Normalization:
        """The layer a DataConfig ``data`` asks for (representations, clips, replacement levels)."""
        return cls.from_stats(
            get_schema(data.schema), stats, tuple(data.representations), data.feature_clip,
            data.target_clip, tuple(data.q0002_replacement_levels), **kwargs,
        )  # fmt: skip

    def build(self, input_shape) -> None:
        for key, array in self.values64.items():
            weight = self.add_weight(shape=array.shape, initializer="zeros", trainable=False, name=key)
            weight.assign(array.astype(np.float32))
            setattr(self, key, weight)
        super().build(input_shape)

    @property
    def n_channels(self) -> int:
        return n_channels(self.schema, self.representations)

    def call(self, inputs):
        """``[n, n_inputs]`` raw float32 → ``[n, 60, C]`` float32, soft-clipped.

        Element-wise work runs on the flat columns, then one reshape/transpose per run of profiles
        and one tile per run of scalars lays out the channels (the :func:`channel_layout` order).
        """
        x = ops.cast(inputs, "float32")
        column = (x - self.input_mean) / self.input_std
        reps = {
            "column": lambda: column,
            "variable": lambda: (x - self.variable_mean) / self.variable_std,
            "log": lambda: ops.sign(column) * ops.log1p(ops.abs(column)),
        }
        flat = soft_clip(
            ops.concatenate([reps[r]() for r in self.representations], axis=1), self.feature_clip
        )
        width, channels = self.schema.n_inputs, []
        for r in range(len(self.representations)):
            for start, count, profile in self._runs:
                first = r * width + start
                if profile:
                    block = ops.reshape(flat[:, first : first + count * NLEV], (-1, count, NLEV))
                    channels.append(ops.transpose(block, (0, 2, 1)))
                else:
                    channels.append(
                        ops.tile(ops.expand_dims(flat[:, first : first + count], 1), (1, NLEV, 1))
                    )
        return ops.concatenate(channels, axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], NLEV, self.n_channels)

    def normalize_targets(self, targets):
        """``[n, T]`` physical targets → normalised, soft-clipped float32 (on the accelerator)."""
        y = ops.cast(targets, "float32")
        return soft_clip((y - self.target_mean) / self.target_scale, self.target_clip)

    def normalize_targets64(self, targets: np.ndarray) -> np.ndarray:
        """float64 numpy :meth:`normalize_targets` (the exact inverse of :meth:`denormalize_targets`)."""
        z = (np.asarray(targets, np.float64) - self.values64["target_mean"]) / self.values64["target_scale"]
        return soft_clip64(z, self.target_clip)

    def denormalize_targets(self, normalized: np.ndarray) -> np.ndarray:
        """Normalised targets (any float) → physical values, float64 numpy."""
        z = soft_unclip64(np.asarray(normalized, np.float64), self.target_clip)
        return z * self.values64["target_scale"] + self.values64["target_mean"]

    def target_mask(self) -> np.ndarray:
        """``[T] float32``: 0 for zero-weight targets and the ptend_q0002 replacement levels, else 1."""
        off = set(self.schema.zero_weight_targets)
        off |= {t for t, _ in self.schema.q0002_replacement_columns(self.replacement_levels)}
        return np.array([0.0 if c in off else 1.0 for c in self.schema.target_columns], dtype=np.float32)

    def mismatched_weights(self) -> list[str]:
        """Weights that differ from the float32 rounding of the float64 config (after a restore)."""
        return [
            k for k, v in self.values64.items()
            if not np.array_equal(keras.ops.convert_to_numpy(getattr(self, k)), v.astype(np.float32))
        ]  # fmt: skip

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "schema": self.schema_name,
            "representations": list(self.representations),
            "feature_clip": self.feature_clip,
            "target_clip": self.target_clip,
            **{k: v.tolist() for k, v in self.values64.items()},
            "replacement_levels": list(self.replacement_levels),
            "stats_sha256": self.stats_sha256,
        }

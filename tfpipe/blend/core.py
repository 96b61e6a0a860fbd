"""What every blend method shares: input checks, the weighted sum of predictions, the equal blend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tfpipe.data.schema import Schema

ALL = "all"
"""The group name of weights shared by all targets."""


class BlendError(ValueError):
    """Bad blend input or spec; the message names the file or the problem."""


def check_inputs(preds: Sequence[np.ndarray], truth: np.ndarray | None, schema: Schema) -> None:
    """At least one prediction, all of shape [rows, T], and the truth (if given) of the same shape."""
    if not preds:
        raise BlendError("no predictions to blend")
    shape = np.shape(preds[0])
    if len(shape) != 2 or shape[1] != schema.n_targets:
        raise BlendError(f"predictions have shape {shape}, expected [rows, {schema.n_targets}]")
    for p in preds:
        if np.shape(p) != shape:
            raise BlendError(f"predictions have shapes {shape} and {np.shape(p)}")
    if truth is not None and np.shape(truth) != shape:
        raise BlendError(f"truth has shape {np.shape(truth)}, predictions {shape}")


def combine(
    preds: Sequence[np.ndarray], column_weights: np.ndarray, intercept: np.ndarray | None = None
) -> np.ndarray:
    """``sum_i column_weights[:, i] * preds[i] (+ intercept)``, float64 [rows, T]."""
    out = np.zeros(np.shape(preds[0]), dtype=np.float64)
    for i, p in enumerate(preds):
        out += column_weights[:, i] * np.asarray(p, dtype=np.float64)
    if intercept is not None:
        out += intercept
    return out


def blend_equal(preds: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of the predictions (float64)."""
    if not preds:
        raise BlendError("no predictions to blend")
    return combine(preds, np.full((np.shape(preds[0])[1], len(preds)), 1.0 / len(preds)))


def weights_per_column(
    weights: Mapping[str, np.ndarray], groups: Mapping[str, Sequence[str]], m: int, schema: Schema
) -> np.ndarray:
    """[T, M] weight of each of ``m`` models per target column, from weights per group of variables."""
    out = np.full((schema.n_targets, m), np.nan)
    for group, variables in groups.items():
        for v in variables:
            out[schema.target_slice(v)] = np.asarray(weights[group], dtype=np.float64)
    if np.isnan(out).any():
        missing = [c for c, row in zip(schema.target_columns, out, strict=True) if np.isnan(row).any()]
        raise BlendError(f"blend groups leave {len(missing)} targets without weights, e.g. {missing[0]!r}")
    return out

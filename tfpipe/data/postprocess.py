"""From model outputs to physical targets: the one post-processing that validation and prediction share.

In float64: the inverse target normalisation carried by the model
(:class:`tfpipe.data.normalize.Normalization`),
then on the replacement levels ``ptend_q0002_k = -state_q0002_k / 1200`` from the exact float64 inputs,
then 0 for zero-weight targets (Kaggle scores them as 0 against 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tfpipe.data.schema import TIMESTEP_S

if TYPE_CHECKING:
    from tfpipe.data.normalize import Normalization


def physical_predictions(pred: np.ndarray, x64: np.ndarray, norm: Normalization) -> np.ndarray:
    """Normalised outputs ``[n, T]`` + float64 ``state_q0002`` levels ``[n, 60]`` → float64 ``[n, T]``."""
    schema = norm.schema
    out = norm.denormalize_targets(pred)
    columns = {c: i for i, c in enumerate(schema.target_columns)}
    for target, _ in schema.q0002_replacement_columns(norm.replacement_levels):
        level = int(target.rsplit("_", 1)[1])
        out[:, columns[target]] = -x64[:, level] / TIMESTEP_S
    out[:, np.asarray(schema.target_weights()) == 0] = 0.0
    return out

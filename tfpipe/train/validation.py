"""Validation after each sub-epoch: the Kaggle R² on the physical scale and R² on the normalised scale.

The forward pass runs through the strategy (:meth:`TrainStep.validation_batch`); this module turns the
gathered predictions into scores on the host, in float64, with the same post-processing as
``tfpipe predict`` (:func:`tfpipe.data.postprocess.physical_predictions`), so that predicting the
validation files with the saved checkpoint reproduces ``val_r2``.
"""

from __future__ import annotations

import numpy as np

from tfpipe.data.postprocess import physical_predictions
from tfpipe.evaluate.metrics import StreamingR2, near_constant_mask, r2_from_mse
from tfpipe.train.step import TrainStep


def validate(step: TrainStep, dist_batches) -> dict:
    """Scores of the inference weights (EMA when on) over a distributed validation dataset.

    Returns ``val_r2_train_var`` (the headline: R² per target with the training variance as
    denominator, :func:`tfpipe.evaluate.metrics.r2_train_var_scores`, from the model's own target scale),
    ``val_r2`` (Kaggle metric: physical scale, submission weights, zero-weight targets count
    as 1), ``val_near_constant`` (how many scored targets have a nearly constant truth in the
    validation rows, :func:`tfpipe.evaluate.metrics.near_constant_targets`: their R² is hugely negative for
    any
    error and can dominate ``val_r2`` on a short validation period), ``val_r2_near_constant_as_1``
    (``val_r2`` with those counted as 1, as ``tfpipe score`` reports it), ``val_r2_normalized`` (mean
    over the targets in the loss), ``val_mae_normalized`` and ``val_samples``.
    """
    norm = step.normalization
    schema = norm.schema
    weights = np.asarray(schema.target_weights())
    in_loss = norm.target_mask() > 0
    normalized, physical = StreamingR2(schema.n_targets), StreamingR2(schema.n_targets)
    abs_error = weight = 0.0
    with step.inference_weights():
        for batch in dist_batches:
            b = step.validation_batch(batch)
            truth = b["targets"].astype(np.float64)
            normalized.update(norm.normalize_targets64(truth), b["pred"])
            physical.update(truth * weights, physical_predictions(b["pred"], b["x64"], norm) * weights)
            abs_error, weight = abs_error + b["abs_error"], weight + b["weight"]
    r2 = np.where(weights == 0, 1.0, physical.r2())
    near_constant = near_constant_mask(physical.std(), r2, schema)
    mse = physical.ss_res / max(physical.n, 1)
    train_std = norm.values64["target_scale"] * weights  # the scored values are weighted too
    r2_train_var = r2_from_mse(mse, train_std, weights, schema)
    return {
        "val_r2_train_var": float(r2_train_var.mean()),
        "val_r2": float(r2.mean()),
        "val_near_constant": int(near_constant.sum()),
        "val_r2_near_constant_as_1": float(np.where(near_constant, 1.0, r2).mean()),
        "val_r2_normalized": float(normalized.r2()[in_loss].mean()),
        "val_mae_normalized": abs_error / max(weight, 1.0),
        "val_samples": normalized.n,
    }

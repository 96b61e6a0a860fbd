"""What a fitted blend maximises: a mean R² over the targets that near-constant targets cannot rule.

A blend is fitted on out-of-fold (validation) predictions, and a validation period is often short: some
targets have a nearly constant truth there, so their R² = 1 - SS_res/SS_tot has a tiny SS_tot and any
error makes it -1e5. Fitted on the raw Kaggle R², hill climbing then optimises those few targets alone
(the demo's blend gave the Squeezeformer a weight of 0.24 and lost 0.1 of test R² to it). Objectives:

- ``r2_train_var`` (the default when the training std is known: the truth of ``tfpipe predict --oof``
  carries its model's, or ``--stats stats.json``): per target ``1 - MSE / train_var``
  (:func:`tfpipe.evaluate.metrics.r2_train_var_scores`), the number ``tfpipe train`` reports as its headline.
  On a long test period it equals the Kaggle R², and a target that is constant in the scored rows
  weighs what it weighs in training. Chosen over ``r2_near_constant_as_1`` because that rule is a
  threshold: targets just above it (a std of 1e-2 of their variable's other levels) still rule it.
- ``r2_near_constant_as_1`` (the default without the training std): the Kaggle R² with nearly
  constant truth columns (:func:`tfpipe.evaluate.metrics.near_constant_targets`) fixed at 1.
- ``r2``: the Kaggle R² of the rows as it is (right when the out-of-fold rows span a long period).

Every objective is, per target column, affine in the blend's squared error, so hill climbing runs on
the same Gram matrices (:mod:`tfpipe.blend.gram`) with the column scale as the only difference.
"""

from __future__ import annotations

import numpy as np

from tfpipe.blend.core import BlendError
from tfpipe.data.schema import Schema
from tfpipe.evaluate.metrics import (
    MIN_TRAIN_STD,
    near_constant_mask,
    r2_scores,
    r2_train_var_scores,
    zero_weight_mask,
)

OBJECTIVES = ("auto", "r2_train_var", "r2_near_constant_as_1", "r2")


def resolve(objective: str, train_std: np.ndarray | None) -> str:
    """``auto`` → ``r2_train_var`` with a training std, else ``r2_near_constant_as_1``; checks the name."""
    if objective not in OBJECTIVES:
        raise BlendError(f"unknown blend objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if objective == "auto":
        return "r2_near_constant_as_1" if train_std is None else "r2_train_var"
    if objective == "r2_train_var" and train_std is None:
        raise BlendError(
            "objective r2_train_var needs the training std per target: a truth file written by "
            "`tfpipe predict --oof` carries it, or give --stats stats.json"
        )
    return objective


def _near_constant(truth: np.ndarray, weights: np.ndarray | None, schema: Schema) -> np.ndarray:
    std = np.asarray(truth, dtype=np.float64).std(axis=0)
    return near_constant_mask(std, np.zeros(schema.n_targets), schema) & ~zero_weight_mask(schema, weights)


def scores(
    objective: str,
    pred: np.ndarray,
    truth: np.ndarray,
    weights: np.ndarray | None,
    schema: Schema,
    train_std: np.ndarray | None = None,
) -> np.ndarray:
    """The objective per target (``[T]``; its mean is the blend's score) of one prediction."""
    if objective == "r2_train_var":
        return r2_train_var_scores(pred, truth, train_std, weights, schema)
    r2 = r2_scores(pred, truth, weights, schema)
    if objective == "r2_near_constant_as_1":
        r2[_near_constant(truth, weights, schema)] = 1.0
    return r2


def active_and_scale(
    objective: str,
    truth: np.ndarray,
    weights: np.ndarray | None,
    schema: Schema,
    train_std: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Columns the blend can change under ``objective``, and their Gram scale (None: sqrt(SS_tot)).

    With the scale s_j, the objective of column j is ``const - ||(Z v - y) / s_j||²``: sqrt(SS_tot)
    for the R² objectives, sqrt(rows) x the training std for ``r2_train_var``.
    """
    truth = np.asarray(truth)
    scored = ~zero_weight_mask(schema, weights)
    if objective == "r2_train_var":
        std = np.asarray(train_std, dtype=np.float64)
        return scored & (std > MIN_TRAIN_STD), np.sqrt(len(truth)) * np.where(std > MIN_TRAIN_STD, std, 1.0)
    active = scored & ~(truth == truth[:1]).all(axis=0)
    if objective == "r2_near_constant_as_1":
        active &= ~_near_constant(truth, weights, schema)
    return active, None

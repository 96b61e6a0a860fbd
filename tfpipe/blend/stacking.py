"""Stacking: a model of the truth on the M predictions, fitted on out-of-fold predictions.

``method="ridge"``: per target, a ridge regression of the truth on the M predictions plus an intercept,
shrunk towards the equal blend, with its strength picked per target by 5-fold CV over contiguous row
blocks, all from the same per-fold Gram matrices (:mod:`tfpipe.blend.gram`). ``method="mlp"``: one
small Keras MLP shared by all targets (inputs: the M normalised predictions and a target embedding),
added to the equal blend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tfpipe.blend.core import BlendError, combine
from tfpipe.blend.gram import gram_matrices

ALPHAS: tuple[float, ...] = (10.0, 1.0, 0.1, 0.01, 1e-3, 1e-4, 0.0)
"""Ridge strengths tried by CV (per row, on truth-normalised predictions), strongest first."""


@dataclass
class StackModel:
    """A fitted stacker: ridge ``pred = intercept + sum_i coef[:, i] * pred_i`` per target, or an MLP."""

    method: str
    coef: np.ndarray  # [T, M]; for the MLP: the equal blend it corrects
    intercept: np.ndarray  # [T]
    alpha: np.ndarray  # [T] chosen ridge strength (NaN for the MLP)
    mean: np.ndarray  # [T] truth mean used for normalising (the MLP's inputs)
    scale: np.ndarray  # [T] truth scale used for normalising
    mlp: object | None = None  # the Keras model of method "mlp"


def _ridge_solve(s: np.ndarray, r: np.ndarray, alpha: float, frac: float, prior: np.ndarray) -> np.ndarray:
    """Ridge on augmented stats (s = X̃ᵀX̃ [J,K,K], r = X̃ᵀy [J,K]) shrunk towards ``prior``; intercept free.

    The features are scaled so that the truth has unit sum of squares over all rows; ``frac`` (the
    share of the rows in ``s``) keeps ``alpha`` on that scale for CV folds.
    """
    k = s.shape[-1]
    penalty = np.eye(k)
    penalty[0, 0] = 0.0
    lhs = s + (alpha * frac + 1e-10) * penalty
    rhs = r - s @ prior
    return prior + np.linalg.solve(lhs, rhs[..., None])[..., 0]


def _sse(s: np.ndarray, r: np.ndarray, yy: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Per column Σ(y - X̃β)² from the stats."""
    return yy - 2 * np.einsum("jk,jk->j", beta, r) + np.einsum("jk,jkl,jl->j", beta, s, beta)


def stack_fit(
    oof_preds: Sequence[np.ndarray],
    truth: np.ndarray,
    method: str = "ridge",
    folds: int = 5,
    alphas: Sequence[float] = ALPHAS,
    seed: int = 0,
    epochs: int = 5,
    max_examples: int = 1_000_000,
) -> StackModel:
    """Fit a stacker on out-of-fold predictions: ``"ridge"`` (closed form, CV-chosen alpha) or ``"mlp"``."""
    if method not in ("ridge", "mlp"):
        raise BlendError(f"unknown stacking method {method!r}; choose ridge or mlp")
    truth = np.asarray(truth, dtype=np.float64)
    if not oof_preds or any(np.shape(p) != truth.shape for p in oof_preds):
        raise BlendError(f"predictions and truth must share one shape, truth has {truth.shape}")
    m = len(oof_preds)
    n = truth.shape[0]
    if method == "mlp":
        return _mlp_fit(oof_preds, truth, seed, epochs, max_examples)
    folds = max(1, min(folds, n // 2))
    gram, mean, scale = gram_matrices(oof_preds, truth, folds)
    total = gram.sum(axis=0)
    prior = np.zeros(m + 1)
    prior[1:] = 1.0 / m
    sizes = np.diff(np.linspace(0, n, folds + 1).astype(int))
    if folds > 1:
        cv = np.zeros((len(alphas), truth.shape[1]))
        for f in range(folds):
            train = total - gram[f]
            for a, alpha in enumerate(alphas):
                beta = _ridge_solve(train[:, :-1, :-1], train[:, :-1, -1], alpha, 1 - sizes[f] / n, prior)
                cv[a] += _sse(gram[f][:, :-1, :-1], gram[f][:, :-1, -1], gram[f][:, -1, -1], beta)
        # Strongest alpha first: a weaker one must do strictly better to be chosen.
        chosen = np.asarray(alphas, dtype=np.float64)[np.argmin(cv, axis=0)]
    else:
        chosen = np.full(truth.shape[1], float(min(a for a in alphas if a > 0)))
    beta = np.empty((truth.shape[1], m + 1))
    for alpha in np.unique(chosen):
        cols = chosen == alpha
        beta[cols] = _ridge_solve(total[cols, :-1, :-1], total[cols, :-1, -1], alpha, 1.0, prior)
    coef = beta[:, 1:]
    intercept = mean * (1 - coef.sum(axis=1)) + scale * beta[:, 0]
    return StackModel("ridge", coef, intercept, chosen, mean, scale)


def _mlp_inputs(preds: Sequence[np.ndarray], rows: np.ndarray, cols: np.ndarray, mean, scale) -> dict:
    """Model inputs for (row, column) pairs: the M normalised predictions and the column index."""
    z = np.stack(
        [(np.asarray(p, dtype=np.float64)[rows, cols] - mean[cols]) / scale[cols] for p in preds], -1
    )
    return {"z": z.astype(np.float32), "col": cols.astype(np.int32)[:, None]}


def _mlp_fit(
    preds: Sequence[np.ndarray], truth: np.ndarray, seed: int, epochs: int, max_examples: int
) -> StackModel:
    """One MLP for all targets: (normalised predictions, target embedding) -> correction of the mean.

    Trained with MSE on normalised targets over at most ``max_examples`` (row, target) pairs drawn
    with ``seed``; the last layer starts at zero, so training starts from the equal blend.
    """
    import keras

    keras.utils.set_random_seed(seed)
    n, t = truth.shape
    m = len(preds)
    mean = truth.mean(axis=0)
    std = truth.std(axis=0)
    scale = np.where(std > 0, std, 1.0)
    pairs = np.random.default_rng(seed).permutation(n * t)[:max_examples]
    rows, cols = pairs // t, pairs % t
    x = _mlp_inputs(preds, rows, cols, mean, scale)
    y = (truth[rows, cols] - mean[cols]) / scale[cols] - x["z"].astype(np.float64).mean(axis=1)
    model = _mlp_model(m, t)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    model.fit(x, y[:, None].astype(np.float32), batch_size=1024, epochs=epochs, verbose=0, shuffle=True)
    return StackModel("mlp", np.full((t, m), 1.0 / m), np.zeros(t), np.full(t, np.nan), mean, scale, model)


def _mlp_model(m: int, t: int):
    import keras

    z = keras.Input((m,), name="z")
    col = keras.Input((1,), name="col", dtype="int32")
    emb = keras.layers.Flatten()(keras.layers.Embedding(t, 8)(col))
    h = keras.layers.Concatenate()([z, emb])
    h = keras.layers.Dense(32, activation="gelu")(h)
    h = keras.layers.Dense(32, activation="gelu")(h)
    correction = keras.layers.Dense(1, kernel_initializer="zeros")(h)
    return keras.Model({"z": z, "col": col}, correction)


def stack_apply(model: StackModel, preds: Sequence[np.ndarray]) -> np.ndarray:
    """Apply a fitted stacker to predictions of the same models (float64 [rows, T])."""
    if len(preds) != model.coef.shape[1]:
        raise BlendError(f"the stacker was fitted on {model.coef.shape[1]} models, got {len(preds)}")
    if model.method == "ridge":
        return combine(preds, model.coef, model.intercept)
    n, t = np.shape(preds[0])
    out = np.empty((n, t))
    step = max(1, 262144 // t)
    for start in range(0, n, step):
        rows = np.repeat(np.arange(start, min(start + step, n)), t)
        cols = np.tile(np.arange(t), len(rows) // t)
        x = _mlp_inputs(preds, rows, cols, model.mean, model.scale)
        correction = model.mlp.predict(x, batch_size=65536, verbose=0)[:, 0]  # type: ignore[union-attr]
        normalised = x["z"].astype(np.float64).mean(axis=1) + correction
        out[start : start + len(rows) // t] = (normalised * model.scale[cols] + model.mean[cols]).reshape(
            -1, t
        )
    return out

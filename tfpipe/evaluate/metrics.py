"""The LEAP score: R² per target, its mean over targets, and what explains a low score.

The Kaggle metric, as the competition computed it: predictions and truth are both multiplied by the
per-target weight of ``sample_submission.csv`` (one weight per target, the same on every row), then
``sklearn.metrics.r2_score`` averages R² = 1 - SS_res / SS_tot over the 368 columns. A weight-0 target
is then 0 against 0, a perfect prediction: it counts as R² = 1 whatever was predicted. Here the
zero-weight targets are ``schema.zero_weight_targets`` together with any weight 0 of the weights file
(the final Kaggle weights are 1 everywhere else, so both give the same set).

A truth column with zero variance follows sklearn (``force_finite=True``): R² = 1 if the prediction
is exact (SS_res = 0), else 0. For a non-zero weight w, R² of (w*pred, w*truth) equals R² of
(pred, truth); the weights are applied anyway, as Kaggle did. Everything is float64.

The files (parquet predictions and truth, the weights CSV) are :mod:`tfpipe.evaluate.prediction_files`; the
``tfpipe score`` command with its tables and heat map is :mod:`tfpipe.evaluate.score`.
"""

from __future__ import annotations

import numpy as np

from tfpipe.data.schema import VARIABLES, Schema, get_schema

_COLUMN_CHUNK = 32  # columns per step: bounds the temporaries of r2_scores on 10^6-row arrays


class ScoreError(ValueError):
    """Bad prediction, truth or weights input; the message names the file and the problem."""


def default_schema(schema: Schema | None) -> Schema:
    """``schema``, or the Kaggle schema when it is None."""
    return get_schema("kaggle") if schema is None else schema


# -- the metric -----------------------------------------------------------------------------------------


def zero_weight_mask(schema: Schema | None = None, weights: np.ndarray | None = None) -> np.ndarray:
    """Boolean per target: True where the target is not scored (counts as R² = 1)."""
    schema = default_schema(schema)
    zero = set(schema.zero_weight_targets)
    mask = np.array([c in zero for c in schema.target_columns], dtype=bool)
    if weights is not None:
        mask |= np.asarray(weights, dtype=np.float64) == 0.0
    return mask


def r2_scores(
    pred: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None, schema: Schema | None = None
) -> np.ndarray:
    """R² per target (float64, shape [T]) of ``pred * w`` against ``truth * w``; see the module doc.

    ``weights``: one weight per target
    (:func:`tfpipe.evaluate.prediction_files.load_weights`), or None for all
    ones. Zero-weight targets give 1.0; a constant truth column gives 1.0 for an exact prediction and 0.0
    otherwise.
    """
    schema = default_schema(schema)
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    n_targets = schema.n_targets
    if pred.shape != truth.shape or pred.ndim != 2 or pred.shape[1] != n_targets:
        raise ScoreError(f"pred {pred.shape} and truth {truth.shape} must both be [rows, {n_targets}]")
    if pred.shape[0] == 0:
        raise ScoreError("cannot score 0 rows")
    w = np.ones(n_targets) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n_targets,):
        raise ScoreError(f"weights have shape {w.shape}, expected ({n_targets},)")
    ss_res = np.empty(n_targets)
    ss_tot = np.empty(n_targets)
    for start in range(0, n_targets, _COLUMN_CHUNK):
        cols = slice(start, start + _COLUMN_CHUNK)
        t = truth[:, cols].astype(np.float64) * w[cols]
        p = pred[:, cols].astype(np.float64) * w[cols]
        ss_res[cols] = ((t - p) ** 2).sum(axis=0)
        ss_tot[cols] = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.where(ss_res == 0, 1.0, 0.0))
    r2[zero_weight_mask(schema, w)] = 1.0
    return r2


def kaggle_score(
    pred: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None, schema: Schema | None = None
) -> float:
    """The LEAP score: the mean of :func:`r2_scores` over all targets."""
    return float(r2_scores(pred, truth, weights, schema).mean())


def r2_train_var_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    train_std: np.ndarray,
    weights: np.ndarray | None = None,
    schema: Schema | None = None,
) -> np.ndarray:
    """R² per target with the *training* variance as denominator: ``1 - mean((p - t)²) / train_std²``.

    The headline number of validation, ``runs ls`` and the blend (see :data:`TRAIN_VAR_DOC`).
    ``train_std``: per target, the training data's std (``stats.json``; a model's ``target_scale``).
    Zero-weight targets give 1.0; a target constant in training (std <= 1e-30) gives 1.0 for an exact
    prediction, else 0.0, as :func:`r2_scores` treats a constant truth.
    """
    schema = default_schema(schema)
    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape or pred.ndim != 2 or pred.shape[1] != schema.n_targets:
        raise ScoreError(f"pred {pred.shape} and truth {truth.shape} must both be [rows, {schema.n_targets}]")
    if pred.shape[0] == 0:
        raise ScoreError("cannot score 0 rows")
    mse = np.empty(schema.n_targets)
    for start in range(0, schema.n_targets, _COLUMN_CHUNK):
        cols = slice(start, start + _COLUMN_CHUNK)
        mse[cols] = ((truth[:, cols] - pred[:, cols]) ** 2).mean(axis=0)
    return r2_from_mse(mse, train_std, weights, schema)


def r2_from_mse(
    mse: np.ndarray, train_std: np.ndarray, weights: np.ndarray | None = None, schema: Schema | None = None
) -> np.ndarray:
    """:func:`r2_train_var_scores` from the mean squared error per target (unweighted units)."""
    schema = default_schema(schema)
    std = np.asarray(train_std, dtype=np.float64)
    if std.shape != (schema.n_targets,):
        raise ScoreError(f"training std has shape {std.shape}, expected ({schema.n_targets},)")
    var = std**2
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(std > MIN_TRAIN_STD, 1.0 - mse / var, np.where(mse == 0, 1.0, 0.0))
    r2[zero_weight_mask(schema, weights)] = 1.0
    return r2


MIN_TRAIN_STD = 1e-30
"""A target whose training std is at or below this is constant in training (as ``stats.MIN_STD``)."""

TRAIN_VAR_DOC = (
    "R² (train var) divides each target's mean squared error by the variance of that target in the "
    "training data, not in the scored rows: on a long test period the two agree (it estimates the Kaggle "
    "score), while on a short validation period a target whose truth is nearly constant there cannot "
    "push the mean to -1e5"
)
"""One sentence that says what the headline R² is (printed once by training, the blend and the docs)."""


class StreamingR2:
    """R² per target accumulated over batches, in float64, with :func:`r2_scores`' rules.

    Keeps per target the count, mean and sum of squared deviations of the truth (Chan-merged per
    batch, so it stays exact on millions of rows) and the sum of squared residuals. A constant truth
    column gives 1.0 for an exact prediction, else 0.0 (sklearn's ``force_finite``).
    """

    def __init__(self, width: int) -> None:
        self.n = 0
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)
        self.ss_res = np.zeros(width)

    def update(self, truth: np.ndarray, pred: np.ndarray) -> None:
        """Add a batch of rows (``[rows, width]`` each)."""
        t = np.asarray(truth, dtype=np.float64)
        if len(t) == 0:
            return
        mean = t.mean(axis=0)
        m2 = ((t - mean) ** 2).sum(axis=0)
        n = self.n + len(t)
        delta = mean - self.mean
        self.mean = self.mean + delta * (len(t) / n)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * len(t) / n)
        self.ss_res = self.ss_res + ((t - np.asarray(pred, dtype=np.float64)) ** 2).sum(axis=0)
        self.n = n

    def std(self) -> np.ndarray:
        """Standard deviation per target of the truth added so far."""
        return np.sqrt(self.m2 / max(self.n, 1))

    def r2(self) -> np.ndarray:
        """R² per target of everything added so far."""
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = 1.0 - self.ss_res / self.m2
        return np.where(self.m2 > 0, r2, np.where(self.ss_res == 0, 1.0, 0.0))


# -- what explains a score ----------------------------------------------------------------------------

NEAR_CONSTANT = 1e-3
"""A target's truth is nearly constant when its std is below this fraction of the median std of its
variable's other levels (or exactly 0)."""


def near_constant_targets(truth: np.ndarray, r2: np.ndarray, schema: Schema | None = None) -> np.ndarray:
    """Boolean per target: scored, and its truth nearly constant (see :data:`NEAR_CONSTANT`).

    On such a column SS_tot is tiny, so any error makes R² hugely negative (e.g. ``ptend_q0002`` on
    upper levels of a test period where it is ~1e-18 everywhere).
    """
    return near_constant_mask(np.asarray(truth, dtype=np.float64).std(axis=0), r2, schema)


def near_constant_mask(std: np.ndarray, r2: np.ndarray, schema: Schema | None = None) -> np.ndarray:
    """:func:`near_constant_targets` from the truth's std per target (e.g. :meth:`StreamingR2.std`)."""
    schema = default_schema(schema)
    std = np.asarray(std, dtype=np.float64)
    scored = ~zero_weight_mask(schema)
    flags = scored & (std == 0) & (r2 < 1)
    for v in schema.targets:
        cols = schema.target_slice(v)
        if not VARIABLES[v].profile:
            continue
        levels = std[cols][scored[cols] & (std[cols] > 0)]
        if len(levels):
            flags[cols] |= scored[cols] & (std[cols] < NEAR_CONSTANT * np.median(levels))
    return flags


def explain_score(r2: np.ndarray, truth: np.ndarray, schema: Schema | None = None, worst: int = 5) -> dict:
    """The worst targets, the near-constant truth columns, and the score with those counted as 1."""
    schema = default_schema(schema)
    columns = np.array(schema.target_columns)
    flags = near_constant_targets(truth, r2, schema)
    std = np.asarray(truth, dtype=np.float64).std(axis=0)
    order = np.argsort(r2)[:worst]
    return {
        "worst": [
            {
                "target": str(columns[i]),
                "r2": float(r2[i]),
                "truth_std": float(std[i]),
                "near_constant": bool(flags[i]),
            }
            for i in order
        ],  # fmt: skip
        "near_constant_targets": [str(c) for c in columns[flags]],
        "r2_near_constant_as_1": float(np.where(flags, 1.0, r2).mean()),
    }


def explanation_lines(report: dict) -> list[str]:
    """Human-readable lines of :func:`explain_score`'s result (for ``tfpipe score`` and the demo)."""
    lines = ["worst targets: " + ", ".join(f"{w['target']} {w['r2']:.4g}" for w in report["worst"])]
    flagged = report["near_constant_targets"]
    if flagged:
        stds = {w["target"]: w["truth_std"] for w in report["worst"]}
        names = ", ".join(f"{c} (truth std {stds[c]:.2g})" if c in stds else c for c in flagged[:8])
        more = f" and {len(flagged) - 8} more" if len(flagged) > 8 else ""
        lines.append(
            f"{len(flagged)} target(s) have nearly constant truth here: {names}{more}. Their R² is "
            "1 - SS_res/SS_tot with a tiny SS_tot, so any error makes it hugely negative and it dominates "
            f"the mean; counted as 1 (as zero-weight targets are) the score would be "
            f"{report['r2_near_constant_as_1']:.5f}"
        )
    return lines

"""Hill-climbing blend weights (LEAP 2nd place) on out-of-fold predictions.

Hill climbing starts from the best single model (weight 1) and repeatedly tries, for every model m and
every step w of a grid (default -0.50 .. +1.00 by 0.05, 0 left out), ``blend = (1 - w) * blend + w * m``;
it keeps the one change that raises the objective most and stops when none raises it by more than
``tol``. The objective is a mean R² over the targets (:mod:`tfpipe.blend.objective`: by default with
each target's training variance as denominator, so near-constant validation targets cannot rule it).
The weights therefore always sum to 1 (an affine combination; negative weights allowed), and
the result never scores below the best single model on the data it was fitted on. Ties go to the
earlier model and the earlier grid step, so the result is deterministic. With ``per_group=True`` each
target variable (``ptend_t``, ..., and each ``cam_out_*`` scalar) gets its own weights; the mean R²
is a sum over columns, so the groups are fitted independently.

The search never touches the rows again: per target column it uses the Gram matrix of the
predictions and the truth, centred on the truth mean and scaled per column (by the truth's sum of
squares, or sqrt(rows) x the training std; :mod:`tfpipe.blend.gram`), so the objective is
const + 2 v·b - vᵀ G v for weights v summing to 1, and one step costs O(T·M²) whatever the row count.
Zero-weight targets and constant columns do not steer the search (their score is fixed by rule).
:func:`held_out_check` fits on one half of the rows and scores on the other, to warn when the blend
does not carry over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tfpipe.blend.core import ALL, BlendError, check_inputs, combine, weights_per_column
from tfpipe.blend.gram import gram_matrices
from tfpipe.blend.objective import active_and_scale, resolve, scores
from tfpipe.data.schema import Schema
from tfpipe.evaluate.metrics import default_schema

DEFAULT_GRID: tuple[float, ...] = tuple(round(-0.5 + 0.05 * i, 2) for i in range(31) if i != 10)
"""Hill-climbing steps w: -0.50, -0.45, ..., 0.95, 1.00 (without 0)."""


@dataclass
class HillClimbResult:
    """Weights per group (each sums to 1), the variables of each group, the fitted objective's mean (and
    each single model's), and the objective's name."""

    names: list[str]
    weights: dict[str, np.ndarray]
    groups: dict[str, tuple[str, ...]]
    score: float
    history: list[dict] = field(default_factory=list)
    objective: str = "r2"
    single_scores: dict[str, float] = field(default_factory=dict)

    def column_weights(self, schema: Schema | None = None) -> np.ndarray:
        """[T, M] weight of each model for each target column."""
        return weights_per_column(self.weights, self.groups, len(self.names), default_schema(schema))


def _climb(
    g: np.ndarray, b: np.ndarray, single: np.ndarray, grid: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, list[tuple[int, float, float]]]:
    """Hill climbing on sum_j R²_j(v) = sum_j (2 v·b_j - vᵀ G_j v) over the given (active) columns.

    ``single``: each model's exact R² summed over these columns. Returns (v, steps) with one
    (model, w, mean R² of these columns) per accepted step.
    """
    m = b.shape[1]
    n_cols = max(len(b), 1)
    best = int(np.argmax(single))  # first maximum: ties go to the earlier model
    v = np.zeros(m)
    v[best] = 1.0
    score = float(single[best])
    history = [(best, 1.0, score / n_cols)]
    for _ in range(max_iter):
        gv = g @ v  # [J, M]
        best_gain, choice = tol * n_cols, None
        for i in range(m):
            u = -v.copy()
            u[i] += 1.0
            if not u.any():
                continue
            slope = 2 * float((b @ u).sum() - (gv @ u).sum())
            curve = float(((g @ u) @ u).sum())
            gains = grid * slope - grid**2 * curve
            k = int(np.argmax(gains))
            if gains[k] > best_gain:
                best_gain, choice = float(gains[k]), (i, float(grid[k]))
        if choice is None:
            break
        i, w = choice
        v = (1 - w) * v
        v[i] += w
        score += best_gain
        history.append((i, w, score / n_cols))
    return v, history


def hill_climb(
    oof_preds: Sequence[np.ndarray],
    truth: np.ndarray,
    names: Sequence[str],
    weights: np.ndarray | None = None,
    max_iter: int = 200,
    grid: Sequence[float] = DEFAULT_GRID,
    per_group: bool = False,
    tol: float = 1e-10,
    schema: Schema | None = None,
    objective: str = "r2",
    train_std: np.ndarray | None = None,
) -> HillClimbResult:
    """Hill-climbing blend weights on out-of-fold predictions (see the module doc).

    ``weights``: per-target score weights (0 = not scored). ``tol``: the smallest mean gain that
    counts as an improvement. ``objective``: what is maximised (:mod:`tfpipe.blend.objective`; ``auto``
    resolves with ``train_std``). Returns weights per group (``"all"`` unless ``per_group``) and the
    blend's objective score, which is never below the best single model's on these rows.
    """
    schema = default_schema(schema)
    check_inputs(oof_preds, truth, schema)
    if len(names) != len(oof_preds):
        raise BlendError(f"{len(names)} names for {len(oof_preds)} predictions")
    grid_arr = np.asarray([w for w in grid if w != 0], dtype=np.float64)
    if grid_arr.size == 0:
        raise BlendError("the step grid needs at least one non-zero step")
    objective = resolve(objective, train_std)
    active, scale = active_and_scale(objective, truth, weights, schema, train_std)
    gram, _, _ = gram_matrices(oof_preds, truth, scale=scale)
    m = len(oof_preds)
    g_all, b_all = gram[0, :, 1 : m + 1, 1 : m + 1], gram[0, :, 1 : m + 1, m + 1]
    # The start (the best single model) is chosen on the exact score, the steps on the Gram form.
    singles = np.stack([scores(objective, p, truth, weights, schema, train_std) for p in oof_preds])
    groups = {v: (v,) for v in schema.targets} if per_group else {ALL: tuple(schema.targets)}
    result_weights, history = {}, []
    for group, variables in groups.items():
        cols = np.zeros(schema.n_targets, dtype=bool)
        for v in variables:
            cols[schema.target_slice(v)] = True
        cols &= active
        v, steps = _climb(g_all[cols], b_all[cols], singles[:, cols].sum(axis=1), grid_arr, max_iter, tol)
        result_weights[group] = v
        history += [{"group": group, "model": names[i], "w": w, "score_active": r} for i, w, r in steps]
    column_weights = weights_per_column(result_weights, groups, m, schema)
    blended = combine(oof_preds, column_weights)
    score = float(scores(objective, blended, truth, weights, schema, train_std).mean())
    return HillClimbResult(
        list(names), result_weights, groups, score, history, objective,
        {n: float(x.mean()) for n, x in zip(names, singles, strict=True)},
    )  # fmt: skip


def held_out_check(
    oof_preds: Sequence[np.ndarray],
    truth: np.ndarray,
    names: Sequence[str],
    weights: np.ndarray | None = None,
    per_group: bool = False,
    schema: Schema | None = None,
    objective: str = "r2",
    train_std: np.ndarray | None = None,
) -> dict:
    """Does hill climbing beat the best single model on rows it was not fitted on?

    Two-fold: the rows are cut into two contiguous halves (in time, for out-of-fold files written in
    data order); a blend fitted on each half is scored on the other. Returns the mean held-out score
    of the blend and of each model (same objective), the best model and ``beats_best``.
    """
    schema = default_schema(schema)
    truth = np.asarray(truth)
    half = len(truth) // 2
    if half < 2:
        raise BlendError(f"{len(truth)} rows are too few for a held-out check")
    folds = [(slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))]
    blend_scores, single_scores = [], []
    for fit_rows, test_rows in folds:
        fitted = hill_climb(
            [p[fit_rows] for p in oof_preds], truth[fit_rows], names, weights,
            per_group=per_group, schema=schema, objective=objective, train_std=train_std,
        )  # fmt: skip
        held = [np.asarray(p[test_rows]) for p in oof_preds]
        blended = combine(held, fitted.column_weights(schema))
        held_truth = truth[test_rows]

        def score(p: np.ndarray) -> float:
            return float(scores(fitted.objective, p, held_truth, weights, schema, train_std).mean())  # noqa: B023

        blend_scores.append(score(blended))
        single_scores.append([score(p) for p in held])
    singles = np.mean(single_scores, axis=0)
    best = int(np.argmax(singles))
    blend = float(np.mean(blend_scores))
    return {
        "blend": blend,
        "models": {n: float(x) for n, x in zip(names, singles, strict=True)},
        "best_model": names[best],
        "beats_best": bool(blend >= singles[best]),
    }

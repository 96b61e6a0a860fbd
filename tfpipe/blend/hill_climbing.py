"""Hill-climbing blend weights (LEAP 2nd place) on out-of-fold predictions.

Hill climbing starts from the best single model (weight 1) and repeatedly tries, for every model m and
every step w of a grid (default -0.50 .. +1.00 by 0.05, 0 left out), ``blend = (1 - w) * blend + w * m``;
it keeps the one change that raises the mean R² most and stops when none raises it by more than
``tol``. The weights therefore always sum to 1 (an affine combination; negative weights allowed), and
the result never scores below the best single model on the data it was fitted on. Ties go to the
earlier model and the earlier grid step, so the result is deterministic. With ``per_group=True`` each
target variable (``ptend_t``, ..., and each ``cam_out_*`` scalar) gets its own weights; the mean R²
is a sum over columns, so the groups are fitted independently.

The search never touches the rows again: per target column it uses the Gram matrix of the
predictions and the truth, centred on the truth mean and scaled by the truth's sum of squares
(:mod:`tfpipe.blend.gram`), so R²(v) = 2 v·b - vᵀ G v for weights v summing to 1, and one step costs
O(T·M²) whatever the row count. Zero-weight targets and constant truth columns do not steer the search
(their R² is fixed by rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tfpipe.blend.core import ALL, BlendError, check_inputs, combine, weights_per_column
from tfpipe.blend.gram import active_columns, gram_matrices
from tfpipe.metrics import default_schema, r2_scores
from tfpipe.schema import Schema

DEFAULT_GRID: tuple[float, ...] = tuple(round(-0.5 + 0.05 * i, 2) for i in range(31) if i != 10)
"""Hill-climbing steps w: -0.50, -0.45, ..., 0.95, 1.00 (without 0)."""


@dataclass
class HillClimbResult:
    """Weights per group (each sums to 1), the variables of each group, and the fitted mean R²."""

    names: list[str]
    weights: dict[str, np.ndarray]
    groups: dict[str, tuple[str, ...]]
    score: float
    history: list[dict] = field(default_factory=list)

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
) -> HillClimbResult:
    """Hill-climbing blend weights on out-of-fold predictions (see the module doc).

    ``weights``: per-target score weights (0 = not scored). ``tol``: the smallest mean-R² gain that
    counts as an improvement. Returns weights per group (``"all"`` unless ``per_group``).
    """
    schema = default_schema(schema)
    check_inputs(oof_preds, truth, schema)
    if len(names) != len(oof_preds):
        raise BlendError(f"{len(names)} names for {len(oof_preds)} predictions")
    grid_arr = np.asarray([w for w in grid if w != 0], dtype=np.float64)
    if grid_arr.size == 0:
        raise BlendError("the step grid needs at least one non-zero step")
    gram, _, _ = gram_matrices(oof_preds, truth)
    m = len(oof_preds)
    g_all, b_all = gram[0, :, 1 : m + 1, 1 : m + 1], gram[0, :, 1 : m + 1, m + 1]
    active = active_columns(truth, weights, schema)
    # The start (the best single model) is chosen on the exact R², the steps on the Gram form.
    singles = np.stack([r2_scores(p, truth, weights, schema) for p in oof_preds])
    groups = {v: (v,) for v in schema.targets} if per_group else {ALL: tuple(schema.targets)}
    result_weights, history = {}, []
    for group, variables in groups.items():
        cols = np.zeros(schema.n_targets, dtype=bool)
        for v in variables:
            cols[schema.target_slice(v)] = True
        cols &= active
        v, steps = _climb(g_all[cols], b_all[cols], singles[:, cols].sum(axis=1), grid_arr, max_iter, tol)
        result_weights[group] = v
        history += [{"group": group, "model": names[i], "w": w, "r2_active": r} for i, w, r in steps]
    column_weights = weights_per_column(result_weights, groups, m, schema)
    score = float(r2_scores(combine(oof_preds, column_weights), truth, weights, schema).mean())
    return HillClimbResult(list(names), result_weights, groups, score, history)

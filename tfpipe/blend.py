"""Blend several models' predictions: equal weights, hill climbing (LEAP 2nd place), or stacking.

Hill climbing starts from the best single model (weight 1) and repeatedly tries, for every model m and
every step w of a grid (default -0.50 .. +1.00 by 0.05, 0 left out), ``blend = (1 - w) * blend + w * m``;
it keeps the one change that raises the mean R² most and stops when none raises it by more than
``tol``. The weights therefore always sum to 1 (an affine combination; negative weights allowed), and
the result never scores below the best single model on the data it was fitted on. Ties go to the
earlier model and the earlier grid step, so the result is deterministic. With ``per_group=True`` each
target variable (``ptend_t``, ..., and each ``cam_out_*`` scalar) gets its own weights; the mean R²
is a sum over columns, so the groups are fitted independently.

The search never touches the rows again: per target column it uses the Gram matrix of the
predictions and the truth, centred on the truth mean and scaled by the truth's sum of squares, so
R²(v) = 2 v·b - vᵀ G v for weights v summing to 1, and one step costs O(T·M²) whatever the row count.
Zero-weight targets and constant truth columns do not steer the search (their R² is fixed by rule).

Stacking (``method="ridge"``): per target, a ridge regression of the truth on the M predictions plus
an intercept, shrunk towards the equal blend, with its strength picked per target by 5-fold CV over
contiguous row blocks, all from the same per-fold Gram matrices. ``method="mlp"``: one small Keras MLP
shared by all targets (inputs: the M normalised predictions and a target embedding), added to the
equal blend.

A blend spec is JSON: ``{"method", "schema", "models", "weights", "groups"}``; ``weights`` is a list
(one per model) or, per group, ``{group: list}`` with ``groups = {group: [variables]}``; stacking
saves its coefficients (``.npz``; the MLP also a ``.keras`` file) beside the spec and names them in it.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tfpipe import storage
from tfpipe.metrics import r2_scores, zero_weight_mask
from tfpipe.prediction_files import (
    align,
    load_predictions,
    load_truth,
    load_weights,
    strip_parquet,
    write_predictions,
)
from tfpipe.schema import Schema, get_schema

DEFAULT_GRID: tuple[float, ...] = tuple(round(-0.5 + 0.05 * i, 2) for i in range(31) if i != 10)
"""Hill-climbing steps w: -0.50, -0.45, ..., 0.95, 1.00 (without 0)."""

ALPHAS: tuple[float, ...] = (10.0, 1.0, 0.1, 0.01, 1e-3, 1e-4, 0.0)
"""Ridge strengths tried by CV (per row, on truth-normalised predictions), strongest first."""

ALL = "all"
_ROW_CHUNK_ELEMENTS = 1 << 22  # rows * targets * (models + 2) per chunk of the Gram pass (32 MB)


class BlendError(ValueError):
    """Bad blend input or spec; the message names the file or the problem."""


def _schema(schema: Schema | None) -> Schema:
    return get_schema("kaggle") if schema is None else schema


def _check(preds: Sequence[np.ndarray], truth: np.ndarray | None, schema: Schema) -> None:
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


def combine(preds: Sequence[np.ndarray], column_weights: np.ndarray, intercept: np.ndarray | None = None):
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


# -- sufficient statistics ------------------------------------------------------------------------------


def _gram(
    preds: Sequence[np.ndarray], truth: np.ndarray, folds: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per fold and column, the Gram matrix of [1, z_1..z_M, y] with z, y = (x - mean_t) / scale_t.

    Returns (gram [folds, T, M+2, M+2], mean [T], scale [T]); scale = sqrt(SS_tot) of the truth, or 1
    for a constant truth column (whose normalised truth is then 0). Folds are contiguous row blocks.
    """
    truth = np.asarray(truth, dtype=np.float64)
    n, t = truth.shape
    m = len(preds)
    mean = truth.mean(axis=0)
    ss_tot = ((truth - mean) ** 2).sum(axis=0)
    scale = np.where(ss_tot > 0, np.sqrt(ss_tot), 1.0)
    k = m + 2
    gram = np.zeros((folds, t, k, k))
    edges = np.linspace(0, n, folds + 1).astype(int)
    chunk = max(1, _ROW_CHUNK_ELEMENTS // (t * k))
    for f in range(folds):
        for start in range(edges[f], edges[f + 1], chunk):
            rows = slice(start, min(start + chunk, edges[f + 1]))
            z = np.empty((t, rows.stop - rows.start, k))
            z[:, :, 0] = 1.0
            for i, p in enumerate(preds):
                z[:, :, i + 1] = ((np.asarray(p[rows], dtype=np.float64) - mean) / scale).T
            z[:, :, k - 1] = ((truth[rows] - mean) / scale).T
            gram[f] += np.matmul(z.transpose(0, 2, 1), z)
    return gram, mean, scale


def _active(truth: np.ndarray, weights: np.ndarray | None, schema: Schema) -> np.ndarray:
    """Columns whose R² the blend can change: scored and with a non-constant truth."""
    truth = np.asarray(truth)
    constant = (truth == truth[:1]).all(axis=0)
    return ~zero_weight_mask(schema, weights) & ~constant


# -- hill climbing ---------------------------------------------------------------------------------------


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
        return _column_weights(self.weights, self.groups, len(self.names), _schema(schema))


def _column_weights(
    weights: Mapping[str, np.ndarray], groups: Mapping[str, Sequence[str]], m: int, schema: Schema
) -> np.ndarray:
    out = np.full((schema.n_targets, m), np.nan)
    for group, variables in groups.items():
        for v in variables:
            out[schema.target_slice(v)] = np.asarray(weights[group], dtype=np.float64)
    if np.isnan(out).any():
        missing = [c for c, row in zip(schema.target_columns, out, strict=True) if np.isnan(row).any()]
        raise BlendError(f"blend groups leave {len(missing)} targets without weights, e.g. {missing[0]!r}")
    return out


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
    schema = _schema(schema)
    _check(oof_preds, truth, schema)
    if len(names) != len(oof_preds):
        raise BlendError(f"{len(names)} names for {len(oof_preds)} predictions")
    grid_arr = np.asarray([w for w in grid if w != 0], dtype=np.float64)
    if grid_arr.size == 0:
        raise BlendError("the step grid needs at least one non-zero step")
    gram, _, _ = _gram(oof_preds, truth)
    m = len(oof_preds)
    g_all, b_all = gram[0, :, 1 : m + 1, 1 : m + 1], gram[0, :, 1 : m + 1, m + 1]
    active = _active(truth, weights, schema)
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
    column_weights = _column_weights(result_weights, groups, m, schema)
    score = float(r2_scores(combine(oof_preds, column_weights), truth, weights, schema).mean())
    return HillClimbResult(list(names), result_weights, groups, score, history)


# -- stacking --------------------------------------------------------------------------------------------


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
    gram, mean, scale = _gram(oof_preds, truth, folds)
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


# -- specs -----------------------------------------------------------------------------------------------


def spec_path_for(out: str) -> str:
    """``OUT.blend.json`` for ``OUT.parquet``."""
    return strip_parquet(out) + ".blend.json"


def _sibling(spec_path: str, name: str) -> str:
    """``name`` in the folder of ``spec_path`` (local or gs://)."""
    folder = posixpath.dirname(spec_path)
    return f"{folder}/{name}" if folder else name


def save_spec(
    spec_path: str,
    method: str,
    names: Sequence[str],
    result: HillClimbResult | StackModel | None = None,
    schema: Schema | None = None,
) -> dict:
    """Write the blend spec JSON (and a stacker's ``.npz``/``.keras`` beside it); returns the spec."""
    schema = _schema(schema)
    spec: dict = {
        "method": method,
        "schema": schema.name,
        "models": list(names),
        "weights": None,
        "groups": None,
    }
    if method == "equal":
        spec["weights"] = [1.0 / len(names)] * len(names)
    elif isinstance(result, HillClimbResult):
        if list(result.groups) == [ALL]:
            spec["weights"] = result.weights[ALL].tolist()
        else:
            spec["weights"] = {g: w.tolist() for g, w in result.weights.items()}
            spec["groups"] = {g: list(v) for g, v in result.groups.items()}
        spec["r2_fit"] = result.score
    elif isinstance(result, StackModel):
        base = os.path.basename(spec_path).removesuffix(".json")
        spec["stack_method"] = result.method
        spec["coefficients"] = base + ".npz"
        buffer = io.BytesIO()
        np.savez(
            buffer,
            coef=result.coef,
            intercept=result.intercept,
            alpha=result.alpha,
            mean=result.mean,
            scale=result.scale,
        )
        storage.write_bytes(_sibling(spec_path, spec["coefficients"]), buffer.getvalue())
        if result.mlp is not None:
            spec["mlp"] = base + ".keras"
            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, "model.keras")
                result.mlp.save(local)  # type: ignore[attr-defined]
                storage.upload_file(local, _sibling(spec_path, spec["mlp"]))
    else:
        raise BlendError(f"cannot save a {method!r} blend without its fitted result")
    storage.write_bytes(spec_path, (json.dumps(spec, indent=1) + "\n").encode())
    return spec


def load_spec(spec_path: str) -> dict:
    """Read and check a blend spec."""
    try:
        spec = json.loads(storage.read_bytes(spec_path))
    except json.JSONDecodeError as err:
        raise BlendError(f"{spec_path}: not a blend spec ({err})") from None
    if not isinstance(spec, dict) or not {"method", "models", "weights", "groups"} <= set(spec):
        raise BlendError(f"{spec_path}: not a blend spec (needs method, models, weights, groups)")
    if spec["method"] not in ("equal", "hill-climb", "stack"):
        raise BlendError(f"{spec_path}: unknown blend method {spec['method']!r}")
    return spec


def apply_blend(spec_path: str, preds_by_name: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> np.ndarray:
    """Blend predictions with a saved spec: a mapping is matched by model name, a sequence by order."""
    spec = load_spec(spec_path)
    schema = get_schema(spec.get("schema", "kaggle"))
    names = spec["models"]
    if isinstance(preds_by_name, Mapping):
        missing = [n for n in names if n not in preds_by_name]
        if missing:
            raise BlendError(f"{spec_path}: no predictions for model {missing[0]!r}")
        preds = [preds_by_name[n] for n in names]
    else:
        preds = list(preds_by_name)
        if len(preds) != len(names):
            raise BlendError(f"{spec_path} blends {len(names)} models ({', '.join(names)}), got {len(preds)}")
    _check(preds, None, schema)
    if spec["method"] == "stack":
        data = np.load(io.BytesIO(storage.read_bytes(_sibling(spec_path, spec["coefficients"]))))
        model = StackModel(
            spec.get("stack_method", "ridge"),
            data["coef"],
            data["intercept"],
            data["alpha"],
            data["mean"],
            data["scale"],
        )
        if model.method == "mlp":
            import keras

            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, "model.keras")
                storage.download_file(_sibling(spec_path, spec["mlp"]), local)
                model.mlp = keras.models.load_model(local)
        return stack_apply(model, preds)
    weights, groups = spec["weights"], spec["groups"]
    if groups is None:
        weights, groups = {ALL: weights}, {ALL: list(schema.targets)}
    for group, w in weights.items():
        if len(w) != len(names):
            raise BlendError(f"{spec_path}: group {group!r} has {len(w)} weights for {len(names)} models")
    return combine(preds, _column_weights(weights, groups, len(names), schema))


# -- tfpipe blend ---------------------------------------------------------------------------------------


def model_names(paths: Sequence[str]) -> list[str]:
    """File names without ``.parquet``; the full paths where two would be the same."""
    stems = [strip_parquet(os.path.basename(p.rstrip("/"))) for p in paths]
    return stems if len(set(stems)) == len(stems) else list(paths)


def _load_all(paths: Sequence[str], schema: Schema) -> tuple[np.ndarray, list[np.ndarray]]:
    ids, first = load_predictions(paths[0], schema)
    preds = [first]
    for path in paths[1:]:
        other_ids, values = load_predictions(path, schema)
        preds.append(values[align(ids, other_ids, paths[0], path)])
    return ids, preds


def blend_files(
    preds: Sequence[str],
    out: str,
    truth: str | None = None,
    method: str = "equal",
    per_group: bool = False,
    weights: str | None = None,
    stack_method: str = "ridge",
    apply: str | None = None,
    spec: str | None = None,
) -> dict:
    """``tfpipe blend``: fit (or with ``apply``, reuse) a blend of prediction files and write OUT + spec."""
    schema = get_schema("kaggle")
    try:
        ids, values = _load_all(preds, schema)
        names = model_names(preds)
        truth_values = None
        if truth is not None:
            truth_ids, truth_values = load_truth(truth, schema)
            truth_values = truth_values[align(ids, truth_ids, preds[0], truth)]
        w = None if weights is None else load_weights(weights, schema)
        report: dict = {"out": out, "n": int(len(ids)), "models": names}
        if apply is not None:
            blended = apply_blend(apply, values)
            saved = load_spec(apply)
            matched = dict(zip(saved["models"], preds, strict=True))
            report |= {"method": saved["method"], "spec": apply, "matched": matched}
        else:
            if method != "equal" and truth_values is None:
                raise BlendError(f"--method {method} needs --truth")
            spec_path = spec or spec_path_for(out)
            if method == "equal":
                blended, fitted = blend_equal(values), None
            elif method == "hill-climb":
                fitted = hill_climb(values, truth_values, names, w, per_group=per_group, schema=schema)
                blended = combine(values, fitted.column_weights(schema))
            elif method == "stack":
                fitted = stack_fit(values, truth_values, stack_method)
                blended = stack_apply(fitted, values)
            else:
                raise BlendError(f"unknown method {method!r}; choose equal, hill-climb or stack")
            saved = save_spec(spec_path, method, names, fitted, schema)
            report |= {"method": method, "spec": spec_path, "weights": saved["weights"]}
        write_predictions(out, ids, blended, schema)
        if truth_values is not None:
            report["r2_inputs"] = {
                name: float(r2_scores(v, truth_values, w, schema).mean())
                for name, v in zip(names, values, strict=True)
            }
            report["r2_blend"] = float(r2_scores(blended, truth_values, w, schema).mean())
    except storage.StorageError as err:
        raise OSError(str(err)) from None  # the CLI reports OSError as one line
    return report


def blend_command(args) -> int:
    """Run ``tfpipe blend`` from parsed arguments; the last stdout line is the JSON report."""
    if (args.apply is None) == (args.method is None):
        raise BlendError("give either --method (to fit a blend) or --apply SPEC.json (to reuse one)")
    report = blend_files(
        args.pred,
        args.out,
        args.truth,
        args.method or "equal",
        args.per_group,
        args.weights,
        args.stack_method,
        args.apply,
        args.spec,
    )
    if "r2_blend" in report:
        for name, r2 in report["r2_inputs"].items():
            print(f"{name}: R² {r2:.6f}", file=sys.stderr)
        print(f"blend ({report['method']}): R² {report['r2_blend']:.6f}", file=sys.stderr)
    print(json.dumps(report))
    return 0


__all__ = [
    "ALPHAS",
    "DEFAULT_GRID",
    "BlendError",
    "HillClimbResult",
    "StackModel",
    "apply_blend",
    "blend_equal",
    "blend_files",
    "combine",
    "hill_climb",
    "load_spec",
    "save_spec",
    "stack_apply",
    "stack_fit",
]

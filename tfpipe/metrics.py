"""The LEAP score (R² per target, mean over targets), its tables and heat map, and ``tfpipe score``.

The Kaggle metric, as the competition computed it: predictions and truth are both multiplied by the
per-target weight of ``sample_submission.csv`` (one weight per target, the same on every row), then
``sklearn.metrics.r2_score`` averages R² = 1 - SS_res / SS_tot over the 368 columns. A weight-0 target
is then 0 against 0, a perfect prediction: it counts as R² = 1 whatever was predicted. Here the
zero-weight targets are ``schema.zero_weight_targets`` together with any weight 0 of the weights file
(the final Kaggle weights are 1 everywhere else, so both give the same set).

A truth column with zero variance follows sklearn (``force_finite=True``): R² = 1 if the prediction
is exact (SS_res = 0), else 0. For a non-zero weight w, R² of (w*pred, w*truth) equals R² of
(pred, truth); the weights are applied anyway, as Kaggle did. Everything is float64.

Files: predictions and truth are parquet files with ``sample_id`` first and the target columns in
schema (Kaggle) order. Prediction files must have exactly these columns; a truth file may carry more
(e.g. the inputs of ``tfpipe export``). Rows are matched by ``sample_id``, never by position.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
from typing import TYPE_CHECKING

import numpy as np

from tfpipe import storage
from tfpipe.schema import NLEV, VARIABLES, Schema, get_schema

if TYPE_CHECKING:
    import pandas as pd

SAMPLE_ID = "sample_id"
_COLUMN_CHUNK = 32  # columns per step: bounds the temporaries of r2_scores on 10^6-row arrays


class ScoreError(ValueError):
    """Bad prediction, truth or weights input; the message names the file and the problem."""


def _schema(schema: Schema | None) -> Schema:
    return get_schema("kaggle") if schema is None else schema


# -- the metric -----------------------------------------------------------------------------------------


def zero_weight_mask(schema: Schema | None = None, weights: np.ndarray | None = None) -> np.ndarray:
    """Boolean per target: True where the target is not scored (counts as R² = 1)."""
    schema = _schema(schema)
    zero = set(schema.zero_weight_targets)
    mask = np.array([c in zero for c in schema.target_columns], dtype=bool)
    if weights is not None:
        mask |= np.asarray(weights, dtype=np.float64) == 0.0
    return mask


def r2_scores(
    pred: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None, schema: Schema | None = None
) -> np.ndarray:
    """R² per target (float64, shape [T]) of ``pred * w`` against ``truth * w``; see the module doc.

    ``weights``: one weight per target (``load_weights``), or None for all ones. Zero-weight targets
    give 1.0; a constant truth column gives 1.0 for an exact prediction and 0.0 otherwise.
    """
    schema = _schema(schema)
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


# -- tables and heat map ----------------------------------------------------------------------------------


def r2_table(r2: np.ndarray, weights: np.ndarray | None = None, schema: Schema | None = None) -> pd.DataFrame:
    """One row per target: ``target, variable, level (-1 for scalars), r2, weight`` (0 if not scored)."""
    import pandas as pd

    schema = _schema(schema)
    w = np.ones(schema.n_targets) if weights is None else np.asarray(weights, dtype=np.float64).copy()
    w[zero_weight_mask(schema, w)] = 0.0
    variables, levels = [], []
    for v in schema.targets:
        width = VARIABLES[v].width
        variables += [v] * width
        levels += list(range(width)) if VARIABLES[v].profile else [-1]
    return pd.DataFrame(
        {
            "target": list(schema.target_columns),
            "variable": variables,
            "level": np.array(levels, dtype=np.int64),
            "r2": np.asarray(r2, dtype=np.float64),
            "weight": w,
        }
    )


def r2_by_level(table: pd.DataFrame) -> pd.DataFrame:
    """Per variable (rows, schema order): ``mean`` R² over its targets, then one column per level 0..59.

    Scalars have their R² in ``mean`` and no level values (NaN).
    """
    import pandas as pd

    order = list(dict.fromkeys(table["variable"]))
    profiles = table[table["level"] >= 0]
    wide = profiles.pivot(index="variable", columns="level", values="r2").reindex(
        index=order, columns=range(NLEV)
    )
    mean = table.groupby("variable", sort=False)["r2"].mean().reindex(order)
    out = pd.concat([mean.rename("mean"), wide], axis=1)
    out.columns = [str(c) for c in out.columns]
    out.index.name = "variable"
    return out


def plot_r2_heatmap(table: pd.DataFrame, path: str, title: str | None = None) -> str:
    """PNG of R² (clipped to [-1, 1]): profiles by level on top, scalars below; returns ``path``.

    Zero-weight (unscored) cells are grey; the scalar cells carry their unclipped value as text.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    profiles = table[table["level"] >= 0]
    scalars = table[table["level"] < 0]
    rows = list(dict.fromkeys(profiles["variable"]))
    grid = np.full((len(rows), NLEV), np.nan)
    unscored = np.zeros_like(grid, dtype=bool)
    for i, v in enumerate(rows):
        part = profiles[profiles["variable"] == v]
        grid[i, part["level"].to_numpy()] = part["r2"].to_numpy()
        unscored[i, part["level"].to_numpy()] = part["weight"].to_numpy() == 0
    cmap = colormaps["RdYlBu"].with_extremes(bad="0.8")

    fig = Figure(figsize=(14, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [max(len(rows), 1), 1.4]})
    image = top.imshow(
        np.ma.masked_array(np.clip(grid, -1, 1), unscored | np.isnan(grid)),
        aspect="auto",
        cmap=cmap,
        vmin=-1,
        vmax=1,
        interpolation="nearest",
    )
    top.set_yticks(range(len(rows)), rows)
    top.set_xticks(range(0, NLEV, 5))
    top.set_xlabel("level (0 = top of the atmosphere); grey: weight 0, counted as R² = 1")
    values = scalars["r2"].to_numpy()
    bottom.imshow(
        np.ma.masked_array(np.clip(values, -1, 1), scalars["weight"].to_numpy() == 0)[None, :],
        aspect="auto",
        cmap=cmap,
        vmin=-1,
        vmax=1,
    )
    for j, value in enumerate(values):
        color = "white" if abs(np.clip(value, -1, 1)) > 0.6 else "black"  # readable on dark cells
        bottom.text(j, 0, f"{value:.3f}", ha="center", va="center", fontsize=8, color=color)
    bottom.set_xticks(range(len(values)), list(scalars["variable"]), fontsize=8)
    bottom.set_yticks([])
    fig.colorbar(image, ax=[top, bottom], label="R² (clipped to [-1, 1])", shrink=0.9)
    score = table["r2"].mean()
    top.set_title(title or f"R² per target: mean {score:.5f} over {len(table)} targets")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    storage.write_bytes(path, buffer.getvalue())
    return path


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
    schema = _schema(schema)
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
    schema = _schema(schema)
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


# -- files ----------------------------------------------------------------------------------------------


def _open_parquet(path: str):  # -> pyarrow.parquet.ParquetFile
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if storage.is_remote(path):
            return pq.ParquetFile(pa.BufferReader(storage.read_bytes(path)))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
        return pq.ParquetFile(path)
    except pa.ArrowException as err:
        raise ScoreError(f"{path}: not a readable parquet file ({' '.join(str(err).split())})") from None


def _check_columns(path: str, names: list[str], expected: list[str]) -> None:
    """Exact columns in exact order, or a ScoreError naming the first problem and the file."""
    if names == expected:
        return
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ScoreError(f"{path}: duplicate column {name!r}")
        seen.add(name)
    missing = [c for c in expected if c not in seen]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ScoreError(f"{path}: missing column {missing[0]!r}{more}")
    wanted = set(expected)
    extra = [c for c in names if c not in wanted]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ScoreError(f"{path}: unexpected column {extra[0]!r}{more}")
    i = next(i for i, (a, b) in enumerate(zip(names, expected, strict=True)) if a != b)
    raise ScoreError(f"{path}: column {i} is {names[i]!r}, expected {expected[i]!r} (Kaggle column order)")


def _read_columns(path: str, pf, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids as str, float64 [rows, len(columns)]) with duplicate, null and non-numeric checks."""
    import pyarrow as pa

    table = pf.read(columns=[SAMPLE_ID, *columns])
    id_column = table.column(SAMPLE_ID)
    if id_column.null_count:
        raise ScoreError(f"{path}: {id_column.null_count} rows have no sample_id")
    ids = np.array([str(x) for x in id_column.to_pylist()], dtype=object)
    values = np.empty((table.num_rows, len(columns)), dtype=np.float64)
    for k, name in enumerate(columns):
        column = table.column(name)
        if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
            raise ScoreError(f"{path}: column {name!r} has type {column.type}, expected float64")
        values[:, k] = column.to_numpy(zero_copy_only=False)  # nulls become NaN
    unique, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if len(unique) < len(ids):
        dup = unique[counts > 1][0]
        raise ScoreError(f"{path}: duplicate sample_id {dup!r} ({counts[counts > 1][0]} rows)")
    return ids, values


def _check_finite(path: str, values: np.ndarray, columns: tuple[str, ...] | list[str]) -> None:
    finite = np.isfinite(values)
    if finite.all():
        return
    bad = np.flatnonzero(~finite.all(axis=0))
    parts = []
    for k in bad[:8]:
        col = values[:, k]
        nan, inf = int(np.isnan(col).sum()), int(np.isinf(col).sum())
        counts = ", ".join(s for s in (f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else "") if s)
        parts.append(f"{columns[k]} ({counts})")
    more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
    raise ScoreError(f"{path}: non-finite values in {len(bad)} columns: {', '.join(parts)}{more}")


def load_predictions(path: str, schema: Schema | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sample ids, float64 [rows, T]) of a prediction file with exactly ``sample_id`` + targets in order.

    Raises :class:`ScoreError` naming the file and the column for wrong, missing, extra or misordered
    columns, and naming the columns with their NaN/Inf counts for non-finite values.
    """
    schema = _schema(schema)
    pf = _open_parquet(path)
    columns = list(schema.target_columns)
    _check_columns(path, list(pf.schema_arrow.names), [SAMPLE_ID, *columns])
    ids, values = _read_columns(path, pf, columns)
    _check_finite(path, values, columns)
    return ids, values


def load_truth(path: str, schema: Schema | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`load_predictions`, but other columns (inputs, ``ncol``, ...) may be present."""
    schema = _schema(schema)
    pf = _open_parquet(path)
    names = set(pf.schema_arrow.names)
    columns = list(schema.target_columns)
    missing = [c for c in [SAMPLE_ID, *columns] if c not in names]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ScoreError(f"{path}: missing column {missing[0]!r}{more}")
    ids, values = _read_columns(path, pf, columns)
    _check_finite(path, values, columns)
    return ids, values


def load_weights(path: str, schema: Schema | None = None) -> np.ndarray:
    """Per-target weights (float64 [T]) from a ``sample_submission.csv`` (``sample_id`` + targets).

    LEAP has one weight per target, repeated on every row: the first row is taken and every other row
    must equal it (streamed, so the 625k-row Kaggle file is fine).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    schema = _schema(schema)
    columns = list(schema.target_columns)
    convert = pacsv.ConvertOptions(column_types={c: pa.float64() for c in columns} | {SAMPLE_ID: pa.string()})
    first: np.ndarray | None = None
    row = 0
    with storage.open_binary(path) as f:
        try:
            reader = pacsv.open_csv(f, convert_options=convert)
            _check_columns(path, list(reader.schema.names), [SAMPLE_ID, *columns])
            for batch in reader:
                if batch.num_rows == 0:
                    continue
                values = np.column_stack(
                    [batch.column(k).to_numpy(zero_copy_only=False) for k in range(1, len(columns) + 1)]
                )
                if first is None:
                    first = values[0].copy()
                    _check_finite(path, first[None, :], columns)
                differs = np.flatnonzero((values != first).any(axis=1))
                if differs.size:
                    r = int(differs[0])
                    k = int(np.flatnonzero(values[r] != first)[0])
                    raise ScoreError(
                        f"{path}: weights differ between rows: row {row + r + 1} has {columns[k]}="
                        f"{values[r, k]!r}, row 1 has {first[k]!r} (LEAP weights are one row repeated)"
                    )
                row += batch.num_rows
        except pa.ArrowException as err:
            raise ScoreError(f"{path}: not a readable weights CSV ({' '.join(str(err).split())})") from None
    if first is None:
        raise ScoreError(f"{path}: no weight rows")
    return first


def align(ids_ref: np.ndarray, ids: np.ndarray, ref_path: str, path: str) -> np.ndarray:
    """Row index into ``ids`` that puts its rows in the order of ``ids_ref`` (same ids required)."""
    import pandas as pd

    index = pd.Index(ids)
    order = index.get_indexer(pd.Index(ids_ref))
    if len(ids) == len(ids_ref) and (order >= 0).all():
        return order
    if (order < 0).any():
        first, where = ids_ref[int(np.flatnonzero(order < 0)[0])], f"in {ref_path}, not in {path}"
    else:
        extra = ~index.isin(pd.Index(ids_ref))
        first, where = ids[int(np.flatnonzero(extra)[0])], f"in {path}, not in {ref_path}"
    raise ScoreError(
        f"{ref_path} ({len(ids_ref)} rows) and {path} ({len(ids)} rows) have different sample_ids: "
        f"first differing id {first!r} ({where})"
    )


def write_predictions(path: str, ids: np.ndarray, values: np.ndarray, schema: Schema | None = None) -> str:
    """Write ``sample_id`` (string) + the target columns (float64, Kaggle order) to parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(schema)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(ids), schema.n_targets):
        raise ScoreError(f"{path}: values {values.shape} do not match {len(ids)} ids x {schema.n_targets}")
    fields = [pa.field(SAMPLE_ID, pa.string())] + [pa.field(c, pa.float64()) for c in schema.target_columns]
    arrays = [pa.array([str(x) for x in ids], pa.string())] + [
        pa.array(values[:, k]) for k in range(values.shape[1])
    ]
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    with storage.staged_output(path) as tmp_path:
        pq.write_table(table, tmp_path)
    return path


def strip_parquet(path: str) -> str:
    """``path`` without a trailing ``.parquet``."""
    return path[: -len(".parquet")] if path.endswith(".parquet") else path


# -- tfpipe score ------------------------------------------------------------------------------------


def _climsim_report(
    pred_ids: np.ndarray, pred_values: np.ndarray, truth_path: str, truth_values: np.ndarray,
    grid_path: str | None, schema: Schema, out_dir: str, join,
) -> dict:  # fmt: skip
    """The ClimSim paper's metrics (:mod:`tfpipe.climsim_metrics`) next to the Kaggle score."""
    from tfpipe.climsim_metrics import METRICS, climsim_scores, variable_table
    from tfpipe.grid import make_grid, read_grid

    pf = _open_parquet(truth_path)
    need = [c for c in (SAMPLE_ID, "ncol", "time", "state_ps") if c not in pf.schema_arrow.names]
    if need:
        raise ScoreError(
            f"{truth_path}: --metric climsim needs the columns {need} (use tfpipe export output)"
        )
    extra = pf.read(columns=[SAMPLE_ID, "ncol", "time", "state_ps"]).to_pandas().set_index(SAMPLE_ID)
    extra = extra.loc[list(pred_ids)]
    grid = read_grid(grid_path) if grid_path else make_grid()
    per_target = climsim_scores(
        pred_values, truth_values, extra["state_ps"].to_numpy(np.float64), extra["ncol"].to_numpy(np.int64),
        extra["time"].to_numpy(np.int64), grid, schema, truth_path,
    )  # fmt: skip
    table = variable_table(per_target, schema)
    targets = r2_table(per_target["r2"], None, schema).drop(columns=["r2", "weight"])
    for m in METRICS:
        targets[m] = per_target[m]
    per_variable_csv, per_target_csv = (
        join(out_dir, "climsim_per_variable.csv"),
        join(out_dir, "climsim_per_target.csv"),
    )
    storage.write_bytes(per_variable_csv, table.to_csv(index=False, float_format="%.10g").encode())
    storage.write_bytes(per_target_csv, targets.to_csv(index=False, float_format="%.10g").encode())
    return {
        "grid": grid_path or "built-in ne4pg2 grid (tfpipe.grid)",
        "variables": {r["variable"]: {m: r[m] for m in METRICS} for r in table.to_dict("records")},
        "per_variable_csv": per_variable_csv,
        "per_target_csv": per_target_csv,
    }


def score_files(
    pred: str,
    truth: str,
    weights: str | None = None,
    out_dir: str | None = None,
    schema: Schema | None = None,
    metric: str = "kaggle",
    grid: str | None = None,
) -> dict:
    """``tfpipe score``: R² of a prediction file on a truth file, with tables and a heat map in ``out_dir``.

    ``out_dir`` defaults to ``P.score`` beside ``P.parquet``. Returns the JSON summary. With
    ``metric="climsim"`` it adds the ClimSim paper's metrics (``"climsim"``; needs whole time steps
    and a truth file from ``tfpipe export``; ``grid``: a grid-info file, default the built-in one).
    """
    if metric not in ("kaggle", "climsim"):
        raise ScoreError(f"unknown metric {metric!r}; choose kaggle or climsim")
    schema = _schema(schema)
    pred_ids, pred_values = load_predictions(pred, schema)
    truth_ids, truth_values = load_truth(truth, schema)
    truth_values = truth_values[align(pred_ids, truth_ids, pred, truth)]
    w = None if weights is None else load_weights(weights, schema)
    r2 = r2_scores(pred_values, truth_values, w, schema)
    table = r2_table(r2, w, schema)
    out_dir = out_dir or strip_parquet(pred) + ".score"
    join = posixpath.join if storage.is_remote(out_dir) else os.path.join
    storage.makedirs(out_dir)
    per_target = join(out_dir, "r2_per_target.csv")
    per_level = join(out_dir, "r2_per_level.csv")
    heatmap = join(out_dir, "r2_heatmap.png")
    storage.write_bytes(per_target, table.to_csv(index=False, float_format="%.10g").encode())
    storage.write_bytes(per_level, r2_by_level(table).to_csv(float_format="%.10g").encode())
    plot_r2_heatmap(table, heatmap, title=f"{os.path.basename(pred)}: R² {r2.mean():.5f}")
    climsim = None
    if metric == "climsim":
        climsim = _climsim_report(pred_ids, pred_values, truth, truth_values, grid, schema, out_dir, join)
    extra = {} if climsim is None else {"climsim": climsim}
    return extra | {
        "r2": float(r2.mean()),
        "n": int(len(pred_ids)),
        "pred": pred,
        "truth": truth,
        "weights": weights,
        "per_target_csv": per_target,
        "per_level_csv": per_level,
        "heatmap": heatmap,
        **explain_score(r2, truth_values * (1.0 if w is None else w), schema),
    }


def score_command(args) -> int:
    """Run ``tfpipe score`` from parsed arguments; prints a summary line and the JSON line."""
    report = score_files(
        args.pred, args.truth, args.weights, args.out_dir, metric=args.metric, grid=args.grid
    )
    print(f"R² {report['r2']:.6f} over {get_schema('kaggle').n_targets} targets, {report['n']} rows")
    for line in explanation_lines(report):
        print(line)
    if "climsim" in report:
        print("ClimSim metrics (energy-flux weighted, per grid column over time, then averaged; W/m²):")
        print(f"  {'variable':16s} {'R²':>9s} {'RMSE':>11s} {'MAE':>11s} {'bias':>11s}")
        for name, m in report["climsim"]["variables"].items():
            print(f"  {name:16s} {m['r2']:9.4f} {m['rmse']:11.4g} {m['mae']:11.4g} {m['bias']:11.4g}")
    print(json.dumps(report))
    return 0

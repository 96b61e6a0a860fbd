"""``tfpipe score``: the LEAP R² of a prediction file on a truth file, as tables and a heat map.

Writes ``r2_per_target.csv`` (one row per target), ``r2_per_level.csv`` (one row per variable, one
column per level) and ``r2_heatmap.png``, and with ``--metric climsim`` the ClimSim paper's metrics
(:mod:`tfpipe.evaluate.climsim_metrics`) per variable and per target. The metric itself is
:mod:`tfpipe.evaluate.metrics`,
the files :mod:`tfpipe.evaluate.prediction_files`.
"""

from __future__ import annotations

import io
import os
import posixpath
from typing import TYPE_CHECKING

import numpy as np

from tfpipe import storage
from tfpipe.data.schema import NLEV, VARIABLES, Schema, get_schema
from tfpipe.evaluate.metrics import ScoreError, default_schema, explain_score, r2_scores, zero_weight_mask
from tfpipe.evaluate.prediction_files import (
    SAMPLE_ID,
    align,
    load_predictions,
    load_truth,
    load_weights,
    open_parquet,
    require_truth,
    strip_parquet,
)

if TYPE_CHECKING:
    import pandas as pd


def r2_table(r2: np.ndarray, weights: np.ndarray | None = None, schema: Schema | None = None) -> pd.DataFrame:
    """One row per target: ``target, variable, level (-1 for scalars), r2, weight`` (0 if not scored)."""
    import pandas as pd

    schema = default_schema(schema)
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


# -- tfpipe score ------------------------------------------------------------------------------------


def climsim_grid(truth_path: str, meta: dict, grid_path: str | None):  # -> (Grid, source, warning)
    """The grid of ``--metric climsim``: ``--grid`` if given (it wins), else the one the truth carries.

    Never the synthetic built-in grid: its ``hybi`` and areas are not the data's, and every weight
    derived from them would be silently wrong. A truth without a grid and no ``--grid`` is refused.
    """
    from tfpipe.data.grid import grid_from_dict, load_grid

    embedded = meta.get("grid")
    if grid_path is None:
        if embedded is None:
            raise ScoreError(
                f"{truth_path}: --metric climsim needs the data's grid and this truth carries none (its "
                "encoded folder had no grid-info.nc): pass --grid grid-info.nc, or re-export with --grid"
            )
        source = f"{embedded.get('source')} (carried by {truth_path})"
        return grid_from_dict(embedded, truth_path), source, None
    grid = load_grid(grid_path)
    warning = None
    if embedded is not None:
        own = grid_from_dict(embedded, truth_path)
        same = (
            all(np.array_equal(getattr(own, k), getattr(grid, k)) for k in ("area", "hyai", "hybi"))
            and own.p0 == grid.p0
        )
        if not same:
            warning = f"--grid {grid_path} differs from the grid {truth_path} carries; --grid was used"
    return grid, grid_path, warning


def _climsim_report(
    pred_ids: np.ndarray, pred_values: np.ndarray, truth_path: str, truth_values: np.ndarray,
    grid: tuple, schema: Schema, out_dir: str, join, pf,
) -> dict:  # fmt: skip
    """The ClimSim paper's metrics (:mod:`tfpipe.evaluate.climsim_metrics`) next to the Kaggle score.

    ``grid``: :func:`climsim_grid`'s ``(grid, source, warning)``.
    """
    from tfpipe.evaluate.climsim_metrics import METRICS, climsim_scores, variable_table

    grid, source, warning = grid
    extra = pf.read(columns=[SAMPLE_ID, "ncol", "time", "state_ps"]).to_pandas().set_index(SAMPLE_ID)
    extra = extra.loc[list(pred_ids)]
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
        "grid": source,
        **({"grid_warning": warning} if warning else {}),
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

    ``truth`` must be a truth file (:func:`tfpipe.evaluate.prediction_files.require_truth`); ``schema``
    defaults to the truth's layout. ``out_dir`` defaults to ``P.score`` beside ``P.parquet``. Returns
    the JSON summary. With ``metric="climsim"`` it adds the ClimSim paper's metrics (``"climsim"``;
    needs whole time steps and a truth file from ``tfpipe export``; ``grid``: a grid-info file, which
    wins over the grid the truth carries; with neither it is refused).
    """
    if metric not in ("kaggle", "climsim"):
        raise ScoreError(f"unknown metric {metric!r}; choose kaggle or climsim")
    truth_file = open_parquet(truth)
    meta = require_truth(truth, truth_file)
    schema = get_schema(meta["schema"]) if schema is None else schema
    pred_ids, pred_values = load_predictions(pred, schema)
    truth_ids, truth_values = load_truth(truth, schema, truth_file)
    climsim_grid_used = None
    if metric == "climsim":  # refused before anything is written
        need = [c for c in ("ncol", "time", "state_ps") if c not in truth_file.schema_arrow.names]
        if need:
            raise ScoreError(f"{truth}: --metric climsim needs the columns {need} (use tfpipe export output)")
        climsim_grid_used = climsim_grid(truth, meta, grid)
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
    if climsim_grid_used is not None:
        climsim = _climsim_report(
            pred_ids, pred_values, truth, truth_values, climsim_grid_used, schema, out_dir, join, truth_file
        )
    extra = {} if climsim is None else {"climsim": climsim}
    return extra | {
        "r2": float(r2.mean()),
        "n": int(len(pred_ids)),
        "schema": schema.name,
        "n_targets": schema.n_targets,
        "pred": pred,
        "truth": truth,
        "weights": weights,
        "per_target_csv": per_target,
        "per_level_csv": per_level,
        "heatmap": heatmap,
        **explain_score(r2, truth_values * (1.0 if w is None else w), schema),
    }

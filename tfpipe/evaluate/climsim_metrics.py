"""The ClimSim paper's evaluation, as the official ``climsim_utils/data_utils.py`` computes it.

``tfpipe score --metric climsim`` reports these beside the Kaggle R².

**Output weighting** (``data_utils.output_weighting``), applied to predictions and truth alike:

1. profiles are weighted by the layer's mass, ``dp / g`` (``dp`` from the interface pressures
   ``P0 hyai + hybi ps`` of each sample's own surface pressure);
2. every column by its area relative to the mean, ``area / mean(area)``;
3. everything is converted to a common energy-flux unit (W/m²): ``cp`` for heating, ``Lv`` for the
   moisture tendencies, ``Lv rho_water`` for precipitation, 1 for the radiative fluxes. The wind
   tendencies are multiplied by the wind-tendency magnitude ``sqrt(ptend_u² + ptend_v²)`` of the
   same array (so predictions and truth are each weighted by their own), as the official code does.

**Metrics** (``calc_R2``, ``calc_RMSE``, ``calc_MAE``, ``calc_bias``), for every target column and
every grid column over time, then averaged over the grid columns:
``R² = 1 - Σ_t (p - y)² / Σ_t (y - mean_t y)²``, ``RMSE = sqrt(mean_t (p - y)²)``,
``MAE = mean_t |p - y|``, ``bias = mean_t p - mean_t y``. A variable's value is the mean over its
levels. Where the truth of a grid column is constant over time (Σ_t (y - mean)² = 0) its R² is 1
for an exact prediction and 0 otherwise (the official code divides by zero there).

The samples must be whole time steps (all grid columns of each time), as in the official
evaluation: they come from a truth file with ``ncol``, ``time`` and ``state_ps`` columns (what
``tfpipe export`` writes).
"""

from __future__ import annotations

import numpy as np

from tfpipe.data.grid import Grid
from tfpipe.data.schema import ENERGY_CONVERSION, VARIABLES, Schema

GRAV = 9.80616
CP = 1.00464e3
LV = 2.501e6
RHO_WATER = 1.0e3
FACTORS = {"cp": CP, "lv": LV, "lv_rho_water": LV * RHO_WATER, "1": 1.0}
"""Energy-flux conversion factors (J/kg/K, J/kg, J/m³, 1) of :data:`tfpipe.data.schema.ENERGY_CONVERSION`."""
WIND = tuple(name for name, kind in ENERGY_CONVERSION.items() if kind == "wind")
METRICS = ("r2", "rmse", "mae", "bias")


class ClimSimMetricError(ValueError):
    """Samples that do not fit the official evaluation (incomplete time steps, another grid)."""


def layer_mass(ps: np.ndarray, grid: Grid) -> np.ndarray:
    """``dp / g`` (kg/m²) of each level: ``[time, ncol, 60]`` from surface pressure ``[time, ncol]``."""
    pint = grid.p0 * grid.hyai[None, None, :] + grid.hybi[None, None, :] * ps[..., None]
    return (pint[..., 1:] - pint[..., :-1]) / GRAV


def output_weighting(values: np.ndarray, ps: np.ndarray, grid: Grid, schema: Schema) -> np.ndarray:
    """Weighted values ``[time, ncol, T]`` (W/m²) of physical targets ``[time, ncol, T]``."""
    area = grid.area / grid.area.mean()
    mass = layer_mass(ps, grid)
    out = np.empty_like(values, dtype=np.float64)
    wind = None
    if all(v in schema.targets for v in WIND):
        u, v = (values[..., schema.target_slice(w)] for w in WIND)
        wind = np.sqrt(u**2 + v**2)
    for name in schema.targets:
        cols = schema.target_slice(name)
        x = values[..., cols].astype(np.float64)
        if VARIABLES[name].profile:
            x = x * mass * area[None, :, None]
        else:
            x = x * area[None, :, None]
        if name in WIND:
            x = x * (wind if wind is not None else 1.0)
        else:
            x = x * FACTORS[ENERGY_CONVERSION[name]]
        out[..., cols] = x
    return out


def metrics_per_target(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """R², RMSE, MAE and bias ``[T]`` of weighted ``[time, ncol, T]`` arrays: per column, then averaged."""
    diff = pred - truth
    ss_res = (diff**2).sum(axis=0)
    ss_tot = ((truth - truth.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.where(ss_res == 0, 1.0, 0.0))
    return {
        "r2": r2.mean(axis=0),
        "rmse": np.sqrt((diff**2).mean(axis=0)).mean(axis=0),
        "mae": np.abs(diff).mean(axis=0).mean(axis=0),
        "bias": (pred.mean(axis=0) - truth.mean(axis=0)).mean(axis=0),
    }


def by_time_step(
    values: np.ndarray, ncol: np.ndarray, time: np.ndarray, n_columns: int, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[n, ...]`` → ``[time, ncol, ...]`` (and the order used); every time needs every column."""
    if (ncol < 0).any() or (time < 0).any():
        raise ClimSimMetricError(
            f"{where}: rows without grid column or time (Kaggle test rows cannot be scored so)"
        )
    order = np.lexsort((ncol, time))
    times, counts = np.unique(time, return_counts=True)
    if (counts != n_columns).any() or len(ncol) != len(times) * n_columns:
        bad = times[np.argmax(counts != n_columns)]
        raise ClimSimMetricError(
            f"{where}: the ClimSim metrics need every grid column of each time step; time {bad} has "
            f"{counts[np.argmax(counts != n_columns)]} of {n_columns} (predict whole time steps)"
        )
    if not (ncol[order].reshape(len(times), n_columns) == np.arange(n_columns)).all():
        raise ClimSimMetricError(f"{where}: duplicate grid columns within a time step")
    return values[order].reshape(len(times), n_columns, *values.shape[1:]), order


def climsim_scores(
    pred: np.ndarray, truth: np.ndarray, ps: np.ndarray, ncol: np.ndarray, time: np.ndarray, grid: Grid,
    schema: Schema, where: str = "the samples",
) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
    """Per-target metrics (``{"r2": [T], ...}``) of physical ``pred`` and ``truth`` rows ``[n, T]``."""
    n_columns = len(grid.area)
    p, _ = by_time_step(pred, ncol, time, n_columns, where)
    t, _ = by_time_step(truth, ncol, time, n_columns, where)
    s, _ = by_time_step(ps, ncol, time, n_columns, where)
    return metrics_per_target(output_weighting(p, s, grid, schema), output_weighting(t, s, grid, schema))


def variable_table(per_target: dict[str, np.ndarray], schema: Schema):
    """One row per target variable: the mean of each metric over its levels (``pandas.DataFrame``)."""
    import pandas as pd

    rows = []
    for name in schema.targets:
        cols = schema.target_slice(name)
        rows.append({"variable": name, **{m: float(per_target[m][cols].mean()) for m in METRICS}})
    return pd.DataFrame(rows)

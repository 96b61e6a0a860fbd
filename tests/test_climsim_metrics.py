"""tfpipe.evaluate.climsim_metrics (the ClimSim paper's weighting and metrics) against hand-computed values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tfpipe.data.grid import grid_to_dict, make_grid
from tfpipe.data.schema import KAGGLE, NCOL
from tfpipe.evaluate.climsim_metrics import GRAV, LV, ClimSimMetricError, climsim_scores, output_weighting
from tfpipe.evaluate.metrics import ScoreError
from tfpipe.evaluate.prediction_files import arrow_metadata, truth_metadata, write_predictions
from tfpipe.evaluate.score import score_files

ROOT = Path(__file__).resolve().parents[1]
T_STEPS = 3


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(11)
    n = T_STEPS * NCOL
    truth = rng.normal(size=(n, KAGGLE.n_targets))
    pred = truth + 0.3 * rng.normal(size=truth.shape)
    ps = 9.5e4 + 1e3 * rng.normal(size=n)
    ncol = np.tile(np.arange(NCOL), T_STEPS)
    time = np.repeat(np.arange(T_STEPS) * 1200, NCOL)
    shuffle = rng.permutation(n)  # rows in any order: the metric sorts them into time steps
    return pred[shuffle], truth[shuffle], ps[shuffle], ncol[shuffle], time[shuffle]


def test_weighting_by_hand() -> None:
    grid = make_grid()
    rng = np.random.default_rng(3)
    values = rng.normal(size=(2, NCOL, KAGGLE.n_targets))
    ps = 1e5 + rng.normal(size=(2, NCOL)) * 500
    weighted = output_weighting(values, ps, grid, KAGGLE)
    t, c, k = 1, 7, 5
    dp = (grid.p0 * grid.hyai[k + 1] + grid.hybi[k + 1] * ps[t, c]) - (
        grid.p0 * grid.hyai[k] + grid.hybi[k] * ps[t, c]
    )
    area = grid.area[c] / grid.area.mean()
    col = KAGGLE.target_columns.index("ptend_q0001_5")
    assert weighted[t, c, col] == pytest.approx(values[t, c, col] * dp / GRAV * area * LV, rel=1e-12)
    col = KAGGLE.target_columns.index("cam_out_PRECC")
    assert weighted[t, c, col] == pytest.approx(values[t, c, col] * area * LV * 1e3, rel=1e-12)
    u, v = KAGGLE.target_columns.index("ptend_u_5"), KAGGLE.target_columns.index("ptend_v_5")
    magnitude = np.hypot(values[t, c, u], values[t, c, v])
    assert weighted[t, c, u] == pytest.approx(values[t, c, u] * dp / GRAV * area * magnitude, rel=1e-12)


def test_metrics_by_hand_per_grid_column_then_averaged(case) -> None:
    pred, truth, ps, ncol, time = case
    grid = make_grid()
    scores = climsim_scores(pred, truth, ps, ncol, time, grid, KAGGLE)
    col = KAGGLE.target_columns.index("ptend_t_30")
    order = np.lexsort((ncol, time))
    p = pred[order].reshape(T_STEPS, NCOL, -1)
    y = truth[order].reshape(T_STEPS, NCOL, -1)
    s = ps[order].reshape(T_STEPS, NCOL)
    pw, yw = output_weighting(p, s, grid, KAGGLE)[..., col], output_weighting(y, s, grid, KAGGLE)[..., col]
    r2 = [
        1 - ((pw[:, c] - yw[:, c]) ** 2).sum() / ((yw[:, c] - yw[:, c].mean()) ** 2).sum()
        for c in range(NCOL)
    ]
    rmse = [np.sqrt(((pw[:, c] - yw[:, c]) ** 2).mean()) for c in range(NCOL)]
    mae = [np.abs(pw[:, c] - yw[:, c]).mean() for c in range(NCOL)]
    bias = [pw[:, c].mean() - yw[:, c].mean() for c in range(NCOL)]
    for name, want in (("r2", r2), ("rmse", rmse), ("mae", mae), ("bias", bias)):
        assert scores[name][col] == pytest.approx(np.mean(want), rel=1e-10, abs=1e-12), name


def test_constant_truth_gives_a_defined_value_and_incomplete_steps_are_refused(case) -> None:
    pred, truth, ps, ncol, time = (a.copy() for a in case)
    grid = make_grid()
    col = KAGGLE.target_columns.index("cam_out_SOLS")
    truth[:, col] = 0.0  # night everywhere: constant over time
    pred[:, col] = 0.0
    exact = climsim_scores(pred, truth, ps, ncol, time, grid, KAGGLE)["r2"][col]
    pred[:, col] = 1.0
    wrong = climsim_scores(pred, truth, ps, ncol, time, grid, KAGGLE)["r2"][col]
    assert (exact, wrong) == (1.0, 0.0)
    with pytest.raises(ClimSimMetricError, match="every grid column of each time step"):
        climsim_scores(pred[:-5], truth[:-5], ps[:-5], ncol[:-5], time[:-5], grid, KAGGLE, "t.parquet")


def write_export_like_truth(path: Path, ids, truth, ncol, time, ps, grid: dict | None) -> Path:
    """What `tfpipe export` writes, reduced to what the score reads: ids, targets, ncol, time, state_ps."""
    frame = pd.DataFrame(truth, columns=list(KAGGLE.target_columns))
    frame.insert(0, "sample_id", ids)
    frame["ncol"], frame["time"], frame["state_ps"] = ncol, time, ps
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table.replace_schema_metadata(arrow_metadata(truth_metadata(KAGGLE, grid))), path)
    return path


def test_tfpipe_score_reports_both_metrics_with_the_grid_the_truth_carries(case, tmp_path: Path) -> None:
    pred, truth, ps, ncol, time = case
    ids = np.array([f"s{i}" for i in range(len(pred))])
    write_predictions(str(tmp_path / "p.parquet"), ids, pred)
    write_export_like_truth(
        tmp_path / "t.parquet", ids, truth, ncol, time, ps, grid_to_dict(make_grid(), "ne4")
    )
    result = subprocess.run(
        [sys.executable, "-m", "tfpipe.cli.main", "score", "--pred", str(tmp_path / "p.parquet"), "--truth",
         str(tmp_path / "t.parquet"), "--metric", "climsim"], cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    want = climsim_scores(pred, truth, ps, ncol, time, make_grid(), KAGGLE)["r2"]
    cols = KAGGLE.target_slice("ptend_t")
    assert report["climsim"]["variables"]["ptend_t"]["r2"] == pytest.approx(want[cols].mean(), rel=1e-9)
    assert 0 < report["r2"] < 1 and "ClimSim metrics" in result.stdout
    assert report["climsim"]["grid"] == f"ne4 (carried by {tmp_path / 't.parquet'})"
    table = pd.read_csv(report["climsim"]["per_variable_csv"])
    assert list(table.columns) == ["variable", "r2", "rmse", "mae", "bias"] and len(table) == 14


def test_climsim_refuses_a_truth_without_a_grid_unless_given_one(case, tmp_path: Path) -> None:
    """Never the synthetic built-in grid in silence: no grid in the truth and no --grid is an error."""
    pred, truth, ps, ncol, time = case
    ids = np.array([f"s{i}" for i in range(len(pred))])
    write_predictions(str(tmp_path / "p.parquet"), ids, pred)
    t = str(write_export_like_truth(tmp_path / "t.parquet", ids, truth, ncol, time, ps, None))
    with pytest.raises(
        ScoreError, match=r"t\.parquet: --metric climsim needs the data's grid .* pass --grid"
    ):
        score_files(str(tmp_path / "p.parquet"), t, out_dir=str(tmp_path / "s"), metric="climsim")
    assert not (tmp_path / "s").exists()  # refused before anything was written
    assert score_files(str(tmp_path / "p.parquet"), t, out_dir=str(tmp_path / "s"))["r2"] > 0  # Kaggle: fine

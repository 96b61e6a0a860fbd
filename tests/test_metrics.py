"""tfpipe.evaluate.metrics (the LEAP R²) and ``tfpipe score`` as a real subprocess."""

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

from tfpipe.data.schema import KAGGLE, NLEV
from tfpipe.evaluate.metrics import ScoreError, StreamingR2, kaggle_score, r2_scores
from tfpipe.evaluate.prediction_files import (
    arrow_metadata,
    load_predictions,
    load_truth,
    load_weights,
    truth_metadata,
    write_predictions,
    write_truth,
)
from tfpipe.evaluate.score import plot_r2_heatmap, r2_by_level, r2_table


def sklearn_r2_score():
    """scikit-learn's ``r2_score``, the reference for ours: installed in requirements-tfio.txt (make
    test-tfio) only, because Keras imports scikit-learn at every ``import tensorflow`` when it is there."""
    return pytest.importorskip("sklearn.metrics", reason="scikit-learn is in requirements-tfio.txt").r2_score


ROOT = Path(__file__).resolve().parents[1]
COLUMNS = list(KAGGLE.target_columns)
T = KAGGLE.n_targets
ZERO = np.isin(COLUMNS, KAGGLE.zero_weight_targets)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tfpipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tfpipe.cli.main", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def make_data(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n, T)) * rng.uniform(1e-3, 1e3, T) + rng.normal(size=T)
    pred = truth + rng.normal(size=(n, T)) * truth.std(axis=0) * rng.uniform(0.1, 1.5, T)
    ids = np.array([f"train_{i}" for i in range(n)], dtype=object)
    return ids, pred, truth


def write_weights(path: Path, weights: np.ndarray, rows: int = 3) -> None:
    frame = pd.DataFrame(np.tile(weights, (rows, 1)), columns=COLUMNS)
    frame.insert(0, "sample_id", [f"test_{i}" for i in range(rows)])
    frame.to_csv(path, index=False, float_format="%.17g")


def test_r2_equals_sklearn_per_column_with_zero_weight_targets_as_one() -> None:
    r2_score = sklearn_r2_score()
    _, pred, truth = make_data()
    truth[:, 100] = 3.0  # constant truth, exact prediction: sklearn gives 1
    pred[:, 100] = 3.0
    truth[:, 101] = 3.0  # constant truth, inexact prediction: sklearn gives 0
    expected = r2_score(truth, pred, multioutput="raw_values")
    assert expected[100] == 1.0 and expected[101] == 0.0
    expected[ZERO] = 1.0
    got = r2_scores(pred, truth)
    assert got.dtype == np.float64 and got.shape == (T,)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert kaggle_score(pred, truth) == pytest.approx(expected.mean(), rel=1e-13)


def test_weights_are_applied_as_kaggle_did(tmp_path: Path) -> None:
    r2_score = sklearn_r2_score()
    _, pred, truth = make_data(seed=1)
    rng = np.random.default_rng(2)
    weights = rng.uniform(0.5, 2e4, T)
    weights[ZERO] = 0.0
    weights[[350, 351]] = 0.0  # a weight file may zero more targets
    write_weights(tmp_path / "sample_submission.csv", weights)
    w = load_weights(str(tmp_path / "sample_submission.csv"))
    np.testing.assert_array_equal(w, weights)
    # Kaggle: sklearn's uniform average on weighted values; 0 against 0 is a perfect column.
    assert kaggle_score(pred, truth, w) == pytest.approx(r2_score(truth * w, pred * w), rel=1e-12)
    got = r2_scores(pred, truth, w)
    assert (got[ZERO] == 1.0).all() and got[350] == 1.0 and got[351] == 1.0
    assert got[352] == pytest.approx(r2_score(truth[:, 352], pred[:, 352]), rel=1e-12)


def test_weights_file_must_repeat_one_row_and_have_the_kaggle_columns(tmp_path: Path) -> None:
    weights = np.ones(T)
    path = tmp_path / "w.csv"
    write_weights(path, weights, rows=5)
    frame = pd.read_csv(path)
    frame.loc[3, "ptend_u_40"] = 2.0
    frame.to_csv(path, index=False)
    with pytest.raises(ScoreError, match=r"row 4 has ptend_u_40=2\.0, row 1 has 1\.0"):
        load_weights(str(path))
    frame.drop(columns=["cam_out_SOLL"]).to_csv(path, index=False)
    with pytest.raises(ScoreError, match=r"w\.csv: missing column 'cam_out_SOLL'"):
        load_weights(str(path))


def test_prediction_files_are_checked_for_columns_and_non_finite_values(tmp_path: Path) -> None:
    ids, pred, _ = make_data(n=6)
    good = tmp_path / "good.parquet"
    write_predictions(str(good), ids, pred)
    got_ids, got = load_predictions(str(good))
    assert list(got_ids) == list(ids) and got.dtype == np.float64
    np.testing.assert_array_equal(got, pred)

    frame = pd.read_parquet(good)
    bad = tmp_path / "bad.parquet"
    cases = {
        r"bad\.parquet: missing column 'ptend_v_7'": frame.drop(columns=["ptend_v_7"]),
        r"bad\.parquet: unexpected column 'extra'": frame.assign(extra=1.0),
        r"bad\.parquet: column 2 is 'ptend_t_2', expected 'ptend_t_1'": frame[
            ["sample_id", "ptend_t_0", "ptend_t_2", "ptend_t_1", *COLUMNS[3:]]
        ],
    }
    for message, data in cases.items():
        data.to_parquet(bad, index=False)
        with pytest.raises(ScoreError, match=message):
            load_predictions(str(bad))
    frame.loc[[1, 4], "cam_out_PRECC"] = np.nan
    frame.loc[2, "ptend_q0001_30"] = np.inf
    frame.to_parquet(bad, index=False)
    with pytest.raises(ScoreError, match=r"2 columns: ptend_q0001_30 \(1 Inf\), cam_out_PRECC \(2 NaN\)"):
        load_predictions(str(bad))
    # A truth file may carry more columns (e.g. the inputs of `tfpipe export`).
    table = pa.Table.from_pandas(pd.read_parquet(good).assign(ncol=np.arange(6)), preserve_index=False)
    pq.write_table(table.replace_schema_metadata(arrow_metadata(truth_metadata(KAGGLE))), bad)
    assert load_truth(str(bad))[1].shape == (6, T)


def test_tables_and_heat_map(tmp_path: Path) -> None:
    _, pred, truth = make_data(seed=3)
    table = r2_table(r2_scores(pred, truth))
    assert list(table.columns) == ["target", "variable", "level", "r2", "weight"] and len(table) == T
    assert table.loc[table["target"] == "ptend_u_3", "weight"].item() == 0.0
    assert table.loc[table["target"] == "cam_out_NETSW", "level"].item() == -1
    wide = r2_by_level(table)
    assert wide.shape == (len(KAGGLE.targets), 1 + NLEV)
    assert wide.loc["ptend_t", "59"] == table.loc[table["target"] == "ptend_t_59", "r2"].item()
    assert wide["mean"].mean() != 0 and np.isnan(wide.loc["cam_out_SOLS", "0"])
    out = plot_r2_heatmap(table, str(tmp_path / "h.png"))
    data = Path(out).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_score_cli_aligns_rows_by_id_and_writes_tables_and_png(tmp_path: Path) -> None:
    ids, pred, truth = make_data(seed=4)
    write_predictions(str(tmp_path / "P.parquet"), ids, pred)
    perm = np.random.default_rng(0).permutation(len(ids))
    write_truth(str(tmp_path / "T.parquet"), ids[perm], truth[perm])  # other row order
    result = tfpipe("score", "--pred", str(tmp_path / "P.parquet"), "--truth", str(tmp_path / "T.parquet"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["r2"] == pytest.approx(kaggle_score(pred, truth), rel=1e-12) and report["n"] == len(ids)
    assert Path(report["heatmap"]) == tmp_path / "P.score" / "r2_heatmap.png"
    assert Path(report["heatmap"]).read_bytes().startswith(PNG_MAGIC)
    table = pd.read_csv(report["per_target_csv"])
    assert list(table["target"]) == COLUMNS
    assert table["r2"].mean() == pytest.approx(report["r2"], rel=1e-9)
    assert pd.read_csv(report["per_level_csv"]).shape == (len(KAGGLE.targets), 2 + NLEV)


def test_score_cli_errors_are_one_line(tmp_path: Path) -> None:
    ids, pred, truth = make_data(n=8, seed=5)
    write_predictions(str(tmp_path / "P.parquet"), ids, pred)
    other = ids.copy()
    other[5] = "train_999"
    write_truth(str(tmp_path / "T.parquet"), other, truth)
    result = tfpipe("score", "--pred", str(tmp_path / "P.parquet"), "--truth", str(tmp_path / "T.parquet"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfpipe score: error: ")
    assert "P.parquet" in lines[0] and "T.parquet" in lines[0] and "'train_5'" in lines[0]

    pred[3, 7] = np.nan
    write_predictions(str(tmp_path / "N.parquet"), ids, pred)
    result = tfpipe("score", "--pred", str(tmp_path / "N.parquet"), "--truth", str(tmp_path / "T.parquet"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"tfpipe score: error: {tmp_path / 'N.parquet'}: non-finite values in 1 columns: ptend_t_7 (1 NaN)"
    )


def test_streaming_r2_equals_sklearn_batch_by_batch() -> None:
    r2_score = sklearn_r2_score()
    rng = np.random.default_rng(4)
    truth = rng.normal(size=(5000, 6)) * [1.0, 1e-3, 1e6, 1.0, 1.0, 1.0] + [0.0, 0.0, 1e9, 5.0, 0.0, 0.0]
    pred = truth + rng.normal(size=truth.shape) * [0.5, 1e-4, 1e5, 2.0, 0.0, 0.1]
    truth[:, 4] = 7.0  # constant column, predicted exactly
    pred[:, 4] = 7.0
    truth[:, 5] = 3.0  # constant column, predicted with errors
    streaming = StreamingR2(6)
    for start in range(0, 5000, 733):  # uneven batches
        streaming.update(truth[start : start + 733], pred[start : start + 733])
    want = r2_score(truth, pred, multioutput="raw_values", force_finite=True)
    np.testing.assert_allclose(streaming.r2(), want, rtol=1e-10, atol=1e-12)
    assert streaming.n == 5000 and streaming.r2()[4] == 1.0 and streaming.r2()[5] == 0.0
    np.testing.assert_allclose(streaming.r2()[:4], r2_scores_of(truth[:, :4], pred[:, :4]), rtol=1e-10)


def r2_scores_of(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    ss_res = ((truth - pred) ** 2).sum(axis=0)
    ss_tot = ((truth - truth.mean(axis=0)) ** 2).sum(axis=0)
    return 1 - ss_res / ss_tot


def test_score_names_the_worst_and_the_near_constant_targets(tmp_path: Path) -> None:
    """A test period where ptend_q0002_34 is ~1e-18 everywhere: its R² dominates, and score says why."""
    rng = np.random.default_rng(7)
    truth = rng.normal(size=(400, T))
    k = COLUMNS.index("ptend_q0002_34")
    truth[:, k] = 1e-18 * rng.normal(size=400)
    pred = truth + 0.1 * rng.normal(size=truth.shape)
    pred[:, k] = 1e-12 * rng.normal(size=400)  # a tiny error, but huge against the truth's spread
    ids = np.array([f"s{i}" for i in range(400)])
    write_predictions(str(tmp_path / "p.parquet"), ids, pred)
    write_truth(str(tmp_path / "t.parquet"), ids, truth)
    result = tfpipe("score", "--pred", str(tmp_path / "p.parquet"), "--truth", str(tmp_path / "t.parquet"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["worst"][0]["target"] == "ptend_q0002_34" and report["worst"][0]["near_constant"]
    assert report["near_constant_targets"] == ["ptend_q0002_34"]
    assert report["r2"] < -1000 and report["r2_near_constant_as_1"] > 0.9
    assert lines[1].startswith("worst targets: ptend_q0002_34 ")
    assert "1 target(s) have nearly constant truth here: ptend_q0002_34 (truth std 1e-18" in lines[2]
    assert "hugely negative" in lines[2]

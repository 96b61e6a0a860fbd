"""What `tfpipe score` accepts as truth, which layout and which grid it scores with (issue 22, items 3-5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfpipe.blend import blend_files
from tfpipe.data.schema import SCHEMAS, V1
from tfpipe.evaluate.export import export_parquet
from tfpipe.evaluate.metrics import ScoreError, r2_scores
from tfpipe.evaluate.prediction_files import (
    load_predictions,
    load_truth,
    read_tfpipe_metadata,
    write_predictions,
    write_truth,
)
from tfpipe.evaluate.score import score_files

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT.parent / "shared" / "climsim_ref"
REF_GRID = REF / "grid_info" / "ClimSim_low-res_grid-info.nc"
needs_ref = pytest.mark.skipif(
    not REF.exists(),
    reason="needs ../shared/climsim_ref (the real ClimSim reference files; README 'Reference data')",
)


def tfpipe(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tfpipe.cli.main", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfpipe score: error: "), lines
    return lines[0]


def pair(folder: Path, schema=V1, n: int = 30) -> tuple[Path, Path]:
    """(predictions, truth) files of ``schema`` with random values."""
    rng = np.random.default_rng(0)
    ids = np.array([f"s{i}" for i in range(n)], dtype=object)
    truth = rng.normal(size=(n, schema.n_targets))
    pred = truth + 0.5 * rng.normal(size=truth.shape)
    p = write_predictions(str(folder / f"{schema.name}.parquet"), ids, pred, schema)
    t = write_truth(str(folder / f"{schema.name}.truth.parquet"), ids, truth, schema)
    return Path(p), Path(t)


@needs_ref
def test_climsim_without_grid_equals_the_run_with_the_real_grid(small_raw_tree: Path, tmp_path: Path) -> None:
    """The truth carries the encoded folder's grid-info.nc (here the real ClimSim grid), not tfpipe's own."""
    from data_prep.encode import EncodeConfig, encode_shard

    enc = tmp_path / "enc"
    encode_shard(EncodeConfig(str(small_raw_tree), str(enc), 0, 1, grid=str(REF_GRID), progress=False))
    truth = tmp_path / "t.parquet"
    assert export_parquet(str(enc), str(truth))["grid"] == str(enc / "grid-info.nc")
    ids, y = load_truth(str(truth))
    pred = y * (1 + 0.2 * np.random.default_rng(1).normal(size=y.shape))
    write_predictions(str(tmp_path / "p.parquet"), ids, pred)

    result = tfpipe("score", "--pred", tmp_path / "p.parquet", "--truth", truth, "--metric", "climsim",
                    "--out-dir", tmp_path / "own")  # fmt: skip
    assert result.returncode == 0, result.stderr
    own = json.loads(result.stdout.strip().splitlines()[-1])["climsim"]
    assert own["grid"] == f"{enc / 'grid-info.nc'} (carried by {truth})"
    given = score_files(str(tmp_path / "p.parquet"), str(truth), out_dir=str(tmp_path / "given"),
                        metric="climsim", grid=str(REF_GRID))["climsim"]  # fmt: skip
    assert own["variables"] == given["variables"] and "grid_warning" not in given
    csv = "climsim_per_target.csv"
    assert (tmp_path / "own" / csv).read_bytes() == (tmp_path / "given" / csv).read_bytes()
    # tfpipe's synthetic grid gives other numbers: the run without --grid did not fall back to it
    synthetic = score_files(str(tmp_path / "p.parquet"), str(truth), out_dir=str(tmp_path / "synthetic"),
                            metric="climsim", grid=str(small_raw_tree / "grid-info.nc"))["climsim"]  # fmt: skip
    assert synthetic["variables"]["ptend_t"]["rmse"] != own["variables"]["ptend_t"]["rmse"]
    assert "differs from the grid" in synthetic["grid_warning"]


def test_every_layout_scores_and_v1_from_the_command_line(tmp_path: Path) -> None:
    for schema in SCHEMAS.values():
        p, t = pair(tmp_path, schema)
        report = score_files(str(p), str(t), out_dir=str(tmp_path / f"{schema.name}.score"))
        want = r2_scores(load_predictions(str(p), schema)[1], load_truth(str(t))[1], None, schema).mean()
        assert (report["schema"], report["n_targets"]) == (schema.name, schema.n_targets)
        assert report["r2"] == pytest.approx(want, rel=1e-12)
    p, t = pair(tmp_path, V1)
    result = tfpipe("score", "--pred", p, "--truth", t)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["schema"] == "v1" and report["n_targets"] == V1.n_targets == 128
    assert result.stdout.startswith(f"R² {report['r2']:.6f} over 128 v1 targets, 30 rows")


def test_a_prediction_as_truth_is_refused_and_so_are_its_siblings(tmp_path: Path) -> None:
    p, t = pair(tmp_path, SCHEMAS["kaggle"])
    line = one_error_line(tfpipe("score", "--pred", p, "--truth", p))
    assert line == (
        f"tfpipe score: error: {p}: a prediction file, not a truth file; the truth is what "
        "`tfpipe export --data ENCODED --out T.parquet` or `tfpipe predict --oof` writes"
    )
    assert not (tmp_path / "kaggle.score").exists()
    # the reverse: a truth passed as predictions
    with pytest.raises(ScoreError, match=r"kaggle\.truth\.parquet: a truth file, not predictions"):
        score_files(str(t), str(t))
    # a parquet without tfpipe's mark (another tool, or an older tfpipe): refused, with how to re-make it
    foreign = tmp_path / "foreign.parquet"
    pd.read_parquet(t).to_parquet(foreign, index=False)
    assert read_tfpipe_metadata(str(foreign)) == {}
    with pytest.raises(
        ScoreError, match=r"foreign\.parquet: not a tfpipe truth file .* `tfpipe export --data"
    ):
        score_files(str(p), str(foreign))
    # tfpipe blend --truth goes through the same check
    with pytest.raises(ScoreError, match=r"kaggle\.parquet: a prediction file, not a truth file"):
        blend_files([str(p), str(p)], str(tmp_path / "b.parquet"), truth=str(p), method="hill-climb")
    assert not (tmp_path / "b.parquet").exists()
    # a truth of another layout is named as such
    with pytest.raises(ScoreError, match=r"v1\.truth\.parquet: a truth of the v1 layout, expected kaggle"):
        load_truth(str(pair(tmp_path, V1)[1]), SCHEMAS["kaggle"])

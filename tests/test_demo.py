"""The README's main command: ``tfpipe demo`` runs the whole chain on a fresh work dir (minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

TFPIPE = Path(sys.executable).parent / "tfpipe"


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_end_to_end(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [str(TFPIPE), "demo", "--workdir", str(workdir)], capture_output=True, text=True, timeout=1500
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # never silent for minutes: one line per sub-epoch of each model, with its validation R²
    assert result.stderr.count("[train] ckpt-") >= 2 * 4 and "(train var; Kaggle R² " in result.stderr
    assert "I0000" not in result.stderr and "Traceback" not in result.stderr
    r2 = summary["r2"]
    # the flagship beats the baseline on held-out data; the blend does not lose to its best model
    assert r2["squeezeformer"] > r2["mlp"] > 0, r2
    assert max(r2["squeezeformer"], r2["mlp"]) - 0.005 <= r2["blend"] <= 1, summary["blend"]
    assert set(summary["blend"]["weights"]) == {"squeezeformer", "mlp"}
    assert "[demo] blend (hill-climb on r2_train_var): weights squeezeformer " in result.stderr
    # the README shows what the demo prints: the same keys, as one run printed them
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    shown = json.loads(readme.split("```json\n", 1)[1].split("```", 1)[0])
    assert set(shown) <= set(summary) and set(shown["r2"]) == set(r2) and set(shown["blend"]) <= set(summary["blend"])
    assert summary["resumed_from"] == "ckpt-2"
    assert summary["encode"]["killed_shard"] == 1 and not summary["encode"]["manifest_before_rerun"]
    assert summary["encode"]["shards"] == 3 and summary["encode"]["samples"] == 72 * 384
    report = Path(summary["report"])
    assert report.is_file() and "squeezeformer" in report.read_text()
    blend_row = next(line for line in report.read_text().splitlines() if line.startswith("| blend |"))
    # the blend's own out-of-fold score, never below its inputs'; near-constant targets are named and explained
    headline = summary["val_r2_train_var"]
    assert "nan" not in blend_row and headline["blend"] >= max(headline["squeezeformer"], headline["mlp"])
    assert all(-10 < v <= 1 for v in headline.values()), headline
    if summary["val_near_constant_targets"]:
        assert "nearly constant truth" in report.read_text()
    assert "Blend: hill climbing on r2_train_var, weights squeezeformer" in report.read_text()
    assert (workdir / "report" / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (workdir / "report" / "squeezeformer.score" / "r2_heatmap.png").is_file()
    # both models lowered their validation loss (issue: training on the synthetic physics works)
    for name in ("squeezeformer", "mlp"):
        metrics = pd.read_csv(workdir / "runs" / name / "metrics.csv")
        assert metrics["val_r2_normalized"].iloc[-1] > metrics["val_r2_normalized"].iloc[0]
    sub = pd.read_parquet(workdir / "predictions" / "squeezeformer.parquet")
    assert sub.shape == (24 * 384, 369) and sub.columns[0] == "sample_id"

    again = subprocess.run(
        [str(TFPIPE), "demo", "--workdir", str(workdir), "--quiet"], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads(again.stdout.strip().splitlines()[-1])
    assert rerun["r2"] == summary["r2"] and rerun["resumed_from"] == "ckpt-2"  # idempotent


def test_the_demo_cache_of_another_record_layout_is_not_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A cache written by an older tfpipe (record layout 1) sits beside the new one, never read."""
    from tfpipe.data.records import LAYOUT_VERSION
    from tfpipe.demo_data import demo_cache_dir

    monkeypatch.setenv("TFPIPE_CACHE", str(tmp_path))
    assert demo_cache_dir(2.0, 0) == tmp_path / f"demo-v1-l{LAYOUT_VERSION}-d2-s0"
    assert demo_cache_dir(2.0, 0) != tmp_path / "demo-v1-d2-s0"  # the name before layouts were named

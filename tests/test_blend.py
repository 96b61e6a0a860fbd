"""tfpipe.blend: equal, hill-climb and stacking blends, saved specs, and ``tfpipe blend`` as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfpipe.blend import (
    BlendError,
    apply_blend,
    blend_equal,
    combine,
    hill_climb,
    save_spec,
    stack_apply,
    stack_fit,
)
from tfpipe.data.schema import KAGGLE
from tfpipe.evaluate.metrics import kaggle_score
from tfpipe.evaluate.prediction_files import load_predictions, write_predictions, write_truth

ROOT = Path(__file__).resolve().parents[1]
T = KAGGLE.n_targets
NAMES = ["a", "b", "c"]


def tfpipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tfpipe.cli.main", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def models(n: int = 200, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Truth and three models: two good ones with independent errors, one poor one."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(1e-6, 1e3, T)
    truth = rng.normal(size=(n, T)) * scale + rng.normal(size=T) * scale
    a = truth + 0.5 * rng.normal(size=(n, T)) * scale
    b = truth + 0.6 * rng.normal(size=(n, T)) * scale
    c = 0.2 * truth + 1.5 * rng.normal(size=(n, T)) * scale
    return truth, [a, b, c]


def test_hill_climb_beats_the_best_single_model_and_equal_and_is_deterministic() -> None:
    truth, preds = models()
    singles = [kaggle_score(p, truth) for p in preds]
    first = hill_climb(preds, truth, NAMES)
    again = hill_climb(preds, truth, NAMES)
    np.testing.assert_array_equal(first.weights["all"], again.weights["all"])
    assert first.history == again.history
    assert first.weights["all"].sum() == pytest.approx(1.0, abs=1e-12)
    blended = combine(preds, first.column_weights())
    assert first.score == pytest.approx(kaggle_score(blended, truth), rel=1e-12)
    assert first.score >= max(singles)
    assert first.score > kaggle_score(blend_equal(preds), truth) + 0.05  # equal is dragged down by c
    assert first.history[0]["model"] == "a"  # the best single model starts with weight 1
    w_a, w_b, _ = first.weights["all"]
    assert 0.5 < w_a / (w_a + w_b) < 0.75  # ~0.59 for independent errors of 0.5 and 0.6


def test_hill_climb_never_ends_below_the_best_single_model_when_nothing_helps() -> None:
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(100, T))
    best = truth + 0.1 * rng.normal(size=truth.shape)
    preds = [rng.normal(size=truth.shape), best, rng.normal(size=truth.shape)]
    result = hill_climb(preds, truth, NAMES)
    assert result.score >= kaggle_score(best, truth) - 1e-12
    assert result.history[0]["model"] == "b"


def test_hill_climb_uses_negative_weights() -> None:
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(150, T))
    noise = rng.normal(size=truth.shape)
    preds = [truth + 2 * noise, truth + noise]  # 2 * b - a is exact
    result = hill_climb(preds, truth, ["a", "b"])
    w_a, w_b = result.weights["all"]
    assert w_a < -0.5 and w_b > 1.5
    assert result.score > kaggle_score(preds[1], truth) + 0.1


def test_per_group_hill_climb_gives_each_variable_its_own_weights() -> None:
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(150, T))
    heating = np.zeros(T, dtype=bool)
    heating[KAGGLE.target_slice("ptend_t")] = True
    good, bad = 0.2, 2.0
    a = truth + np.where(heating, good, bad) * rng.normal(size=truth.shape)  # good on ptend_t only
    b = truth + np.where(heating, bad, good) * rng.normal(size=truth.shape)  # good elsewhere
    grouped = hill_climb([a, b], truth, ["a", "b"], per_group=True)
    single = hill_climb([a, b], truth, ["a", "b"])
    assert set(grouped.weights) == set(KAGGLE.targets)
    assert grouped.weights["ptend_t"][0] > 0.9 and grouped.weights["ptend_u"][1] > 0.9
    assert grouped.weights["cam_out_NETSW"][1] > 0.9
    assert grouped.score > single.score + 0.01


def test_ridge_stacking_recovers_a_linear_mix() -> None:
    rng = np.random.default_rng(4)
    n = 300
    a, b = rng.normal(size=(n, T)), rng.normal(size=(n, T)) * 3 + 1
    truth = 0.7 * a + 0.2 * b + 0.5 + 0.05 * rng.normal(size=(n, T))
    model = stack_fit([a, b], truth, method="ridge")
    stacked = kaggle_score(stack_apply(model, [a, b]), truth)
    best = max(kaggle_score(a, truth), kaggle_score(b, truth))
    assert stacked > 0.99 and stacked > best + 0.2
    scored = ~np.isin(KAGGLE.target_columns, KAGGLE.zero_weight_targets)
    np.testing.assert_allclose(np.median(model.coef[scored], axis=0), [0.7, 0.2], atol=0.02)
    assert stacked > hill_climb([a, b], truth, ["a", "b"]).score  # an affine blend cannot rescale


def test_mlp_stacking_improves_on_equal_and_round_trips_through_its_spec(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    n = 48
    a, b = rng.normal(size=(n, T)), rng.normal(size=(n, T))
    truth = 0.9 * a + 0.1 * b
    model = stack_fit([a, b], truth, method="mlp", epochs=3)
    stacked = stack_apply(model, [a, b])
    assert kaggle_score(stacked, truth) > kaggle_score(blend_equal([a, b]), truth) + 0.1
    spec = str(tmp_path / "m.blend.json")
    save_spec(spec, "stack", ["a", "b"], model)
    np.testing.assert_allclose(apply_blend(spec, {"b": b, "a": a}), stacked, rtol=1e-6, atol=1e-6)


def test_specs_apply_by_name_or_order(tmp_path: Path) -> None:
    truth, preds = models(n=60, seed=6)
    result = hill_climb(preds, truth, NAMES, per_group=True)
    spec = str(tmp_path / "hc.blend.json")
    saved = save_spec(spec, "hill-climb", NAMES, result)
    assert saved["groups"]["ptend_t"] == ["ptend_t"] and len(saved["weights"]["ptend_t"]) == 3
    expected = combine(preds, result.column_weights())
    np.testing.assert_array_equal(apply_blend(spec, preds), expected)
    by_name = {"c": preds[2], "a": preds[0], "b": preds[1]}
    np.testing.assert_array_equal(apply_blend(spec, by_name), expected)
    with pytest.raises(BlendError, match="blends 3 models"):
        apply_blend(spec, preds[:2])


def write_models(folder: Path, truth: np.ndarray, preds: list[np.ndarray]) -> list[str]:
    ids = np.array([f"train_{i}" for i in range(len(truth))], dtype=object)
    write_truth(str(folder / "truth.parquet"), ids, truth)
    paths = []
    for name, pred in zip(NAMES, preds, strict=True):
        order = np.random.default_rng(len(paths)).permutation(len(ids))  # each file in its own row order
        paths.append(write_predictions(str(folder / f"{name}.parquet"), ids[order], pred[order]))
    return paths


def test_blend_cli_fits_writes_and_applies(tmp_path: Path) -> None:
    truth, preds = models(n=80, seed=7)
    paths = write_models(tmp_path, truth, preds)
    truth_path = str(tmp_path / "truth.parquet")
    for method, extra in (("hill-climb", ["--per-group"]), ("stack", [])):
        out = str(tmp_path / f"{method}.parquet")
        result = tfpipe(
            "blend", "--pred", *paths, "--truth", truth_path, "--method", method, *extra, "--out", out
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["r2_blend"] > max(report["r2_inputs"].values())
        assert report["spec"] == str(tmp_path / f"{method}.blend.json")
        ids, blended = load_predictions(out)
        # Applying the spec to the same models (in another order of rows) reproduces the blend.
        sub = str(tmp_path / f"{method}-sub.parquet")
        result = tfpipe("blend", "--apply", report["spec"], "--pred", *paths, "--out", sub)
        assert result.returncode == 0, result.stderr
        sub_ids, again = load_predictions(sub)
        assert list(sub_ids) == list(ids)
        np.testing.assert_allclose(again, blended, rtol=1e-13, atol=0)
    frame = pd.read_parquet(str(tmp_path / "stack.parquet"))
    assert list(frame.columns) == ["sample_id", *KAGGLE.target_columns]
    assert (frame.dtypes.iloc[1:] == np.float64).all()

    out = str(tmp_path / "equal.parquet")
    result = tfpipe("blend", "--pred", *paths, "--method", "equal", "--out", out)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["weights"] == [1 / 3] * 3
    ids, blended = load_predictions(out)  # rows in the order of the first file
    rows = [int(i.removeprefix("train_")) for i in ids]
    np.testing.assert_allclose(blended, blend_equal(preds)[rows], rtol=1e-13)


def test_blend_cli_errors_are_one_line(tmp_path: Path) -> None:
    truth, preds = models(n=20, seed=8)
    paths = write_models(tmp_path, truth, preds)
    ids = np.array([f"train_{i}" for i in range(19)], dtype=object)
    short = write_predictions(str(tmp_path / "short.parquet"), ids, preds[0][:19])
    nan = preds[1].copy()
    nan[4, [0, 365]] = np.nan
    ids = np.array([f"train_{i}" for i in range(20)], dtype=object)
    with_nan = write_predictions(str(tmp_path / "nan.parquet"), ids, nan)
    wrong = str(tmp_path / "wrong.parquet")
    pd.read_parquet(paths[0]).rename(columns={"cam_out_SOLS": "cam_out_SOLZ"}).to_parquet(wrong, index=False)
    out = str(tmp_path / "o.parquet")
    cases = [
        (
            ["--pred", paths[0], short, "--method", "equal"],
            ["a.parquet (20 rows)", "short.parquet (19 rows)"],
        ),
        (
            ["--pred", paths[0], with_nan, "--method", "equal"],
            ["nan.parquet", "ptend_t_0 (1 NaN), cam_out_SOLL (1 NaN)"],
        ),
        (["--pred", paths[0], wrong, "--method", "equal"], ["wrong.parquet: missing column 'cam_out_SOLS'"]),
        (["--pred", *paths, "--method", "hill-climb"], ["--method hill-climb needs --truth"]),
    ]
    for args, needles in cases:
        result = tfpipe("blend", *args, "--out", out)
        assert result.returncode == 2, result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tfpipe blend: error: "), lines
        for needle in needles:
            assert needle in lines[0]

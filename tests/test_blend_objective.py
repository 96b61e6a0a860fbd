"""What a fitted blend maximises: not ruled by near-constant validation targets, never below its best
input on the fitted rows, a held-out warning, and the report ``tfpipe blend`` prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfpipe.blend import BlendError, combine, hill_climb
from tfpipe.blend.hill_climbing import held_out_check
from tfpipe.blend.objective import scores
from tfpipe.data.schema import KAGGLE
from tfpipe.evaluate.metrics import kaggle_score, r2_train_var_scores
from tfpipe.evaluate.prediction_files import TRAIN_STD_KEY, write_predictions, write_truth

ROOT = Path(__file__).resolve().parents[1]
T = KAGGLE.n_targets
SCORED = np.flatnonzero(np.asarray(KAGGLE.target_weights()) > 0)
QUIET = SCORED[:3]  # the targets whose truth is nearly constant in the validation rows


def period(n: int, quiet: bool, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Truth (unit training std everywhere) and two models; ``quiet``: a short validation period in
    which three targets are nearly constant. ``good`` errs by 0.3 std everywhere (so by 1e-3 on the
    quiet targets: tiny in training units, huge next to their validation std); ``poor`` errs by 0.8 std
    but is exact on the quiet targets."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n, T))
    if quiet:
        truth[:, QUIET] = 1e-6 * rng.normal(size=(n, len(QUIET)))
    good = truth + 0.3 * rng.normal(size=(n, T))
    good[:, QUIET] = truth[:, QUIET] + (1e-3 if quiet else 0.3) * rng.normal(size=(n, len(QUIET)))
    poor = truth + 0.8 * rng.normal(size=(n, T))
    poor[:, QUIET] = truth[:, QUIET] + (0.0 if quiet else 0.8) * rng.normal(size=(n, len(QUIET)))
    return truth, [good, poor]


def test_a_blend_fitted_on_the_training_variance_carries_over_where_the_raw_r2_does_not() -> None:
    truth, preds = period(400, quiet=True, seed=0)
    test_truth, test_preds = period(4000, quiet=False, seed=1)
    std = np.ones(T)
    raw = hill_climb(preds, truth, ["good", "poor"], objective="r2")
    robust = hill_climb(preds, truth, ["good", "poor"], objective="auto", train_std=std)
    assert robust.objective == "r2_train_var"
    assert raw.weights["all"][1] > 0.5  # the quiet targets pull the raw-R² blend to the poor model
    assert robust.weights["all"][0] > 0.8
    best_test = max(kaggle_score(p, test_truth) for p in test_preds)
    robust_test = kaggle_score(combine(test_preds, robust.column_weights()), test_truth)
    raw_test = kaggle_score(combine(test_preds, raw.column_weights()), test_truth)
    assert robust_test >= best_test - 0.005
    assert raw_test < best_test - 0.05


@pytest.mark.parametrize("objective", ["r2", "r2_near_constant_as_1", "r2_train_var"])
def test_the_blend_never_scores_below_its_best_input_on_the_rows_it_was_fitted_on(objective: str) -> None:
    truth, preds = period(300, quiet=True, seed=2)
    std = np.ones(T)
    fitted = hill_climb(preds, truth, ["good", "poor"], objective=objective, train_std=std)
    singles = [scores(objective, p, truth, None, KAGGLE, std).mean() for p in preds]
    blended = combine(preds, fitted.column_weights())
    assert fitted.score == pytest.approx(
        scores(objective, blended, truth, None, KAGGLE, std).mean(), abs=1e-9
    )
    assert fitted.score >= max(singles) - 1e-12
    assert fitted.single_scores == pytest.approx(dict(zip(["good", "poor"], singles, strict=True)))


def test_r2_train_var_is_one_minus_mse_over_the_training_variance() -> None:
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(50, T))
    pred = truth + 0.5 * rng.normal(size=(50, T))
    std = rng.uniform(0.5, 2.0, T)
    expected = 1 - ((pred - truth) ** 2).mean(axis=0) / std**2
    got = r2_train_var_scores(pred, truth, std)
    zero = np.asarray(KAGGLE.target_weights()) == 0
    np.testing.assert_allclose(got[~zero], expected[~zero], rtol=1e-12)
    assert (got[zero] == 1).all()


def halves(truth: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Model a is exact on the first half of the rows, b on the second, both poor elsewhere."""
    rng = np.random.default_rng(seed)
    n = len(truth)
    a, b = truth + 2.0 * rng.normal(size=truth.shape), truth + 2.0 * rng.normal(size=truth.shape)
    a[: n // 2], b[n // 2 :] = truth[: n // 2], truth[n // 2 :]
    return a, b


def test_held_out_check_flags_a_blend_that_does_not_carry_over() -> None:
    """Whatever one half of the rows picks loses on the other, while each model alone is right on one."""
    truth = np.random.default_rng(4).normal(size=(400, T))
    a, b = halves(truth, seed=4)
    held = held_out_check([a, b], truth, ["a", "b"], objective="r2_train_var", train_std=np.ones(T))
    assert not held["beats_best"]
    assert held["blend"] < max(held["models"].values())
    truth2, preds2 = period(400, quiet=False, seed=5)
    assert held_out_check(preds2, truth2, ["good", "poor"])["beats_best"]


def test_objective_r2_train_var_without_a_training_std_is_an_error() -> None:
    truth, preds = period(50, quiet=False, seed=6)
    with pytest.raises(BlendError, match="training std"):
        hill_climb(preds, truth, ["good", "poor"], objective="r2_train_var")


def hill_climb_cli(tmp_path: Path, preds: dict[str, np.ndarray], truth_path: str) -> tuple[dict, str]:
    """``tfpipe blend --method hill-climb`` (a real process) on these predictions: (JSON report, stderr)."""
    ids = np.array([f"s{i}" for i in range(len(next(iter(preds.values()))))])
    paths = [write_predictions(str(tmp_path / f"{n}.parquet"), ids, p) for n, p in preds.items()]
    proc = subprocess.run(
        [sys.executable, "-m", "tfpipe.cli.main", "blend", "--pred", *paths, "--truth", truth_path,
         "--method", "hill-climb", "--out", str(tmp_path / "blend.parquet")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_tfpipe_blend_uses_the_truths_training_std_and_reports_weights_scores_and_a_warning(
    tmp_path: Path,
) -> None:
    truth, preds = period(200, quiet=True, seed=7)
    ids = np.array([f"s{i}" for i in range(len(truth))])
    truth_path = write_truth(
        str(tmp_path / "oof.truth.parquet"), ids, truth, extra={TRAIN_STD_KEY: [1.0] * T}
    )
    report, stderr = hill_climb_cli(tmp_path, {"good": preds[0], "poor": preds[1]}, truth_path)
    assert report["objective"] == "r2_train_var"
    assert report["fit"]["blend"] >= max(report["fit"]["good"], report["fit"]["poor"])
    assert report["weights"][0] > 0.8
    assert report["held_out"]["beats_best"] and "warning" not in report
    assert "weights: good " in stderr
    assert "fitted rows (r2_train_var): good" in stderr
    # models each right on one half of the rows (as in the held-out test): the warning, on stderr and in JSON
    a, b = halves(truth, seed=8)
    report, stderr = hill_climb_cli(tmp_path, {"a": a, "b": b}, truth_path)
    assert not report["held_out"]["beats_best"]
    assert report["warning"].startswith("on held-out rows")
    assert "tfpipe blend: warning: on held-out rows" in stderr

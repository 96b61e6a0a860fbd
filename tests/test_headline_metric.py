"""The headline validation R² (``val_r2_train_var``): logged beside the Kaggle R², reproduced by predicting
the validation rows, and runs started with ``select_metric=val_r2`` keep it when resumed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_runs import TINY_CONFIG, tiny_overrides

from tfpipe.config import load_config
from tfpipe.evaluate.metrics import r2_train_var_scores
from tfpipe.evaluate.prediction_files import TRAIN_STD_KEY, load_predictions, load_truth, read_tfpipe_metadata
from tfpipe.predict import predict
from tfpipe.train import train


def test_a_val_r2_run_resumed_with_the_default_keeps_val_r2_and_the_headline_reproduces_from_predict(
    tiny_encoded: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    started = load_config(TINY_CONFIG, tiny_overrides(tiny_encoded, run, "select_metric=val_r2"))
    train(started, stop_after_sub_epochs=1, verbose=0)
    capsys.readouterr()
    default = load_config(TINY_CONFIG, tiny_overrides(tiny_encoded, run))
    assert default.select_metric == "val_r2_train_var"
    summary = train(default, verbose=0)  # the same command as a new user's, after the upgrade
    err = capsys.readouterr().err
    assert summary["finished"] and summary["resumed_from"] == "ckpt-1"
    assert "this run picks its best checkpoint by val_r2, as when it started" in err
    assert json.loads((run / "best.json").read_text())["metric"] == "val_r2"
    assert summary["select_metric"] == "val_r2"

    rows = pd.read_csv(run / "metrics.csv")
    assert rows["val_r2_train_var"].between(-10, 1).all()
    assert "val R² " in err and "(train var; Kaggle R² " in err

    best = json.loads((run / "best.json").read_text())["checkpoint"]
    val = json.loads((run / "checkpoints" / f"{best}.state.json").read_text())["val"]
    out = predict(str(run / "best.keras"), None, str(tmp_path / "oof.parquet"), oof=True)
    _, pred = load_predictions(out["out"])
    _, truth = load_truth(out["truth"])
    std = np.asarray(read_tfpipe_metadata(out["truth"])[TRAIN_STD_KEY])
    assert r2_train_var_scores(pred, truth, std).mean() == pytest.approx(val["val_r2_train_var"], abs=1e-6)

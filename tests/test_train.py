"""tfpipe.train: sub-epoch checkpoints, exact resume, config guards, time budget; tfpipe.predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from gcs_emulator import HAS_TF_GCS_PLUGIN, NO_TF_GCS_PLUGIN

from data_prep.encode import EncodeConfig, encode_shard
from data_prep.stats import compute_stats
from tfpipe.config import load_config
from tfpipe.predict import predict
from tfpipe.train import TrainError, available_checkpoints, train

ROOT = Path(__file__).resolve().parents[1]
TINY_MLP = [
    "model.name=mlp", "model.mlp_units=[64,64]", "data.batch_size=128", "data.sub_epochs=2", "epochs=2",
    "data.val_fraction=0.25", "data.shuffle_buffer=512", "optim.warmup_steps=0.1",
    "steps_per_execution=20", "loss.confidence_weight=0.1", "seed=3",
]  # fmt: skip


@pytest.fixture(scope="module")
def encoded(raw_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("train-data") / "enc"
    for i in range(2):
        encode_shard(EncodeConfig(str(raw_tree), str(dst), i, 2, blocks_per_file=2, progress=False))
    (dst / "stats.json").write_text(compute_stats(str(dst)).to_json())
    return dst


def config(encoded: Path, run_dir: Path, *extra: str):
    return load_config(
        "configs/tiny.yaml", [*TINY_MLP, f"data.sources.0.path={encoded}", f"run_dir={run_dir}", *extra]
    )


def weights_of(run_dir: Path, n: int) -> list[np.ndarray]:
    """Every variable of checkpoint ``n``: the model's (BatchNorm moments and statistics included) and
    the optimizer's (slots, EMA, step). TF files each variable once, under its first path from the root
    (trainable weights appear under ``optimizer/_trainable_variables``)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints" / f"ckpt-{n}"))
    names = sorted(k for k in reader.get_variable_to_shape_map() if k.startswith(("model/", "optimizer/")))
    assert any("moving_mean" in k for k in names) or not any("squeeze" in k for k in names)
    return [reader.get_tensor(k) for k in names]


@pytest.fixture(scope="module")
def straight_run(encoded: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "straight"
    summary = train(config(encoded, run), deterministic=True, verbose=0)
    assert summary["finished"] and summary["sub_epochs_run"] == 4 and summary["resumed_from"] is None
    return run


def test_interrupted_and_resumed_equals_uninterrupted(
    encoded: Path, straight_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "interrupted"
    first = train(config(encoded, run), stop_after_sub_epochs=1, deterministic=True, verbose=0)
    assert first["stopped"] == "stop-after-sub-epochs" and first["next"] == {"epoch": 0, "sub_epoch": 1}
    assert available_checkpoints(str(run)) == [1]
    result = subprocess.run(
        [sys.executable, "-m", "tfpipe.train", "--config", "configs/tiny.yaml", *TINY_MLP,
         f"data.sources.0.path={encoded}", "--run-dir", str(run), "--resume", "latest", "--deterministic", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"] == "ckpt-1" and summary["finished"] and summary["sub_epochs_run"] == 3
    straight = json.loads((straight_run / "checkpoints" / "ckpt-4.state.json").read_text())
    resumed = json.loads((run / "checkpoints" / "ckpt-4.state.json").read_text())
    assert resumed["step"] == straight["step"]
    for a, b in zip(weights_of(straight_run, 4), weights_of(run, 4), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert abs(resumed["val"]["val_r2"] - straight["val"]["val_r2"]) < 1e-4
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["checkpoint"]) == [1, 2, 3, 4]
    assert (run / "best.keras").is_file() and (run / "config.yaml").is_file()


def test_training_lowers_validation_loss(straight_run: Path) -> None:
    metrics = pd.read_csv(straight_run / "metrics.csv")
    assert metrics["val_r2"].iloc[-1] > metrics["val_r2"].iloc[0]
    assert metrics["loss"].iloc[-1] < metrics["loss"].iloc[0]
    assert metrics["lr"].iloc[-1] < metrics["lr"].max()  # the cosine decay runs


def test_default_resume_and_guards(encoded: Path, straight_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "guarded"
    train(config(encoded, run), stop_after_sub_epochs=1, verbose=0)
    again = train(config(encoded, run), stop_after_sub_epochs=1, verbose=0)  # no --resume: takes the latest
    assert again["resumed_from"] == "ckpt-1" and again["next"] == {"epoch": 1, "sub_epoch": 0}
    with pytest.raises(TrainError, match=r"no such checkpoint .*available: ckpt-1, ckpt-2"):
        train(config(encoded, run), resume="ckpt-7", verbose=0)
    with pytest.raises(TrainError, match="trained with another model.mlp_units.*start a new run dir"):
        train(config(encoded, run, "model.mlp_units=[32,32]"), verbose=0)
    with pytest.raises(TrainError, match="trained with another model.mlp_units.*start a new run dir"):
        train(config(encoded, run, "model.mlp_units=[32,32]"), allow_config_change=True, verbose=0)
    with pytest.raises(TrainError, match="the config differs in epochs; pass --allow-config-change"):
        train(config(encoded, run, "epochs=3"), verbose=0)
    longer = train(
        config(encoded, run, "epochs=3"), allow_config_change=True, stop_after_sub_epochs=1, verbose=0
    )
    assert longer["resumed_from"] == "ckpt-2" and longer["next"] == {"epoch": 1, "sub_epoch": 1}
    with pytest.raises(TrainError, match="--resume latest: .* has no checkpoints"):
        train(config(encoded, tmp_path / "empty"), resume="latest", verbose=0)


@pytest.mark.scenario
def test_time_budget_stops_cleanly(encoded: Path, tmp_path: Path) -> None:
    summary = train(config(encoded, tmp_path / "budget", "time_budget=1s"), verbose=0)
    assert summary["stopped"] == "time budget" and summary["sub_epochs_run"] == 1
    assert available_checkpoints(str(tmp_path / "budget")) == [1]


def test_bfloat16_then_float32_after_an_epoch(encoded: Path, tmp_path: Path) -> None:
    run = tmp_path / "bf16"
    cfg = config(encoded, run, "precision=mixed_bfloat16", "float32_after_epoch=1")
    first = train(cfg, stop_after_sub_epochs=1, verbose=0)
    assert first["precision"] == "mixed_bfloat16"
    rest = train(cfg, verbose=0)  # resumes the bf16 checkpoint, switches to float32 at epoch 1
    assert rest["resumed_from"] == "ckpt-1" and rest["finished"] and rest["precision"] == "float32"
    metrics = pd.read_csv(run / "metrics.csv")
    assert np.isfinite(metrics["loss"]).all() and metrics["loss"].iloc[-1] < metrics["loss"].iloc[0]


def test_cli_errors(encoded: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tfpipe.train", "--config", "configs/tiny.yaml", "model.nope=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "model.nope" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ predict


def test_predict_checkpoint_and_keras_agree_and_ptend_rule(
    raw_tree: Path, encoded: Path, straight_run: Path, tmp_path: Path
) -> None:
    a = predict(str(straight_run / "best.keras"), str(encoded), str(tmp_path / "a.parquet"), batch_size=1000)
    best = json.loads((straight_run / "checkpoints" / "ckpt-4.state.json").read_text())["best_checkpoint"]
    b = predict(str(straight_run / "checkpoints" / f"ckpt-{best}"), str(encoded), str(tmp_path / "b.parquet"),
                batch_size=1000)  # fmt: skip
    assert a["rows"] == b["rows"] == 74 * 384
    pa_, pb = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    pd.testing.assert_frame_equal(pa_, pb)
    assert pa_.columns[0] == "sample_id" and pa_.shape[1] == 369
    assert pq.ParquetFile(tmp_path / "a.parquet").num_row_groups >= 2  # streamed in row groups
    from tfpipe.evaluate.export import export_parquet

    truth = pd.read_parquet(export_parquet(str(encoded), str(tmp_path / "t.parquet"))["out"])
    assert list(truth["sample_id"]) == list(pa_["sample_id"])  # input order
    # the replacement rule reproduces the float64 truth of the raw files exactly, 1e-50 traces included
    from data_prep.encode import list_raw_pairs
    from data_prep.raw import read_pair
    from tfpipe.data.schema import KAGGLE

    cols = [f"ptend_q0002_{k}" for k in range(12, 28)]
    index = [KAGGLE.target_columns.index(c) for c in cols]
    exact = {}
    for mli, mlo in list_raw_pairs(str(raw_tree), 1):
        raw = read_pair(mli, mlo, KAGGLE)
        exact |= {f"{raw.time.stamp}_{c}": raw.targets[c, index] for c in raw.ncol}
    want = np.stack([exact[i] for i in pa_["sample_id"]])
    np.testing.assert_array_equal(pa_[cols].to_numpy(), want)
    assert (np.abs(want) < 1e-40).any()
    assert (pa_[[f"ptend_u_{k}" for k in range(12)]] == 0).all().all()


def test_predict_csv_equals_encoded(encoded: Path, straight_run: Path, tmp_path: Path) -> None:
    from tfpipe.data.schema import KAGGLE
    from tfpipe.evaluate.export import export_parquet

    frame = pd.read_parquet(export_parquet(str(encoded), str(tmp_path / "t.parquet"))["out"]).iloc[:1500]
    frame[["sample_id", *KAGGLE.input_columns]].to_csv(
        tmp_path / "test.csv", index=False, float_format="%.17g"
    )
    test_enc = tmp_path / "test-enc"
    encode_shard(
        EncodeConfig(str(tmp_path / "test.csv"), str(test_enc), 0, 1, format="kaggle-csv", progress=False)
    )
    model = str(straight_run / "best.keras")
    predict(model, str(tmp_path / "test.csv"), str(tmp_path / "csv.parquet"), batch_size=256)
    predict(model, str(test_enc), str(tmp_path / "enc.parquet"), batch_size=256)
    assert (tmp_path / "csv.parquet").read_bytes() == (tmp_path / "enc.parquet").read_bytes()
    bad = frame[["sample_id", *KAGGLE.input_columns]].rename(columns={"state_t_0": "state_T_0"})
    bad.to_csv(tmp_path / "bad.csv", index=False)
    result = subprocess.run(
        [sys.executable, "-m", "tfpipe.predict", "--checkpoint", model, "--data", str(tmp_path / "bad.csv"),
         "--out", str(tmp_path / "bad.parquet")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "bad.csv: column 1 is 'state_T_0'" in result.stderr
    assert not (tmp_path / "bad.parquet").exists() and not list(tmp_path.glob(".*tfpipe-tmp*"))


def test_predict_refuses_a_checkpoint_of_another_layout(
    encoded: Path, straight_run: Path, tmp_path: Path
) -> None:
    import shutil

    from tfpipe.predict import PredictError

    other = tmp_path / "other"
    shutil.copytree(straight_run, other)
    cfg = (other / "config.yaml").read_text().replace("[column, variable, log]", "[column]")
    (other / "config.yaml").write_text(cfg)
    with pytest.raises(PredictError, match=r"ckpt-4: does not fit the model of .*config.yaml"):
        predict(str(other / "checkpoints" / "ckpt-4"), str(encoded), str(tmp_path / "x.parquet"))
    # best.keras carries its own layout and statistics: the edited config.yaml does not matter to it
    out = predict(str(other / "best.keras"), str(encoded), str(tmp_path / "y.parquet"), batch_size=4096)
    assert out["rows"] == 74 * 384


@pytest.mark.skipif(not HAS_TF_GCS_PLUGIN, reason=NO_TF_GCS_PLUGIN)
def test_run_dir_on_the_gcs_emulator_with_ema(encoded: Path, gcs, tmp_path: Path, monkeypatch) -> None:
    """Checkpoints, state, logs and best.keras on gs:// (TF through the tensorflow-io plugin); resume."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_storage

    gcs.create_bucket("runs-bucket")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, **gcs.env(), "TMPDIR": str(scratch)}
    args = [sys.executable, "-m", "tfpipe.train", "--config", "configs/tiny.yaml", *TINY_MLP,
            f"data.sources.0.path={encoded}", "optim.use_ema=true", "--run-dir", "gs://runs-bucket/run1",
            "--quiet", "--stop-after-sub-epochs", "1"]  # fmt: skip
    for expected in (None, "ckpt-1"):
        result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["resumed_from"] == expected and np.isfinite(summary["val_r2"])
        assert not list(scratch.glob("tfpipe-*")), list(scratch.iterdir())  # local mirrors removed
    client = gcs_storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs.endpoint}
    )
    names = {b.name for b in client.list_blobs("runs-bucket", prefix="run1/")}
    for name in ("config.yaml", "metrics.csv", "best.keras", "checkpoints/checkpoint", "checkpoints/ckpt-2.index",
                 "checkpoints/ckpt-2.state.json"):  # fmt: skip
        assert f"run1/{name}" in names, sorted(names)
    from tfpipe import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    storage.reset_clients()
    model = predict(
        "gs://runs-bucket/run1/best.keras", str(encoded), str(tmp_path / "p.parquet"), batch_size=4096
    )
    assert model["rows"] == 74 * 384


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "training ended before the signal could be sent"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


PAUSED_TRAIN = """
import sys, time
from pathlib import Path
from tfpipe.console import quiet_native_logs
quiet_native_logs()  # first, as the command line does: TensorFlow's start-up lines stay out
from tfpipe.cli.main import train_main
from tfpipe.train.step import TrainStep

state, marker, go = (Path(p) for p in sys.argv[1:4])
run_steps, chunks = TrainStep.run_steps, []

def paused(self, *args, **kwargs):
    # the second chunk of steps after `state` was committed (mid sub-epoch): say so in `marker` and wait
    # for `go`, so that the test signals or kills this process there and nowhere else
    if state.exists():
        chunks.append(self.step)
        if len(chunks) == 2:
            marker.write_text(str(self.step))
            while not go.exists():
                time.sleep(0.01)
    return run_steps(self, *args, **kwargs)

TrainStep.run_steps = paused
sys.exit(train_main(sys.argv[4:], prog="python -m tfpipe.train"))
"""


def _paused_train(args: list[str], state: Path, tmp: Path, env: dict | None = None) -> subprocess.Popen:
    """``python -m tfpipe.train ARGS`` that pauses mid sub-epoch (the second chunk after ``state``
    appears): ``tmp/at`` appears then, and the run goes on when ``tmp/go`` exists."""
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", PAUSED_TRAIN, str(state), str(tmp / "at"), str(tmp / "go"), *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _read_until(proc: subprocess.Popen, text: str) -> str:
    """stderr of ``proc`` up to the first line holding ``text`` (AssertionError at its end without one)."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never came:\n{''.join(seen)[-2000:]}")


@pytest.mark.scenario
def test_sigkill_mid_sub_epoch_and_sigterm_then_resume_match_the_straight_run(
    encoded: Path, straight_run: Path, tmp_path: Path
) -> None:
    import signal

    run = tmp_path / "killed"
    args = ["--config", "configs/tiny.yaml", *TINY_MLP, f"data.sources.0.path={encoded}", "--run-dir", str(run),
            "--deterministic", "--quiet"]  # fmt: skip
    # session 1: SIGKILL in the middle of sub-epoch 2
    proc = _paused_train(args, run / "checkpoints" / "ckpt-1.state.json", tmp_path / "s1")
    _wait_for(tmp_path / "s1" / "at", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and available_checkpoints(str(run)) == [1]

    # session 2 resumes from ckpt-1: SIGTERM (what Kaggle/Colab and pre-emptible VMs send) in the middle
    # of sub-epoch 3 stops it after the current chunk, without a checkpoint of the unfinished sub-epoch
    proc = _paused_train(args, run / "checkpoints" / "ckpt-2.state.json", tmp_path / "s2")
    _wait_for(tmp_path / "s2" / "at", proc)
    proc.send_signal(signal.SIGTERM)
    err = _read_until(proc, "[train] SIGTERM: stopping after the current chunk")
    (tmp_path / "s2" / "go").touch()
    out, rest = proc.communicate(timeout=300)
    err += rest
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["resumed_from"], summary["stopped"], summary["finished"]) == ("ckpt-1", "signal 15", False)
    assert summary["next"] == {"epoch": 1, "sub_epoch": 0} and "run the same command again" in err
    assert available_checkpoints(str(run)) == [1, 2]

    result = subprocess.run([sys.executable, "-m", "tfpipe.train", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"] == "ckpt-2" and summary["finished"]
    for a, b in zip(weights_of(straight_run, 4), weights_of(run, 4), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_group_finetune_after_the_main_epochs(encoded: Path, tmp_path: Path) -> None:
    run = tmp_path / "finetune"
    extra = ("epochs=1", "finetune.groups=[ptend_t, ptend_q0001+ptend_q0002, cam_out]")
    first = train(config(encoded, run, *extra), stop_after_sub_epochs=3, verbose=0)
    assert first["next"] == {"epoch": 2, "sub_epoch": 0} and not first["finished"]  # inside the fine-tune
    rest = train(config(encoded, run, *extra), verbose=0)
    assert rest["resumed_from"] == "ckpt-3" and rest["finished"] and rest["sub_epochs_run"] == 2
    metrics = pd.read_csv(run / "metrics.csv", keep_default_na=False)
    assert list(metrics["finetune_group"]) == ["", "", "ptend_t", "ptend_q0001+ptend_q0002", "cam_out"]
    # each group has its own warm-up + half-cosine from 0.1 x the main peak (not the tail of the main curve)
    schedule = json.loads((run / "checkpoints" / "ckpt-5.state.json").read_text())["schedule"]
    steps = json.loads((run / "checkpoints" / "ckpt-5.state.json").read_text())["plan_steps"]
    assert [s["start"] for s in schedule] == [0, sum(steps[:2]), sum(steps[:3]), sum(steps[:4])]
    assert [s["peak"] for s in schedule[1:]] == [pytest.approx(1e-4)] * 3 and schedule[0]["peak"] == 1e-3
    assert all(s["warmup_end"] > s["start"] for s in schedule[1:])
    assert list(metrics["epoch"]) == [0, 0, 1, 2, 3] and np.isfinite(metrics["val_r2"]).all()
    with pytest.raises(TrainError, match="'ptend_x' is not a target"):
        train(config(encoded, tmp_path / "bad", "finetune.groups=[ptend_x]"), verbose=0)


def test_predict_multiplies_by_submission_weights(encoded: Path, straight_run: Path, tmp_path: Path) -> None:
    from tfpipe.data.schema import KAGGLE

    weights = np.linspace(0.5, 2.0, KAGGLE.n_targets)
    sub = pd.DataFrame([weights, weights], columns=list(KAGGLE.target_columns))
    sub.insert(0, "sample_id", ["test_0", "test_1"])
    sub.to_csv(tmp_path / "sample_submission.csv", index=False)
    model = str(straight_run / "best.keras")
    predict(model, str(encoded), str(tmp_path / "plain.parquet"), batch_size=4096)
    predict(model, str(encoded), str(tmp_path / "w.parquet"), str(tmp_path / "sample_submission.csv"), 4096)
    plain = pd.read_parquet(tmp_path / "plain.parquet").set_index("sample_id")
    weighted = pd.read_parquet(tmp_path / "w.parquet").set_index("sample_id")
    np.testing.assert_array_equal(weighted.to_numpy(), plain.to_numpy() * weights)


# ------------------------------------------------------------------ issue 13: training at full scale


TINY_SQUEEZE = [
    "model.name=squeezeformer", "model.d_model=16", "model.n_blocks=1", "model.n_heads=2", "model.kernel_size=3",
    "model.expansion=2", "model.head_units=16", "data.batch_size=64", "data.sub_epochs=2", "epochs=1",
    "data.val_fraction=0.25", "data.shuffle_buffer=512", "optim.warmup_steps=0.1", "steps_per_execution=20",
    "optim.use_ema=true", "optim.ema_momentum=0.9", "seed=5",
]  # fmt: skip


def two_sources(encoded: Path, highres: Path) -> list[str]:
    return [f"data.sources.0.path={encoded}", "data.sources.0.weight=2", "data.sources.1.name=highres",
            f"data.sources.1.path={highres}", "data.sources.1.weight=1"]  # fmt: skip


@pytest.fixture(scope="module")
def mixed_run(encoded: Path, highres: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Squeezeformer (BatchNorm), EMA, two sources 2:1, straight through (deterministic)."""
    run = tmp_path_factory.mktemp("runs") / "mixed-straight"
    cfg = load_config("configs/tiny.yaml", [*TINY_SQUEEZE, *two_sources(encoded, highres), f"run_dir={run}"])
    summary = train(cfg, deterministic=True, verbose=0)
    assert summary["finished"] and summary["sub_epochs_run"] == 2
    return run


@pytest.mark.scenario
def test_two_sources_squeezeformer_interrupted_and_resumed_equals_straight(
    encoded: Path, highres: Path, mixed_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "mixed-resumed"
    args = [sys.executable, "-m", "tfpipe.train", "--config", "configs/tiny.yaml", *TINY_SQUEEZE,
            *two_sources(encoded, highres), "--run-dir", str(run), "--deterministic", "--quiet"]  # fmt: skip
    for stop in (["--stop-after-sub-epochs", "1"], []):
        result = subprocess.run(args + stop, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"] == "ckpt-1" and summary["finished"]
    straight = json.loads((mixed_run / "checkpoints" / "ckpt-2.state.json").read_text())
    resumed = json.loads((run / "checkpoints" / "ckpt-2.state.json").read_text())
    assert resumed["step"] == straight["step"] and resumed["plan_steps"] == straight["plan_steps"]
    for a, b in zip(weights_of(mixed_run, 2), weights_of(run, 2), strict=True):  # BatchNorm moments included
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # two sources 2:1: every step is a whole global batch, and the first source is read once per sub-epoch
    first = sum(json.loads(m.read_text())["samples"] for m in encoded.glob("manifest-*.json"))
    assert (
        straight["global_batch"] == 64
        and abs(sum(straight["plan_steps"]) * 64 * 2 / 3 - 0.75 * first) < 0.05 * first
    )


def test_predict_reproduces_the_validation_r2_with_ema(mixed_run: Path, tmp_path: Path) -> None:
    """Validation, best/, best.keras and predict use the same (EMA) weights."""
    from tfpipe.evaluate.metrics import kaggle_score
    from tfpipe.evaluate.prediction_files import load_predictions, load_truth
    from tfpipe.evaluate.score import score_files

    state = json.loads((mixed_run / "checkpoints" / "ckpt-2.state.json").read_text())
    best = state["best_checkpoint"]
    val = json.loads((mixed_run / "checkpoints" / f"ckpt-{best}.state.json").read_text())["val"]
    want = val["val_r2"]
    assert json.loads((mixed_run / "best.json").read_text())["checkpoint"] == f"ckpt-{best}"
    scores = {}
    for name, model in (("keras", mixed_run / "best.keras"), ("ckpt", mixed_run / "best" / f"ckpt-{best}")):
        out = predict(str(model), None, str(tmp_path / f"{name}.parquet"), oof=True)
        _, pred = load_predictions(out["out"])
        _, truth = load_truth(out["truth"])
        scores[name] = kaggle_score(pred, truth)
        # and the score's near-constant explanation reproduces the validation's own
        scored = score_files(out["out"], out["truth"], out_dir=str(tmp_path / f"{name}.score"))
        assert scored["r2_near_constant_as_1"] == pytest.approx(val["val_r2_near_constant_as_1"], abs=1e-6)
        assert len(scored["near_constant_targets"]) == val["val_near_constant"]
    assert scores["keras"] == pytest.approx(want, abs=1e-6) and scores["ckpt"] == pytest.approx(
        want, abs=1e-6
    )
    # the raw (non-EMA) weights of the same checkpoint score differently: EMA is really what ships
    import tensorflow as tf

    from tfpipe.predict import load_for_inference

    model, _, norm = load_for_inference(str(mixed_run / "best" / f"ckpt-{best}"))
    tf.train.Checkpoint(model=model).restore(str(mixed_run / "best" / f"ckpt-{best}")).expect_partial()
    ids, raw_pred = load_predictions(str(tmp_path / "ckpt.parquet"))
    from tfpipe.config import load_config as load
    from tfpipe.data.pipeline import resolve_sources
    from tfpipe.predict import iter_predictions

    source = resolve_sources(load(str(mixed_run / "config.yaml")).data)[0]
    raw = np.concatenate([p for _, p, _ in iter_predictions(model, norm, "", 4096, source.val_paths)])
    assert abs(kaggle_score(raw, truth) - want) > 1e-4


@pytest.mark.scenario
def test_clipping_sees_the_global_gradient_on_8_replicas(encoded: Path, tmp_path: Path) -> None:
    """`--strategy cpu-mirrored` on 8 logical CPUs with batch b/8 equals one device with batch b.

    Tolerance: 1e-4 absolute on the weights after one sub-epoch, against a difference of more than
    1e-3 that the clipping itself makes (it binds at every step with clipnorm 0.01).
    """
    # jit_compile=false: the clipping is the same graph either way, and XLA compiling 8 replicas' train and
    # validation steps took 20 of the 52 s that the 8-replica run took alone (more on a busy machine)
    common = ["--config", "configs/tiny.yaml", *TINY_MLP, f"data.sources.0.path={encoded}", "data.sub_epochs=8",
              "optim.clipnorm=0.01", "optim.warmup_steps=0", "jit_compile=false", "--deterministic", "--quiet",
              "--stop-after-sub-epochs", "1"]  # fmt: skip
    runs = {
        "one": ["data.batch_size=64", "--run-dir", str(tmp_path / "one")],
        "eight": ["data.batch_size=8", "--run-dir", str(tmp_path / "eight"), "--logical-cpus", "8",
                  "--strategy", "cpu-mirrored"],
        "unclipped": ["data.batch_size=64", "optim.clipnorm=null", "--run-dir", str(tmp_path / "unclipped")],
    }  # fmt: skip
    for name, extra in runs.items():
        result = subprocess.run([sys.executable, "-m", "tfpipe.train", *common, *extra], cwd=ROOT,
                                capture_output=True, text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["global_batch"] == 64 and summary["replicas"] == (8 if name == "eight" else 1)
        assert summary["strategy"] == ("mirrored" if name == "eight" else "default")
        assert np.isfinite(summary["val_r2"])  # validation ran through the strategy too
    one, eight, unclipped = (weights_of(tmp_path / n, 1) for n in runs)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(one, eight, strict=True))
    clip_effect = max(float(np.abs(a - b).max()) for a, b in zip(one, unclipped, strict=True))
    assert diff < 1e-4 and clip_effect > 1e-3, (diff, clip_effect)
    # resuming the one-device run on 8 replicas changes the step plan: refused unless asked for
    refused = subprocess.run([sys.executable, "-m", "tfpipe.train", *common, "data.batch_size=64", "--run-dir",
                              str(tmp_path / "one"), "--logical-cpus", "8", "--strategy", "cpu-mirrored"],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert (
        refused.returncode == 2
        and "8 replicas" in refused.stderr
        and "--allow-replica-change" in refused.stderr
    )


def test_resume_refuses_other_data_and_keeps_the_lr_curve_continuous(encoded: Path, tmp_path: Path) -> None:
    import shutil

    from tfpipe.schedule import Segment
    from tfpipe.train.plan import schedule_value

    run, moved = tmp_path / "run", tmp_path / "moved"
    shutil.copytree(encoded, moved)
    train(config(moved, run), stop_after_sub_epochs=1, verbose=0)
    # data moved elsewhere (same files): allowed as a location change
    shutil.copytree(moved, tmp_path / "elsewhere")
    train(config(tmp_path / "elsewhere", run), allow_config_change=True, stop_after_sub_epochs=1, verbose=0)
    # other statistics: refused; with --allow-data-change the model keeps the run's own copy
    stats = json.loads((moved / "stats.json").read_text())
    stats["input_columns"]["mean"][0] += 1.0
    (moved / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(TrainError, match="statistics file differs.*--allow-data-change"):
        train(config(moved, run), allow_config_change=True, verbose=0)
    # fewer files: refused (the data hash covers every file of every split)
    victim = sorted(moved.glob("manifest-*.json"))[-1]
    victim.rename(victim.with_suffix(".bak"))
    with pytest.raises(ValueError, match="1 of 2 shards are missing"):  # incomplete sets are refused first
        train(config(moved, run), allow_config_change=True, verbose=0)
    with pytest.raises(TrainError, match="files differ.*--allow-data-change"):
        train(config(moved, run, "data.allow_partial=true"), allow_config_change=True, verbose=0)
    victim.with_suffix(".bak").rename(victim)
    # more epochs: the plan changes, the learning rate continues from where it was
    before = json.loads((run / "checkpoints" / "ckpt-2.state.json").read_text())
    summary = train(config(moved, run, "epochs=3"), allow_config_change=True, allow_data_change=True,
                    stop_after_sub_epochs=1, verbose=0)  # fmt: skip
    assert summary["resumed_from"] == "ckpt-2"
    after = json.loads((run / "checkpoints" / "ckpt-3.state.json").read_text())
    step = before["step"]
    old = schedule_value([Segment(**s) for s in before["schedule"]], step)
    new = schedule_value([Segment(**s) for s in after["schedule"]], step)
    assert new == pytest.approx(old, rel=1e-9) and after["plan_hash"] != before["plan_hash"]
    assert after["stats_sha256"] == before["stats_sha256"]  # the run's statistics, not the edited file
    assert len(after["plan_steps"]) == 6 and after["plan_steps"][:2] == before["plan_steps"][:2]


def test_a_best_keras_behind_its_state_is_repaired(straight_run: Path, encoded: Path, tmp_path: Path) -> None:
    """A kill after best.keras was replaced but before the state named it: the next start re-exports."""
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(straight_run, run)
    state = json.loads((run / "checkpoints" / "ckpt-4.state.json").read_text())
    best = state["best_checkpoint"]
    want = predict(str(run / "best.keras"), str(encoded), str(tmp_path / "want.parquet"), batch_size=4096)
    (run / "best.json").write_text(json.dumps({"checkpoint": "ckpt-99", "val_r2": 1.0}))
    (run / "best.keras").write_bytes(b"a model of an abandoned sub-epoch")
    summary = train(config(encoded, run), verbose=0)  # finished: restores, repairs, trains nothing
    assert summary["finished"] and summary["sub_epochs_run"] == 0
    assert json.loads((run / "best.json").read_text())["checkpoint"] == f"ckpt-{best}"
    got = predict(str(run / "best.keras"), str(encoded), str(tmp_path / "got.parquet"), batch_size=4096)
    pd.testing.assert_frame_equal(pd.read_parquet(want["out"]), pd.read_parquet(got["out"]))


@pytest.mark.scenario
def test_the_reference_config_trains_on_two_sources_end_to_end(
    encoded: Path, highres: Path, tmp_path: Path
) -> None:
    tiny = ["model.d_model=16", "model.n_blocks=1", "model.n_heads=2", "model.kernel_size=3", "model.expansion=2",
            "model.head_units=16", "data.batch_size=48", "data.sub_epochs=2", "epochs=1", "steps_per_execution=8",
            "optim.warmup_steps=10", "data.shuffle_buffer=1024"]  # fmt: skip
    paths = [f"data.sources.0.path={encoded}", f"data.sources.1.path={highres}"]
    result = subprocess.run(
        [sys.executable, "-m", "tfpipe.train", "--config", "configs/reference.yaml", *tiny, *paths,
         "--run-dir", str(tmp_path / "ref"), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["finished"] and summary["sub_epochs_run"] == 2 and np.isfinite(summary["val_r2"])
    state = json.loads((tmp_path / "ref" / "checkpoints" / "ckpt-2.state.json").read_text())
    assert state["config"]["data"]["val_split"] == "last" and len(state["plan_steps"]) == 2


def test_metrics_csv_keeps_one_row_per_checkpoint(tmp_path: Path) -> None:
    from tfpipe.train.logs import append_metrics_row

    path = str(tmp_path / "metrics.csv")
    for n in (1, 2, 3, 2, 3):  # sub-epochs 2 and 3 redone after a kill
        append_metrics_row(path, {"checkpoint": n, "loss": float(n), "note": "x"})
    frame = pd.read_csv(path)
    assert list(frame["checkpoint"]) == [1, 2, 3]


def test_only_the_chief_writes() -> None:
    import tensorflow as tf

    from tfpipe.train.checkpoints import is_chief

    class Strategy:  # the one attribute is_chief reads, holding a real cluster resolver
        def __init__(self, task_type: str | None, task_id: int, with_chief: bool) -> None:
            jobs = {"worker": ["a:1", "b:1"]} | ({"chief": ["c:1"]} if with_chief else {})
            spec = tf.train.ClusterSpec(jobs)
            self.cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
                spec, task_type=task_type, task_id=task_id
            )

    assert is_chief(tf.distribute.get_strategy())
    assert is_chief(Strategy("chief", 0, True)) and not is_chief(Strategy("worker", 0, True))
    assert is_chief(Strategy("worker", 0, False)) and not is_chief(Strategy("worker", 1, False))


# ------------------------------------------------------------------ issue 15: the first hour of a new user


def test_predict_takes_every_checkpoint_form_of_the_readme(
    straight_run: Path, encoded: Path, tmp_path: Path
) -> None:
    from tfpipe.predict import PredictError

    forms = {
        "run": straight_run,
        "short": straight_run / "ckpt-4",
        "long": straight_run / "checkpoints" / "ckpt-4",
    }
    frames = {}
    for name, path in forms.items():
        out = predict(str(path), str(encoded), str(tmp_path / f"{name}.parquet"), batch_size=4096)["out"]
        frames[name] = pd.read_parquet(out)
    pd.testing.assert_frame_equal(frames["short"], frames["long"])
    assert frames["run"].shape == frames["long"].shape  # RUN alone = its best.keras
    with pytest.raises(PredictError) as err:
        predict(str(straight_run / "ckpt-9"), str(encoded), str(tmp_path / "x.parquet"))
    assert str(err.value) == f"no such checkpoint: {straight_run}/checkpoints/ckpt-9.index does not exist"


@pytest.mark.scenario
def test_ctrl_c_stops_cleanly_and_twice_aborts(encoded: Path, tmp_path: Path) -> None:
    import signal

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # a user's default environment

    def paused(name: str) -> subprocess.Popen:
        args = ["--config", "configs/tiny.yaml", *TINY_MLP, f"data.sources.0.path={encoded}",
                "--run-dir", str(tmp_path / name)]  # fmt: skip
        proc = _paused_train(args, tmp_path / name / "checkpoints" / "ckpt-1.state.json", tmp_path / name, env)
        _wait_for(tmp_path / name / "at", proc)  # mid sub-epoch 2
        proc.send_signal(signal.SIGINT)
        return proc

    proc = paused("once")
    err = _read_until(proc, "[train] SIGINT: stopping after the current chunk")
    (tmp_path / "once" / "go").touch()
    out, rest = proc.communicate(timeout=300)
    err += rest
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])  # stdout: only the JSON summary, no progress bar
    assert summary["stopped"] == "signal 2" and summary["next"] == {"epoch": 0, "sub_epoch": 1}
    assert "\x1b" not in out and "\b" not in out
    assert "[train] epoch 0 sub-epoch 0: " in err and " steps, loss " in err  # line-based progress off a tty
    assert "I0000" not in err and "absl::InitializeLog" not in err and "Traceback" not in err

    proc = paused("twice")  # still paused when the second Ctrl-C comes: it aborts the chunk at once
    _read_until(proc, "[train] SIGINT: stopping after the current chunk")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and out == "", err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.endswith("aborted (Ctrl-C twice); the next run redoes the unfinished sub-epoch")
    assert "Traceback" not in err and available_checkpoints(str(tmp_path / "twice")) == [1]


@pytest.mark.scenario
def test_status_and_the_checkpoint_hook_tell_runs_ls_what_happened(encoded: Path, tmp_path: Path) -> None:
    """status.json: stopped by the hook (a sweep's pruner), resumed to the end; a failure names its error."""
    from tfpipe.experiments.runs import find_runs, read_run
    from tfpipe.train.status import read_status

    rows: list[dict] = []
    run = tmp_path / "runs" / "a"
    summary = train(config(encoded, run), verbose=0, on_checkpoint=lambda row: rows.append(row) or "pruned")
    assert not summary["finished"] and summary["stopped"] == "pruned" and len(rows) == 1
    assert rows[0]["checkpoint"] == 1 and "val_r2" in rows[0]
    status = read_status(str(run))
    assert (status["state"], status["reason"], status["checkpoint"], status["checkpoints"]) == (
        "stopped",
        "pruned",
        1,
        4,
    )
    info = read_run(str(run))
    assert (info.state, info.detail, info.checkpoints, info.total, info.resumable) == (
        "stopped",
        "pruned",
        1,
        4,
        True,
    )
    assert info.best_r2 == pytest.approx(rows[0]["val_r2_train_var"]) and info.config["model.name"] == "mlp"

    train(config(encoded, run), verbose=0)  # resumes to the end
    info = read_run(str(run))
    assert (info.state, info.checkpoints, info.resumable, info.best_checkpoint) == (
        "finished",
        4,
        False,
        info.best_checkpoint,
    )

    def boom(row: dict) -> None:
        raise RuntimeError("disk on fire\nsecond line")

    failed = tmp_path / "runs" / "b"
    with pytest.raises(RuntimeError):
        train(config(encoded, failed, "optim.learning_rate=2e-3"), verbose=0, on_checkpoint=boom)
    info = read_run(str(failed))
    assert (info.state, info.detail, info.resumable) == ("failed", "RuntimeError: disk on fire", True)
    assert [r.name for r in find_runs(str(tmp_path / "runs"))] == ["tiny", "tiny"]
    # a refused resume leaves the status as it was
    with pytest.raises(TrainError):
        train(config(encoded, run, "model.mlp_units=[8]"), verbose=0)
    assert read_run(str(run)).state == "finished"


def test_select_metric_picks_the_best_checkpoint_and_the_runs_best_r2(
    tiny_encoded: Path, tmp_path: Path
) -> None:
    """select_metric=val_r2_near_constant_as_1: best.keras, best.json, the summary and runs ls agree on it."""
    from tiny_runs import TINY_CONFIG, tiny_overrides

    from tfpipe.experiments.runs import read_run

    run = tmp_path / "run"
    metric = "val_r2_near_constant_as_1"
    cfg = load_config(TINY_CONFIG, tiny_overrides(tiny_encoded, run, f"select_metric={metric}", "epochs=2"))
    summary = train(cfg, verbose=0)
    rows = pd.read_csv(run / "metrics.csv")
    best = int(rows["checkpoint"][rows[metric].idxmax()])
    record = json.loads((run / "best.json").read_text())
    assert record == {
        "checkpoint": f"ckpt-{best}",
        "metric": metric,
        metric: pytest.approx(rows[metric].max()),
    }
    assert summary["best_checkpoint"] == f"ckpt-{best}" and summary["best_r2"] == pytest.approx(
        rows[metric].max()
    )
    info = read_run(str(run))
    assert info.best_r2 == pytest.approx(rows[metric].max())
    assert info.last_r2 == pytest.approx(rows[metric].iloc[-1])
    with pytest.raises(ValueError, match="select_metric"):
        load_config(TINY_CONFIG, tiny_overrides(tiny_encoded, run, "select_metric=loss"))


@pytest.mark.scenario
def test_a_run_dir_that_a_live_session_trains_is_refused(tiny_encoded: Path, tmp_path: Path) -> None:
    """A second trainer of a run dir that a live process trains: one-line refusal, nothing touched; the
    heartbeat thread rewrites a running status between checkpoints."""
    import socket

    from tiny_runs import TINY_CONFIG, tiny_overrides

    from tfpipe.train.status import Heartbeat, busy_message, write_status

    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "status.json").write_text(json.dumps(
            {"state": "running", "host": socket.gethostname(), "pid": sleeper.pid, "time": time.time()}
        ))  # fmt: skip
        before = sorted(p.name for p in run.iterdir())
        with pytest.raises(TrainError, match=f"being trained by .* pid {sleeper.pid}"):
            train(load_config(TINY_CONFIG, tiny_overrides(tiny_encoded, run)), verbose=0)
        assert sorted(p.name for p in run.iterdir()) == before
    finally:
        sleeper.kill()
        sleeper.wait()
    assert busy_message(str(run)) is None  # its process is gone: the run is free (killed)
    beats: list[float] = []
    third = threading.Event()

    def beat() -> None:
        write_status(str(run), "running", checkpoint=1)
        beats.append(json.loads((run / "status.json").read_text())["time"])
        if len(beats) == 3:
            third.set()

    with Heartbeat(beat, 0.05):
        assert third.wait(timeout=60), "fewer than 3 heartbeats in 60 s"
    assert beats == sorted(beats) and beats[0] < beats[2]  # each beat rewrote the status with a new time
    assert json.loads((run / "status.json").read_text())["checkpoint"] == 1
    assert busy_message(str(run)) is None  # this process's own status never blocks it

"""Training state that must survive a session: gs:// checkpoint rotation, the float16 loss scale,
native error lines, TPU-node checkpoint options and gradient clipping after the all-reduce."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gcs_emulator import HAS_TF_GCS_PLUGIN, NO_TF_GCS_PLUGIN
from tiny_runs import TINY_CONFIG, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def _train(*args: str, env: dict | None = None) -> dict:
    """``python -m tfpipe.train ARGS --quiet`` in a child process; its summary (exit 0 asserted)."""
    result = subprocess.run([sys.executable, "-m", "tfpipe.train", "--config", TINY_CONFIG, *args, "--quiet"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not HAS_TF_GCS_PLUGIN, reason=NO_TF_GCS_PLUGIN)
def test_gs_resume_keeps_the_checkpoints_of_earlier_sessions(tiny_encoded: Path, gcs, tmp_path: Path) -> None:
    """keep_checkpoints 3, two sessions of 2 sub-epochs on gs://: ckpt-2, 3 and 4 stay, as in a local dir."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_storage

    gcs.create_bucket("state-bucket")
    env = {**os.environ, **gcs.env(), "TMPDIR": str(tmp_path)}
    args = [*tiny_overrides(tiny_encoded, None, "epochs=2", "keep_checkpoints=3"),
            "--run-dir", "gs://state-bucket/run", "--stop-after-sub-epochs", "2"]  # fmt: skip
    assert _train(*args, env=env)["resumed_from"] is None
    assert _train(*args, env=env)["resumed_from"] == "ckpt-2"
    client = gcs_storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs.endpoint}
    )
    names = {
        b.name.removeprefix("run/checkpoints/")
        for b in client.list_blobs("state-bucket", prefix="run/checkpoints/")
    }
    kept = sorted({int(n.split(".")[0][5:]) for n in names if n.startswith("ckpt-") and n.endswith(".index")})
    states = sorted({int(n.split(".")[0][5:]) for n in names if n.endswith(".state.json")})
    index = client.bucket("state-bucket").blob("run/checkpoints/checkpoint").download_as_text()
    assert kept == states == [2, 3, 4], sorted(names)
    assert all(any(n.startswith(f"ckpt-{k}.data-") for n in names) for k in kept), sorted(names)
    assert [f'"ckpt-{k}"' in index for k in (1, 2, 3, 4)] == [False, True, True, True], index


def _variables(run_dir: Path, n: int) -> dict:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints" / f"ckpt-{n}"))
    names = [
        k for k in reader.get_variable_to_shape_map() if k.startswith(("model/", "optimizer/", "loss_scale/"))
    ]
    return {k: reader.get_tensor(k) for k in names}


def test_float16_stop_and_resume_equals_the_straight_run(tiny_encoded: Path, tmp_path: Path) -> None:
    """mixed_float16: the loss scale and its growth counter are checkpointed, so a session stopped
    after sub-epoch 1 and resumed ends with the weights, slots and loss scale of an uninterrupted run."""
    import numpy as np

    def run(name: str, *extra: str) -> dict:
        args = tiny_overrides(tiny_encoded, tmp_path / name, "precision=mixed_float16")
        return _train(*args, "--deterministic", *extra)

    assert run("straight")["finished"]
    assert run("stopped", "--stop-after-sub-epochs", "1")["stopped"] == "stop-after-sub-epochs"
    counter = "loss_scale/counter/.ATTRIBUTES/VARIABLE_VALUE"
    first = _variables(tmp_path / "stopped", 1)
    assert first[counter] > 0, sorted(first)  # the growth counter has moved: a fresh one would differ
    resumed = run("stopped")
    assert (
        resumed["resumed_from"] == "ckpt-1"
        and resumed["finished"]
        and resumed["precision"] == "mixed_float16"
    )
    straight, stopped = _variables(tmp_path / "straight", 2), _variables(tmp_path / "stopped", 2)
    assert sorted(straight) == sorted(stopped) and any(k.startswith("loss_scale/scale") for k in straight)
    for name, value in straight.items():
        np.testing.assert_allclose(stopped[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert stopped[counter] == straight[counter] > first[counter]


def test_clip_factors_clip_each_weight_then_all_together() -> None:
    import numpy as np
    import tensorflow as tf

    from tfpipe.schedule import clip_factors

    grads = [np.array([3.0, 4.0]), np.array([0.0, 12.0]), np.zeros(3)]  # norms 5, 12, 0
    norms = tf.constant([float(np.linalg.norm(g)) for g in grads])
    assert np.allclose(clip_factors(norms, None, None), 1.0)
    glob = clip_factors(norms, None, 6.5)  # the global norm is 13
    want = tf.clip_by_global_norm([tf.constant(g) for g in grads], 6.5)[0]
    for g, f, w in zip(grads, glob.numpy(), want, strict=True):
        np.testing.assert_allclose(g * f, w.numpy(), rtol=1e-6)
    each = clip_factors(norms, 4.0, None)
    assert np.allclose(each, [0.8, 1 / 3, 1.0])
    both = clip_factors(norms, 4.0, 4.0)  # each to 4 (global norm sqrt(32)), then all to 4
    assert np.isclose(np.linalg.norm([5 * both[0], 12 * both[1]]), 4.0)
    assert np.isclose(both[0] / both[1], 0.8 / (1 / 3))
    assert float(clip_factors(tf.constant([np.inf, 1.0]), None, 1.0)[0]) == 0.0  # inf * 0: still non-finite


def test_old_run_configs_with_clipnorm_keep_clipping_per_weight() -> None:
    """``clipnorm`` alone (every config saved before ``global_clipnorm``) clips per weight, as those runs
    trained; the shipped configs clip the global norm; a resume compares them without a change."""
    from tfpipe.config import changed_fields, config_from_dict, config_to_dict, load_config

    new = load_config(TINY_CONFIG)
    assert (new.optim.global_clipnorm, new.optim.clipnorm) == (1.0, None)
    old_tree = config_to_dict(new)
    old_tree["optim"] = {k: v for k, v in old_tree["optim"].items() if k != "global_clipnorm"} | {
        "clipnorm": 1.0
    }
    old = config_from_dict(old_tree)
    assert (old.optim.global_clipnorm, old.optim.clipnorm) == (None, 1.0)
    assert changed_fields(old_tree, config_to_dict(old)) == []
    assert changed_fields(old_tree, config_to_dict(new)) == ["optim.clipnorm", "optim.global_clipnorm"]
    both = load_config(TINY_CONFIG, ["optim.clipnorm=0.01"])
    assert (both.optim.global_clipnorm, both.optim.clipnorm) == (1.0, 0.01)


ABORT_AFTER_NATIVE_LINES = """
import ctypes, os
from tfpipe.console import quiet_native_logs
quiet_native_logs()
import tensorflow
libc = ctypes.CDLL(None)
for text in (b"I0000 00:00:1796653167.475225   24549 service.cc:146] XLA service initialized\\n",
             b"F0000 00:00:1796653167.5 tpu.cc:12] Check failed: the last native line\\n"):
    libc.write(2, text, len(text))
os.abort()
"""


def test_a_native_abort_keeps_its_last_stderr_line_and_start_up_noise_stays_out() -> None:
    """What C++ writes to fd 2 right before ``abort()`` (an XLA/TPU ``Check failed``) reaches stderr."""
    import signal

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", ABORT_AFTER_NATIVE_LINES], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=env)  # fmt: skip
    assert result.returncode == -signal.SIGABRT, result.stderr[-2000:]
    assert result.stderr.rstrip().endswith("Check failed: the last native line"), result.stderr[-2000:]
    assert "I0000" not in result.stderr and "XLA service" not in result.stderr


def test_checkpoint_files_are_handled_by_this_process_under_a_tpu_strategy(tmp_path: Path) -> None:
    """On a Cloud TPU node the TPU host is another machine: saves and restores run on /job:localhost."""
    import tensorflow as tf

    from tfpipe.distribute import checkpoint_options

    tpu = tf.distribute.TPUStrategy.__new__(tf.distribute.TPUStrategy)  # its type only: no TPU here
    options = checkpoint_options(tpu)
    assert options.experimental_io_device == "/job:localhost"
    assert checkpoint_options(tf.distribute.get_strategy()).experimental_io_device is None
    assert checkpoint_options(tf.distribute.MirroredStrategy(["/cpu:0"])).experimental_io_device is None
    # the options are valid where this process is the host (a TPU VM): save with them, restore with them
    variable = tf.Variable(3.0)
    checkpoint = tf.train.Checkpoint(v=variable)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), 1, checkpoint_name="ckpt")
    path = manager.save(checkpoint_number=1, options=options)
    variable.assign(0.0)
    checkpoint.restore(path, options=options).assert_consumed()
    assert float(variable.numpy()) == 3.0

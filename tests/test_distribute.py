"""Strategy choice, logical CPU devices and precision policy.

The 8-device checks run in a subprocess: logical devices must be configured before TensorFlow
initialises its devices, which the rest of the test session has long done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import pytest
import tensorflow as tf

from tfpipe.distribute import (
    choose_strategy,
    configure_logical_cpus,
    resolve_precision,
    tf_config_workers,
)

ROOT = Path(__file__).resolve().parents[1]

EIGHT_CPUS = textwrap.dedent(
    """
    import json, time
    import numpy as np
    from tfpipe.distribute import choose_strategy, configure_logical_cpus
    configure_logical_cpus(8)
    import keras, tensorflow as tf
    from tfpipe.config import OptimConfig
    from tfpipe.schedule import make_optimizer

    strategy, kind = choose_strategy("cpu-mirrored")
    batch = 4 * strategy.num_replicas_in_sync  # the global batch, as tfpipe.train.plan sizes it
    keras.utils.set_random_seed(0)
    with strategy.scope():
        layers = [keras.Input((6,)), keras.layers.Dense(8, activation="swish"), keras.layers.Dense(2)]
        model = keras.Sequential(layers)
        optimizer = make_optimizer(OptimConfig(warmup_steps=0), 10)
        optimizer.build(model.trainable_variables)
    before = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(0).normal(size=(batch, 6)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, 2.0 * x[:, :2])).batch(batch, drop_remainder=True)

    # XLA compiles the per-replica forward and backward pass; the update (a cross-replica
    # all-reduce) runs outside XLA: compiling it too fails under MirroredStrategy.
    @tf.function(jit_compile=True)
    def gradients(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.abs(model(x, training=True) - y))
            scaled = loss / strategy.num_replicas_in_sync
        return loss, tape.gradient(scaled, model.trainable_variables)

    def replica_step(x, y):
        loss, grads = gradients(x, y)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(batch):
        return strategy.reduce("MEAN", strategy.run(replica_step, args=batch), axis=None)

    losses = [float(train_step(b)) for b in strategy.experimental_distribute_dataset(data)]
    kernel = model.trainable_variables[0].value
    replicas_agree = all(np.array_equal(v.numpy(), kernel.values[0].numpy()) for v in kernel.values)
    changed = all(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))

    late = None
    try:
        configure_logical_cpus(4)
    except RuntimeError as err:
        late = str(err)

    t0 = time.monotonic()
    auto_strategy, auto_kind = choose_strategy("auto")  # TPU_ACCELERATOR_TYPE hints at a local TPU
    print(json.dumps({
        "kind": kind, "replicas": strategy.num_replicas_in_sync, "batch": batch, "losses": losses,
        "changed": changed, "replicas_agree": replicas_agree, "iterations": int(optimizer.iterations.numpy()),
        "late": late, "auto_kind": auto_kind, "auto_seconds": time.monotonic() - t0,
    }))
    """
)


def test_mirrored_over_eight_logical_cpus_trains_one_step():
    env = {
        **os.environ,
        "TPU_ACCELERATOR_TYPE": "v3-8",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
    }
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-c", EIGHT_CPUS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["kind"], result["replicas"], result["batch"]) == ("mirrored", 8, 32)
    assert len(result["losses"]) == 1 and result["losses"][0] > 0 and result["iterations"] == 1
    assert result["changed"] and result["replicas_agree"]
    assert "already initialised 8" in result["late"]
    # A hinted but absent TPU falls through to the default strategy, quickly.
    assert result["auto_kind"] == "default" and result["auto_seconds"] < 30


def test_auto_without_tpu_gpu_or_workers_is_the_default_strategy(monkeypatch):
    for name in ("TF_CONFIG", "TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("a GPU is visible")
    t0 = time.monotonic()
    strategy, kind = choose_strategy()
    assert kind == "default" and strategy.num_replicas_in_sync == 1
    assert time.monotonic() - t0 < 10


def test_forced_kinds_that_are_missing_raise(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(RuntimeError, match="TF_CONFIG"):
        choose_strategy("multiworker")
    if not tf.config.list_logical_devices("GPU"):
        with pytest.raises(RuntimeError, match="GPU"):
            choose_strategy("mirrored")
    with pytest.raises(ValueError, match="prefer"):
        choose_strategy("gpu-please")
    with pytest.raises(ValueError):
        configure_logical_cpus(0)


def test_tf_config_workers(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert tf_config_workers() == 0
    cluster = {
        "cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
        "task": {"type": "worker", "index": 0},
    }
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    assert tf_config_workers() == 3
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        tf_config_workers()


def test_precision_policy():
    assert resolve_precision("auto", "tpu") == "mixed_bfloat16"
    assert resolve_precision("auto", "mirrored") == "float32"
    assert resolve_precision("mixed_float16", "default") == "mixed_float16"
    with pytest.raises(ValueError):
        resolve_precision("float16", "tpu")
    try:
        keras.mixed_precision.set_global_policy(resolve_precision("auto", "tpu"))  # as TrainStep does
        layer = keras.layers.Dense(2)
        layer.build((None, 3))
        assert (layer.compute_dtype, layer.variable_dtype) == ("bfloat16", "float32")
    finally:
        keras.mixed_precision.set_global_policy(resolve_precision("float32", "default"))
    assert keras.mixed_precision.global_policy().name == "float32"

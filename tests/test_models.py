"""Every registered model: output layout, save/load, XLA train step, gradients, mixed precision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpipe.config.models import model_config_class
from tfpipe.data.schema import AUX_TARGETS, KAGGLE, NLEV, V1, Schema
from tfpipe.losses import LossConfig, total_loss
from tfpipe.models import MODELS, ModelConfig, build_model, register_model

REPO = Path(__file__).resolve().parents[1]
NAMES = sorted(MODELS)
CHANNELS = 5
BATCH = 4


def _inputs(seed: int = 0, batch: int = BATCH) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, NLEV, CHANNELS)).astype(np.float32)


def _tiny(name: str, schema: Schema = KAGGLE) -> keras.Model:
    keras.utils.set_random_seed(1)
    return build_model(ModelConfig.tiny(name), CHANNELS, schema)


@pytest.fixture
def policy():
    """Sets a global dtype policy for one test and restores float32 afterwards."""
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


def test_registry_names_and_errors():
    assert {"squeezeformer", "mlp", "lstm", "cnn"} <= set(MODELS)
    with pytest.raises(ValueError, match="known models.*squeezeformer"):
        build_model(ModelConfig(name="nope"), CHANNELS, KAGGLE)
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp", builder="tfpipe.models.mlp:build_mlp")(type(ModelConfig.tiny("mlp")))
    with pytest.raises(ValueError, match="module:function"):
        register_model("mine", builder="tfpipe.models.mlp.build_mlp")
    # one registry: each name gives its config class and its builder
    assert {n: e.config for n, e in MODELS.items()} == {n: model_config_class(n) for n in MODELS}
    assert MODELS["mlp"].builder == "tfpipe.models.mlp:build_mlp"
    assert ModelConfig().d_model == 384 and ModelConfig().n_blocks == 12
    with pytest.raises(ValueError, match="n_aux"):
        build_model(ModelConfig.tiny("mlp"), CHANNELS, KAGGLE, n_aux=0)
    with pytest.raises(ValueError, match="n_heads"):
        ModelConfig(d_model=10, n_heads=3)


@pytest.mark.parametrize("schema", [KAGGLE, V1], ids=lambda s: s.name)
@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_and_dtypes(name, schema):
    model = _tiny(name, schema)
    out = model(_inputs(), training=False)
    assert set(out) == {"pred", "conf", "aux"}
    assert out["pred"].shape == (BATCH, schema.n_targets)
    assert out["conf"].shape == (BATCH, schema.n_targets)
    assert out["aux"].shape == (BATCH, len(AUX_TARGETS))
    assert all(v.dtype == tf.float32 for v in out.values())
    assert np.all(out["conf"].numpy() >= 0)


@pytest.mark.parametrize("schema", [KAGGLE, V1], ids=lambda s: s.name)
@pytest.mark.parametrize("name", [n for n in NAMES if n != "mlp"])
def test_per_level_outputs_land_in_target_column_order(name, schema):
    """pred[:, schema.target_slice(profile p)] is the per-level head's channel p, level 0 first;
    scalar targets follow in schema order."""
    model = _tiny(name, schema)
    x = _inputs(1)
    probe = keras.Model(
        model.input,
        [model.get_layer(f"head_{part}").output for part in ("profile_pred", "scalar_pred", "profile_conf")],
    )
    per_level, scalars, conf_level = (t.numpy() for t in probe(x))
    out = model(x)
    assert per_level.shape == (BATCH, NLEV, len(schema.target_profiles))
    for p, var in enumerate(schema.target_profiles):
        np.testing.assert_array_equal(out["pred"].numpy()[:, schema.target_slice(var)], per_level[:, :, p])
        conf = out["conf"].numpy()[:, schema.target_slice(var)]
        np.testing.assert_allclose(conf, np.logaddexp(0, conf_level[:, :, p]), rtol=1e-5)
    for s, var in enumerate(schema.target_scalars):
        np.testing.assert_array_equal(out["pred"].numpy()[:, schema.target_slice(var)][:, 0], scalars[:, s])


@pytest.mark.parametrize("name", NAMES)
def test_save_load_gives_identical_outputs(name, tmp_path):
    model = _tiny(name)
    x = _inputs(2)
    model(x, training=True)  # move BatchNorm statistics away from their initial values
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    want, got = model(x, training=False), loaded(x, training=False)
    for key in want:
        np.testing.assert_array_equal(got[key].numpy(), want[key].numpy())


def _xla_train_step(model: keras.Model, loss_config: LossConfig):
    optimizer = keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=4e-3)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=True)
    def step(x, y, mask, aux_true, aux_mask):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss, _ = total_loss(out, y, mask, aux_true, aux_mask, loss_config)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss, [tf.reduce_max(tf.abs(g)) for g in grads]

    return step


def _batch(schema: Schema, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(BATCH, schema.n_targets)).astype(np.float32)
    aux = rng.uniform(-1, 1, size=(BATCH, len(AUX_TARGETS))).astype(np.float32)
    return _inputs(seed), y, aux, np.ones(BATCH, np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_xla_train_step_reaches_every_weight(name):
    """A jit-compiled step (GradientTape + AdamW) runs; every trainable weight gets a non-zero
    gradient; masked targets (here: all scalar targets) give their output weights zero gradient."""
    schema = KAGGLE
    model = _tiny(name, schema)
    cfg = LossConfig(kind="smooth_l1", beta=0.5, n_profiles=len(schema.target_profiles))
    step = _xla_train_step(model, cfg)
    mask = np.ones(schema.n_targets, np.float32)
    x, y, aux, aux_mask = _batch(schema, 3)
    loss0, grad_max = step(x, y, mask, aux, aux_mask)
    assert np.isfinite(loss0.numpy())
    names = [v.path for v in model.trainable_variables]
    dead = [n for n, g in zip(names, grad_max, strict=True) if not g.numpy() > 0]
    assert not dead, f"no gradient reaches {dead}"
    for _ in range(3):
        loss, _ = step(x, y, mask, aux, aux_mask)
    assert loss.numpy() < loss0.numpy()

    if name != "mlp":
        mask[len(schema.target_profiles) * NLEV :] = 0.0
        _, grad_max = step(x, y, mask, aux, aux_mask)
        by_name = dict(zip(names, grad_max, strict=True))
        scalar_head = [n for n in names if "head_scalar" in n]
        assert len(scalar_head) == 4
        assert all(by_name[n].numpy() == 0.0 for n in scalar_head)


@pytest.mark.parametrize("dtype_policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("name", NAMES)
def test_mixed_precision_outputs_stay_float32(name, dtype_policy, policy):
    policy(dtype_policy)
    model = _tiny(name)
    out = model(_inputs(), training=True)
    assert all(v.dtype == tf.float32 for v in out.values())
    assert all(np.all(np.isfinite(v.numpy())) for v in out.values())
    assert model.get_layer("stem" if name != "mlp" else "dense0").compute_dtype == dtype_policy.split("_")[1]


def test_xla_train_step_under_bfloat16(policy):
    """The TPU setting: mixed_bfloat16 weights stay float32, the compiled step runs and learns."""
    policy("mixed_bfloat16")
    model = _tiny("squeezeformer")
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    step = _xla_train_step(model, LossConfig(n_profiles=len(KAGGLE.target_profiles)))
    x, y, aux, aux_mask = _batch(KAGGLE, 4)
    mask = np.ones(KAGGLE.n_targets, np.float32)
    losses = [step(x, y, mask, aux, aux_mask)[0].numpy() for _ in range(4)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_models_bench_quick():
    env = {**os.environ, "TFPIPE_BENCH_QUICK": "1", "TFPIPE_BENCH_PEAK_TFLOPS": "0.1"}
    result = subprocess.run(
        [sys.executable, "bench/models.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report["models"]) >= {f"{n}_tiny" for n in NAMES}
    assert report["backend"] == "tensorflow" and report["precision"] == "float32"
    for entry in report["models"].values():
        assert entry["params"] > 0 and entry["samples_per_s"] > 0 and entry["flops_per_sample"] > 0
        assert entry["infer_samples_per_s"] > 0
        assert entry["mfu"] == pytest.approx(
            entry["flops_per_sample"] * entry["samples_per_s"] / 1e11, rel=0.01
        )


# One while loop (trip count 60) whose body calls a computation holding a [4,16] x [16,32] dot, plus
# a [4,1,8] x [3,8,2] convolution in the entry: TensorFlow writes operand shapes inline and names with
# '%'; JAX writes bare names whose shapes are defined earlier in the same computation.
_HLO_TF = """HloModule tf
%inner (a: f32[4,16], b: f32[16,32]) -> f32[4,32] {
  %a = f32[4,16]{1,0} parameter(0)
  %b = f32[16,32]{1,0} parameter(1)
  ROOT %d = f32[4,32]{1,0} dot(f32[4,16]{1,0} %a, f32[16,32]{1,0} %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
%body (p: (s32[], f32[4,16])) -> (s32[], f32[4,16]) {
  %c = f32[4,32]{1,0} call(f32[4,16]{1,0} %x, f32[16,32]{1,0} %w), to_apply=%inner
}
%cond (p: (s32[], f32[4,16])) -> pred[] {
  %n = s32[] constant(60)
}
ENTRY %main (x: f32[4,1,8], k: f32[3,8,2]) -> f32[4,1,2] {
  %x = f32[4,1,8]{2,1,0} parameter(0)
  %k = f32[3,8,2]{2,1,0} parameter(1)
  %w = (s32[], f32[4,16]) while((s32[], f32[4,16]) %t), condition=%cond, body=%body
  ROOT %y = f32[4,1,2]{2,1,0} convolution(f32[4,1,8]{2,1,0} %x, f32[3,8,2]{2,1,0} %k), window={size=3 pad=1_1}, dim_labels=b0f_0io->b0f
}
"""
_HLO_JAX = """HloModule jax
inner.1 {
  a.1 = f32[4,16]{1,0} parameter(0)
  b.1 = f32[16,32]{1,0} parameter(1)
  ROOT d.1 = f32[4,32]{1,0} dot(a.1, b.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
body.1 {
  c.1 = f32[4,32]{1,0} call(x.1, w.1), to_apply=inner.1
}
cond.1 {
  n.1 = s32[] constant(60)
}
ENTRY main.1 {
  x.1 = f32[4,1,8]{2,1,0} parameter(0)
  k.1 = f32[3,8,2]{2,1,0} parameter(1)
  w.2 = (s32[], f32[4,16]) while(t.1), condition=cond.1, body=body.1
  ROOT y.1 = f32[4,1,2]{2,1,0} convolution(x.1, k.1), window={size=3 pad=1_1}, dim_labels=b0f_0io->b0f
}
"""


@pytest.mark.parametrize("hlo", [_HLO_TF, _HLO_JAX], ids=["tensorflow", "jax"])
def test_bench_hlo_flops_reads_both_dialects(hlo):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from models import hlo_flops
    finally:
        sys.path.pop(0)
    dot = 2 * 4 * 32 * 16  # output elements x contracted size
    conv = 2 * (4 * 1 * 2) * (3 * 8)  # output elements x (window x input features)
    assert hlo_flops(hlo) == 60 * dot + conv

"""The Squeezeformer's blocks as Keras layers: shapes, config and .keras round trips, BatchNorm and
training flags, XLA, mixed precision, and how the model is made of them."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpipe.data.schema import KAGGLE, NLEV
from tfpipe.models import ModelConfig, build_model
from tfpipe.models.squeezeformer_blocks import ConvModule, TransformerBlock

D = 16
BATCH = 4


def _x(seed: int = 0, batch: int = BATCH) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, NLEV, D)).astype(np.float32)


def _conv(**kwargs) -> ConvModule:
    return ConvModule(kernel_size=3, expansion=2, name="conv", **kwargs)


def _attn(**kwargs) -> TransformerBlock:
    return TransformerBlock(n_heads=2, expansion=2, name="attn", **kwargs)


FACTORIES = {"conv": _conv, "attn": _attn}
ARGS = {
    "conv": {"kernel_size": 3, "expansion": 2, "eca_kernel_size": 3},
    "attn": {"n_heads": 2, "expansion": 2},
}


def _built(kind: str, seed: int = 1):
    keras.utils.set_random_seed(seed)
    layer = FACTORIES[kind]()
    layer.build((None, NLEV, D))
    return layer


def _perturb(layer: keras.layers.Layer, seed: int = 2) -> None:
    """Move every weight away from its initial value (unit scales, zero biases, BatchNorm statistics)."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        v = w.numpy() + 0.1 * rng.normal(size=w.shape).astype(np.float32)
        w.assign(np.abs(v) + 0.5 if w.name == "moving_variance" else v)


def _block_model(seed: int = 1) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((NLEV, D))
    x = _conv()(inputs)
    x = _attn()(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_output_shape_and_dtype(kind):
    layer = FACTORIES[kind]()
    out = layer(_x(), training=False)
    assert out.shape == (BATCH, NLEV, D) and out.dtype == tf.float32
    assert layer.compute_output_shape((None, NLEV, D)) == (None, NLEV, D)
    symbolic = FACTORIES[kind]()(keras.Input((NLEV, D)))
    assert symbolic.shape == (None, NLEV, D)


def test_sublayers_and_weights_come_in_data_flow_order():
    """The blocks can be inspected: named sublayers, weights in the order the data meets them."""
    conv, attn = _built("conv"), _built("attn")
    assert [w.path for w in conv.weights] == [
        f"conv/{p}"
        for p in (
            "pw_expand/kernel", "pw_expand/bias", "dwconv/kernel",
            "bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance", "eca/kernel",
            "pw_project/kernel", "pw_project/bias", "scale1/scale", "scale1/bias",
            "ff_expand/kernel", "ff_expand/bias", "ff_project/kernel", "ff_project/bias",
            "scale2/scale", "scale2/bias", "ln/gamma", "ln/beta",
        )
    ]  # fmt: skip
    assert [w.path for w in attn.weights] == [
        f"attn/{p}"
        for p in (
            "mha/query/kernel", "mha/key/kernel", "mha/value/kernel", "mha/attention_output/kernel",
            "scale1/scale", "scale1/bias", "ln1/gamma", "ln1/beta",
            "ff1/kernel", "ff1/bias", "ff2/kernel", "ff2/bias", "scale2/scale", "scale2/bias",
            "ln2/gamma", "ln2/beta",
        )
    ]  # fmt: skip
    assert conv.ff_expand.units == 2 * 2 * D and conv.dwconv.kernel_size == (3,)
    assert attn.mha.num_heads == 2 and attn.mha.key_dim == D // 2 and attn.ff1.units == 2 * D
    assert [w.name for w in conv.non_trainable_weights] == ["moving_mean", "moving_variance"]
    assert not attn.non_trainable_weights


def test_same_seed_same_initial_weights():
    a, b = _built("conv", seed=3), _built("conv", seed=3)
    for wa, wb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())
    assert not np.array_equal(a.pw_expand.kernel.numpy(), _built("conv", seed=4).pw_expand.kernel.numpy())


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_config_round_trip(kind):
    layer = _built(kind)
    _perturb(layer)
    config = layer.get_config()
    assert ARGS[kind].items() <= config.items()
    clone = type(layer).from_config(config)
    clone.build((None, NLEV, D))
    assert clone.get_config() == config
    clone.set_weights(layer.get_weights())
    x = _x(1)
    np.testing.assert_array_equal(clone(x, training=False).numpy(), layer(x, training=False).numpy())
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(again) is type(layer) and again.get_config() == config


def test_keras_file_round_trip_gives_identical_outputs(tmp_path):
    model = _block_model()
    _perturb(model)
    x = _x(2)
    model(x, training=True)  # BatchNorm moving statistics move once more
    path = tmp_path / "blocks.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [type(layer) for layer in loaded.layers[1:]] == [ConvModule, TransformerBlock]
    for got, want in zip(loaded.weights, model.weights, strict=True):
        assert got.path == want.path
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), model(x, training=False).numpy())


def test_keras_file_loads_in_a_fresh_process(tmp_path):
    """Importing tfpipe.models registers the blocks, as for best.keras in `tfpipe predict`."""
    model = _block_model()
    _perturb(model)
    model.save(tmp_path / "blocks.keras")
    np.save(tmp_path / "x.npy", _x(3))
    code = (
        "import json, sys, numpy as np, keras, tfpipe.models; d = sys.argv[1];"
        "m = keras.models.load_model(d + '/blocks.keras');"
        "np.save(d + '/y.npy', m(np.load(d + '/x.npy'), training=False).numpy());"
        "print(json.dumps([type(layer).__name__ for layer in m.layers]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])[1:] == [
        "ConvModule",
        "TransformerBlock",
    ]
    want = model(_x(3), training=False).numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)


def test_conv_module_batch_norm_follows_training():
    """Inference uses (and keeps) the moving statistics; training uses the batch's and updates them."""
    layer = _built("conv")
    _perturb(layer)
    x = _x(4) * 3.0 + 1.0
    mean, var = layer.bn.moving_mean.numpy(), layer.bn.moving_variance.numpy()
    inference = layer(x, training=False).numpy()
    np.testing.assert_array_equal(layer(x, training=False).numpy(), inference)
    np.testing.assert_array_equal(layer(x).numpy(), inference)  # no flag: inference
    np.testing.assert_array_equal(layer.bn.moving_mean.numpy(), mean)
    training = layer(x, training=True).numpy()
    assert np.abs(training - inference).max() > 1e-3
    assert not np.allclose(layer.bn.moving_mean.numpy(), mean)
    assert not np.allclose(layer.bn.moving_variance.numpy(), var)
    # batch statistics: each sample's output depends on the others in the batch
    alone = layer(x[:1], training=True).numpy()
    assert np.abs(alone - training[:1]).max() > 1e-4


def test_transformer_block_has_no_dropout():
    layer = _built("attn")
    _perturb(layer)
    x = _x(5)
    np.testing.assert_array_equal(layer(x, training=True).numpy(), layer(x, training=False).numpy())
    np.testing.assert_array_equal(layer(x, training=True).numpy(), layer(x, training=True).numpy())


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_under_jit_compile(kind):
    layer = _built(kind)
    _perturb(layer)
    x = tf.constant(_x(7))

    @tf.function(jit_compile=True)
    def forward_and_grad(x, training):
        with tf.GradientTape() as tape:
            y = layer(x, training=training)
            loss = tf.reduce_mean(tf.square(y))
        return y, tape.gradient(loss, layer.trainable_variables)

    y, grads = forward_and_grad(x, False)
    np.testing.assert_allclose(y.numpy(), layer(x, training=False).numpy(), atol=1e-5)
    assert all(np.all(np.isfinite(g.numpy())) and np.abs(g.numpy()).max() > 0 for g in grads)
    y_train, _ = forward_and_grad(x, True)
    assert np.all(np.isfinite(y_train.numpy()))


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_sublayers_follow_the_block_dtype_policy(kind):
    layer = FACTORIES[kind](dtype="mixed_bfloat16")
    out = layer(_x(8), training=True)
    assert out.dtype == tf.bfloat16
    sublayers = [s for s in layer._flatten_layers(include_self=False) if s.weights]
    assert sublayers and all(s.compute_dtype == "bfloat16" for s in sublayers)
    assert all(w.dtype == "float32" for w in layer.weights)


def test_bad_arguments():
    with pytest.raises(ValueError, match="not a multiple of n_heads=3"):
        TransformerBlock(n_heads=3)(_x())
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ConvModule(eca_kernel_size=2)(_x())


def test_squeezeformer_is_made_of_the_blocks():
    model = build_model(ModelConfig.tiny("squeezeformer", n_blocks=2), 5, KAGGLE)
    blocks = [layer for layer in model.layers if isinstance(layer, (ConvModule, TransformerBlock))]
    assert [b.name for b in blocks] == ["block0_conv", "block0_attn", "block1_conv", "block1_attn"]
    conv, attn = model.get_layer("block1_conv"), model.get_layer("block1_attn")
    assert (conv.kernel_size, conv.expansion, attn.n_heads, attn.expansion) == (3, 2, 2, 2)
    assert conv.input.shape == (None, NLEV, ModelConfig.tiny().d_model)
    # a block is reusable: the first block's weights in a stand-alone layer compute the same features
    probe = keras.Model(model.input, [model.get_layer("level_embedding").output, conv.input])
    x = np.random.default_rng(9).normal(size=(BATCH, NLEV, 5)).astype(np.float32)
    emb, mid = (t.numpy() for t in probe(x, training=False))
    twin = ConvModule.from_config(model.get_layer("block0_conv").get_config())
    twin.build(emb.shape)
    twin.set_weights(model.get_layer("block0_conv").get_weights())
    attn0 = model.get_layer("block0_attn")
    np.testing.assert_allclose(attn0(twin(emb, training=False), training=False).numpy(), mid, atol=1e-6)

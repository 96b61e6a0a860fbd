"""The TensorFlow stack the README's "Requirements" section promises, and the facts later
stages rely on."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")


def test_keras_is_keras_3_on_the_tensorflow_backend():
    assert int(keras.__version__.split(".")[0]) == 3
    assert keras.backend.backend() == "tensorflow"


def test_checkpoint_round_trips_keras3_weights_and_adamw_slots(tmp_path):
    """tf.train.Checkpoint restores model weights and AdamW moments when the optimizer is
    built before the restore (what training's --resume relies on)."""

    def make():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
        optimizer = keras.optimizers.AdamW(learning_rate=1e-2, weight_decay=4e-2)
        return model, optimizer

    model, optimizer = make()
    x, y = np.random.default_rng(0).normal(size=(32, 4)), np.ones((32, 1))
    model.compile(optimizer=optimizer, loss="mae")
    model.fit(x, y, epochs=2, verbose=0)
    path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / "ckpt"))

    restored_model, restored_optimizer = make()
    restored_optimizer.build(restored_model.trainable_variables)
    tf.train.Checkpoint(model=restored_model, optimizer=restored_optimizer).restore(path).assert_consumed()
    for a, b in zip(model.weights, restored_model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(optimizer.variables, restored_optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(restored_optimizer.iterations.numpy()) == int(optimizer.iterations.numpy()) > 0

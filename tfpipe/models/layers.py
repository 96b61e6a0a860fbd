"""Shared building blocks: small custom layers and the output heads every model ends with."""

from __future__ import annotations

import keras
from keras import layers, ops

from tfpipe.data.schema import NLEV, VARIABLES, Schema

F32 = "float32"
"""Output layers run in float32 whatever the mixed-precision policy."""


@keras.saving.register_keras_serializable(package="tfpipe")
class GLU(layers.Layer):
    """Gated linear unit: split the last axis in halves ``a, b`` and return ``a * sigmoid(b)``."""

    def call(self, inputs):
        a, b = ops.split(inputs, 2, axis=-1)
        return a * ops.sigmoid(b)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // 2)


@keras.saving.register_keras_serializable(package="tfpipe")
class ScaleBias(layers.Layer):
    """Learnable per-channel ``x * scale + bias`` (the scaled residual branch of Squeezeformer).

    Args:
        scale_init: initial value of the scale.
    """

    def __init__(self, scale_init: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale_init = scale_init

    def build(self, input_shape):
        channels = input_shape[-1]
        self.scale = self.add_weight(
            shape=(channels,), initializer=keras.initializers.Constant(self.scale_init), name="scale"
        )
        self.bias = self.add_weight(shape=(channels,), initializer="zeros", name="bias")

    def call(self, inputs):
        return inputs * self.scale + self.bias

    def get_config(self):
        return {**super().get_config(), "scale_init": self.scale_init}


@keras.saving.register_keras_serializable(package="tfpipe")
class ECA(layers.Layer):
    """Efficient channel attention over ``[B, L, C]``.

    Averages over levels, runs a 1-D convolution of width ``kernel_size`` across channels (no
    bias, zero padding) and gates every channel by the sigmoid of the result.

    Args:
        kernel_size: odd width of the convolution across channels.
    """

    def __init__(self, kernel_size: int = 3, **kwargs):
        super().__init__(**kwargs)
        if kernel_size % 2 != 1:
            raise ValueError(f"ECA kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size

    def build(self, input_shape):
        init = keras.initializers.RandomUniform(-0.5, 0.5)
        self.kernel = self.add_weight(shape=(self.kernel_size,), initializer=init, name="kernel")

    def call(self, inputs):
        channels = inputs.shape[-1]
        half = self.kernel_size // 2
        y = ops.mean(inputs, axis=1)  # [B, C]
        y = ops.pad(y, [[0, 0], [half, half]])
        logits = sum(self.kernel[j] * y[:, j : j + channels] for j in range(self.kernel_size))
        return inputs * ops.expand_dims(ops.sigmoid(logits), 1)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package="tfpipe")
class LevelEmbedding(layers.Layer):
    """Adds a learned vector per level (position information for attention and recurrences)."""

    def build(self, input_shape):
        self.embedding = self.add_weight(
            shape=tuple(input_shape[1:]),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="embedding",
        )

    def call(self, inputs):
        return inputs + self.embedding


def _check_layout(schema: Schema) -> tuple[int, int]:
    """Number of profile and scalar targets; the targets must list profiles first."""
    profiles, scalars = len(schema.target_profiles), len(schema.target_scalars)
    if any(not VARIABLES[v].profile for v in schema.targets[:profiles]):
        raise ValueError(f"schema {schema.name!r}: targets must list profiles before scalars")
    return profiles, scalars


def _outputs(pred: list, conf: list, aux) -> dict:
    """Concatenate the pieces, make conf non-negative, all in float32."""

    def cat(parts: list, name: str):
        return parts[0] if len(parts) == 1 else layers.Concatenate(axis=-1, dtype=F32, name=name)(parts)

    pred_t = layers.Activation("linear", dtype=F32, name="pred")(cat(pred, "pred_concat"))
    conf_t = layers.Activation("softplus", dtype=F32, name="conf")(cat(conf, "conf_concat"))
    return {"pred": pred_t, "conf": conf_t, "aux": aux}


def level_head(x, schema: Schema, n_aux: int, units: int, name: str = "head") -> dict:
    """Per-level head on features ``[B, 60, F]``.

    ``Dense(units, swish)`` then a GLU MLP: expand to ``2 * units``, gate to ``units``, project to
    the outputs. Profiles come per level (``[B, 60, P]`` -> ``[B, P, 60]`` -> ``[B, P * 60]``, the
    target column order); scalar targets and aux from the level-averaged gated features.

    Args:
        x: per-level features.
        schema: target layout.
        n_aux: auxiliary outputs.
        units: width of the head.
        name: prefix of the layer names.
    """
    n_prof, n_scal = _check_layout(schema)
    h = layers.Dense(units, activation="swish", name=f"{name}_dense")(x)
    h = layers.Dense(2 * units, name=f"{name}_expand")(h)
    h = GLU(name=f"{name}_glu")(h)
    pooled = layers.GlobalAveragePooling1D(name=f"{name}_pool")(h)
    pred, conf = [], []
    if n_prof:
        for kind, out in (("pred", pred), ("conf", conf)):
            p = layers.Dense(n_prof, dtype=F32, name=f"{name}_profile_{kind}")(h)
            p = layers.Permute((2, 1), dtype=F32, name=f"{name}_profile_{kind}_t")(p)
            out.append(layers.Reshape((n_prof * NLEV,), dtype=F32, name=f"{name}_profile_{kind}_flat")(p))
    if n_scal:
        pred.append(layers.Dense(n_scal, dtype=F32, name=f"{name}_scalar_pred")(pooled))
        conf.append(layers.Dense(n_scal, dtype=F32, name=f"{name}_scalar_conf")(pooled))
    aux = layers.Dense(n_aux, dtype=F32, name="aux")(pooled)
    return _outputs(pred, conf, aux)


def flat_head(h, schema: Schema, n_aux: int) -> dict:
    """Dense outputs straight from flat features ``[B, F]`` (the MLP baseline).

    Args:
        h: flat features.
        schema: target layout (``n_targets`` columns in ``schema.target_columns`` order).
        n_aux: auxiliary outputs.
    """
    n = schema.n_targets
    pred = layers.Dense(n, dtype=F32, name="head_pred")(h)
    conf = layers.Dense(n, dtype=F32, name="head_conf")(h)
    aux = layers.Dense(n_aux, dtype=F32, name="aux")(h)
    return _outputs([pred], [conf], aux)

"""The ClimSim paper's MLP baseline: flatten all levels and channels, Dense + LeakyReLU layers."""

from __future__ import annotations

import keras
from keras import layers

from tfpipe.config.models import ModelConfig
from tfpipe.data.schema import Schema
from tfpipe.models.build import model_input
from tfpipe.models.layers import flat_head


def build_mlp(config: ModelConfig, n_channels: int, schema: Schema, n_aux: int) -> keras.Model:
    """Flatten ``[B, 60, C]`` -> Dense(u, LeakyReLU) for u in ``mlp_units`` -> linear outputs.

    Args:
        config: uses mlp_units, mlp_leaky_alpha.
        n_channels: input channels per level.
        schema: target layout.
        n_aux: auxiliary outputs.
    """
    inputs = model_input(n_channels)
    h = layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate(config.mlp_units):
        h = layers.Dense(units, name=f"dense{i}")(h)
        h = layers.LeakyReLU(negative_slope=config.mlp_leaky_alpha, name=f"act{i}")(h)
    return keras.Model(inputs, flat_head(h, schema, n_aux), name="mlp")

"""1-D ResNet over the levels."""

from __future__ import annotations

import keras
from keras import layers

from tfpipe.config.models import ModelConfig
from tfpipe.data.schema import Schema
from tfpipe.models.build import model_input
from tfpipe.models.layers import level_head


def res_block(x, filters: int, kernel: int, name: str):
    """[Conv1D, BN, swish, Conv1D, BN] + identity, swish (convolutions without bias: BN follows)."""
    y = layers.Conv1D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.Activation("swish", name=f"{name}_act1")(y)
    y = layers.Conv1D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    x = layers.Add(name=f"{name}_add")([x, y])
    return layers.Activation("swish", name=f"{name}_act2")(x)


def build_cnn(config: ModelConfig, n_channels: int, schema: Schema, n_aux: int) -> keras.Model:
    """``Dense(filters)`` stem, ``cnn_blocks`` residual blocks, then the per-level head.

    Args:
        config: uses cnn_filters, cnn_blocks, cnn_kernel, head_units.
        n_channels: input channels per level.
        schema: target layout.
        n_aux: auxiliary outputs.
    """
    inputs = model_input(n_channels)
    x = layers.Dense(config.cnn_filters, name="stem")(inputs)
    for i in range(config.cnn_blocks):
        x = res_block(x, config.cnn_filters, config.cnn_kernel, name=f"block{i}")
    outputs = level_head(x, schema, n_aux, config.head_units)
    return keras.Model(inputs, outputs, name="cnn")

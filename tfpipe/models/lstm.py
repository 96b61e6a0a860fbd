"""Bidirectional LSTM stack over the levels with residual connections (LEAP 2nd place)."""

from __future__ import annotations

import keras
from keras import layers

from tfpipe.config.models import ModelConfig
from tfpipe.data.schema import Schema
from tfpipe.models.build import model_input
from tfpipe.models.layers import level_head


def build_lstm(config: ModelConfig, n_channels: int, schema: Schema, n_aux: int) -> keras.Model:
    """``Dense(2u)`` + LayerNorm, then ``lstm_layers`` x [BiLSTM(u), residual add, LayerNorm], then
    the per-level head.

    Args:
        config: uses lstm_units, lstm_layers, lstm_use_cudnn, head_units.
        n_channels: input channels per level.
        schema: target layout.
        n_aux: auxiliary outputs.
    """
    units = config.lstm_units
    inputs = model_input(n_channels)
    x = layers.Dense(2 * units, name="stem")(inputs)
    x = layers.LayerNormalization(name="stem_ln")(x)
    for i in range(config.lstm_layers):
        lstm = layers.LSTM(units, return_sequences=True, use_cudnn=config.lstm_use_cudnn, name=f"lstm{i}")
        y = layers.Bidirectional(lstm, name=f"bilstm{i}")(x)
        x = layers.Add(name=f"res{i}")([x, y])
        x = layers.LayerNormalization(name=f"ln{i}")(x)
    outputs = level_head(x, schema, n_aux, config.head_units)
    return keras.Model(inputs, outputs, name="lstm")

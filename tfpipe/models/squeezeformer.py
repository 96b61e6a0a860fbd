"""Squeezeformer over the 60 levels (the LEAP 1st-place flagship).

Input ``Dense(d, no bias)`` + LayerNorm + a learned level embedding, then ``n_blocks`` blocks
(layers ``block{i}_conv`` and ``block{i}_attn``, see :mod:`tfpipe.models.squeezeformer_blocks`) of

* convolution module (:class:`ConvModule`): pointwise expansion to ``2d``, GLU, depthwise conv
  (``kernel_size``, same), BatchNorm, swish, efficient channel attention, pointwise projection,
  scaled residual; a GLU feed-forward (``expansion * d``) with scaled residual; LayerNorm;
* transformer (:class:`TransformerBlock`): multi-head self-attention, scaled residual, LayerNorm;
  feed-forward (``expansion * d``, swish), scaled residual, LayerNorm.

No dropout. Then the wide per-level head (:func:`tfpipe.models.layers.level_head`).
"""

from __future__ import annotations

import keras
from keras import layers

from tfpipe.config.models import ModelConfig
from tfpipe.data.schema import Schema
from tfpipe.models.build import model_input
from tfpipe.models.layers import LevelEmbedding, level_head
from tfpipe.models.squeezeformer_blocks import ConvModule, TransformerBlock


def build_squeezeformer(config: ModelConfig, n_channels: int, schema: Schema, n_aux: int) -> keras.Model:
    """Build the Squeezeformer; see the module docstring.

    Args:
        config: uses d_model, n_blocks, n_heads, kernel_size, expansion, head_units.
        n_channels: input channels per level.
        schema: target layout.
        n_aux: auxiliary outputs.
    """
    d = config.d_model
    inputs = model_input(n_channels)
    x = layers.Dense(d, use_bias=False, name="stem")(inputs)
    x = layers.LayerNormalization(name="stem_ln")(x)
    x = LevelEmbedding(name="level_embedding")(x)
    for i in range(config.n_blocks):
        x = ConvModule(config.kernel_size, config.expansion, name=f"block{i}_conv")(x)
        x = TransformerBlock(config.n_heads, config.expansion, name=f"block{i}_attn")(x)
    outputs = level_head(x, schema, n_aux, config.head_units)
    return keras.Model(inputs, outputs, name="squeezeformer")

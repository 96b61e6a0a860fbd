"""Squeezeformer over the 60 levels (the LEAP 1st-place flagship).

Input ``Dense(d, no bias)`` + LayerNorm + a learned level embedding, then ``n_blocks`` blocks of

* convolution module: pointwise expansion to ``2d``, GLU, depthwise conv (``kernel_size``, same),
  BatchNorm, swish, efficient channel attention, pointwise projection, scaled residual; a GLU
  feed-forward (``expansion * d``) with scaled residual; LayerNorm;
* transformer: multi-head self-attention, scaled residual, LayerNorm; feed-forward
  (``expansion * d``, swish), scaled residual, LayerNorm.

No dropout. Then the wide per-level head (:func:`tfpipe.models.layers.level_head`).
"""

from __future__ import annotations

import keras
from keras import layers

from tfpipe.models.layers import ECA, GLU, LevelEmbedding, ScaleBias, level_head
from tfpipe.models.registry import ModelConfig, model_input, register
from tfpipe.schema import Schema


def conv_module(x, d: int, kernel_size: int, expansion: int, name: str):
    """Convolution module + GLU feed-forward, both with scaled residuals, then LayerNorm."""
    y = layers.Dense(2 * d, name=f"{name}_pw_expand")(x)
    y = GLU(name=f"{name}_glu")(y)
    y = layers.DepthwiseConv1D(kernel_size, padding="same", use_bias=False, name=f"{name}_dwconv")(y)
    y = layers.BatchNormalization(name=f"{name}_bn")(y)
    y = layers.Activation("swish", name=f"{name}_swish")(y)
    y = ECA(3, name=f"{name}_eca")(y)
    y = layers.Dense(d, name=f"{name}_pw_project")(y)
    x = layers.Add(name=f"{name}_res1")([x, ScaleBias(name=f"{name}_scale1")(y)])
    y = layers.Dense(2 * expansion * d, name=f"{name}_ff_expand")(x)
    y = GLU(name=f"{name}_ff_glu")(y)
    y = layers.Dense(d, name=f"{name}_ff_project")(y)
    x = layers.Add(name=f"{name}_res2")([x, ScaleBias(name=f"{name}_scale2")(y)])
    return layers.LayerNormalization(name=f"{name}_ln")(x)


def transformer_block(x, d: int, n_heads: int, expansion: int, name: str):
    """Post-LN self-attention and feed-forward, both with scaled residuals.

    The attention projections carry no bias: a key bias gets exactly zero gradient.
    """
    mha = layers.MultiHeadAttention(n_heads, key_dim=d // n_heads, use_bias=False, name=f"{name}_mha")
    y = mha(x, x)
    x = layers.Add(name=f"{name}_res1")([x, ScaleBias(name=f"{name}_scale1")(y)])
    x = layers.LayerNormalization(name=f"{name}_ln1")(x)
    y = layers.Dense(expansion * d, activation="swish", name=f"{name}_ff1")(x)
    y = layers.Dense(d, name=f"{name}_ff2")(y)
    x = layers.Add(name=f"{name}_res2")([x, ScaleBias(name=f"{name}_scale2")(y)])
    return layers.LayerNormalization(name=f"{name}_ln2")(x)


@register("squeezeformer")
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
        x = conv_module(x, d, config.kernel_size, config.expansion, name=f"block{i}_conv")
        x = transformer_block(x, d, config.n_heads, config.expansion, name=f"block{i}_attn")
    outputs = level_head(x, schema, n_aux, config.head_units)
    return keras.Model(inputs, outputs, name="squeezeformer")

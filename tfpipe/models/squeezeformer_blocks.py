"""The two blocks of the Squeezeformer as serialisable Keras layers: :class:`ConvModule` and
:class:`TransformerBlock`.

Both map ``[B, L, d]`` to ``[B, L, d]`` (``d`` is read from the input) and create their sublayers in
``build``, each built right after it is created, in the order the data flows through them. Weights
therefore come in that order (``layer.weights``), and with a seeded Keras the initial values are those
the same layers get when created and called one after the other in a functional graph.
"""

from __future__ import annotations

import keras
from keras import layers

from tfpipe.models.layers import ECA, GLU, ScaleBias


def _built(layer: layers.Layer, *shapes) -> layers.Layer:
    """Build ``layer`` for the given input shape(s) and return it."""
    layer.build(*shapes)
    return layer


@keras.saving.register_keras_serializable(package="tfpipe")
class ConvModule(layers.Layer):
    """Squeezeformer convolution module followed by a GLU feed-forward, then LayerNorm.

    Convolution module: pointwise expansion to ``2d``, GLU, depthwise convolution over levels
    (``kernel_size``, same padding, no bias), BatchNorm, swish, efficient channel attention
    (:class:`~tfpipe.models.layers.ECA`), pointwise projection to ``d``, scaled residual
    (:class:`~tfpipe.models.layers.ScaleBias`). Feed-forward: expand to ``2 * expansion * d``, GLU,
    project to ``d``, scaled residual. No dropout; ``training`` only switches BatchNorm between
    batch and moving statistics.

    Args:
        kernel_size: width of the depthwise convolution over levels.
        expansion: the feed-forward's hidden width is ``expansion * d``.
        eca_kernel_size: odd width of the channel-attention convolution.
    """

    def __init__(self, kernel_size: int = 15, expansion: int = 4, eca_kernel_size: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = kernel_size
        self.expansion = expansion
        self.eca_kernel_size = eca_kernel_size

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        d = input_shape[-1]
        shape = tuple(input_shape)  # every sublayer but ff_project takes d channels
        dtype = self.dtype_policy
        self.pw_expand = _built(layers.Dense(2 * d, name="pw_expand", dtype=dtype), shape)
        self.glu = GLU(name="glu", dtype=dtype)
        self.dwconv = _built(
            layers.DepthwiseConv1D(
                self.kernel_size, padding="same", use_bias=False, name="dwconv", dtype=dtype
            ),
            shape,
        )
        self.bn = _built(layers.BatchNormalization(name="bn", dtype=dtype), shape)
        self.eca = _built(ECA(self.eca_kernel_size, name="eca", dtype=dtype), shape)
        self.pw_project = _built(layers.Dense(d, name="pw_project", dtype=dtype), shape)
        self.scale1 = _built(ScaleBias(name="scale1", dtype=dtype), shape)
        self.ff_expand = _built(layers.Dense(2 * self.expansion * d, name="ff_expand", dtype=dtype), shape)
        self.ff_glu = GLU(name="ff_glu", dtype=dtype)
        ff_hidden = (*shape[:-1], self.expansion * d)
        self.ff_project = _built(layers.Dense(d, name="ff_project", dtype=dtype), ff_hidden)
        self.scale2 = _built(ScaleBias(name="scale2", dtype=dtype), shape)
        self.ln = _built(layers.LayerNormalization(name="ln", dtype=dtype), shape)

    def call(self, inputs, training: bool | None = None):
        y = self.glu(self.pw_expand(inputs))
        y = self.bn(self.dwconv(y), training=training)
        y = self.eca(keras.activations.swish(y))
        x = inputs + self.scale1(self.pw_project(y))
        y = self.ff_project(self.ff_glu(self.ff_expand(x)))
        x = x + self.scale2(y)
        return self.ln(x)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "kernel_size": self.kernel_size,
            "expansion": self.expansion,
            "eca_kernel_size": self.eca_kernel_size,
        }


@keras.saving.register_keras_serializable(package="tfpipe")
class TransformerBlock(layers.Layer):
    """Post-LN transformer block: self-attention and a swish feed-forward, both with scaled residuals.

    ``x = LN(x + ScaleBias(MHA(x, x)))`` then ``x = LN(x + ScaleBias(Dense(d)(Dense(expansion * d,
    swish)(x))))``. The attention projections carry no bias (a key bias gets exactly zero gradient);
    ``key_dim = d // n_heads``. No dropout, so ``training`` changes nothing.

    Args:
        n_heads: attention heads; must divide ``d``.
        expansion: the feed-forward's hidden width is ``expansion * d``.
    """

    def __init__(self, n_heads: int = 8, expansion: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.n_heads = n_heads
        self.expansion = expansion

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        d = input_shape[-1]
        if d % self.n_heads:
            raise ValueError(f"{self.name}: width {d} is not a multiple of n_heads={self.n_heads}")
        shape = tuple(input_shape)
        dtype = self.dtype_policy
        self.mha = _built(
            layers.MultiHeadAttention(
                self.n_heads, key_dim=d // self.n_heads, use_bias=False, name="mha", dtype=dtype
            ),
            shape,
            shape,
        )
        self.scale1 = _built(ScaleBias(name="scale1", dtype=dtype), shape)
        self.ln1 = _built(layers.LayerNormalization(name="ln1", dtype=dtype), shape)
        self.ff1 = _built(
            layers.Dense(self.expansion * d, activation="swish", name="ff1", dtype=dtype), shape
        )
        self.ff2 = _built(layers.Dense(d, name="ff2", dtype=dtype), (*shape[:-1], self.expansion * d))
        self.scale2 = _built(ScaleBias(name="scale2", dtype=dtype), shape)
        self.ln2 = _built(layers.LayerNormalization(name="ln2", dtype=dtype), shape)

    def call(self, inputs, training: bool | None = None):
        x = self.ln1(inputs + self.scale1(self.mha(inputs, inputs, training=training)))
        y = self.ff2(self.ff1(x))
        return self.ln2(x + self.scale2(y))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "n_heads": self.n_heads, "expansion": self.expansion}

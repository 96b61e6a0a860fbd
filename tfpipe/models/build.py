"""Building a registered model (:mod:`tfpipe.config.models`) into Keras, by name.

Every model maps a float32 tensor ``[batch, 60, C]`` (level 0 at the top; C input channels per
level, scalars broadcast over levels) to a dict of float32 tensors::

    {"pred": [B, n_targets], "conf": [B, n_targets], "aux": [B, n_aux]}

with ``pred`` columns in ``schema.target_columns`` order and ``conf`` (>= 0) an estimate of
``|pred - y|`` per target.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from tfpipe.config.models import ModelConfig, model_entry
from tfpipe.data.schema import AUX_TARGETS, NLEV, Schema

Builder = Callable[[ModelConfig, int, Schema, int], keras.Model]
"""``builder(config, n_channels, schema, n_aux) -> keras.Model``; registered by name in
:mod:`tfpipe.config.models`."""


def build_model(
    config: ModelConfig, n_channels: int, schema: Schema, n_aux: int = len(AUX_TARGETS)
) -> keras.Model:
    """Build the model ``config.name`` for inputs ``[batch, 60, n_channels]``.

    Args:
        config: model hyper-parameters.
        n_channels: input channels per level.
        schema: gives the targets (profiles first, then scalars) and so the output layout.
        n_aux: width of the auxiliary space-time output.

    Raises:
        ValueError: for an unknown model name or a non-positive n_channels or n_aux.
    """
    from importlib import import_module

    module, _, function = model_entry(config.name).builder.partition(":")
    if n_channels < 1:
        raise ValueError(f"n_channels must be positive, got {n_channels}")
    if n_aux < 1:
        raise ValueError(f"n_aux must be positive, got {n_aux}")
    builder: Builder = getattr(import_module(module), function)
    return builder(config, n_channels, schema, n_aux)


def build_normalized_model(
    config: ModelConfig, normalization: keras.layers.Layer, n_aux: int = len(AUX_TARGETS)
):
    """What training and prediction use: raw input columns → ``normalization`` → the model ``config.name``.

    Args:
        config: model hyper-parameters.
        normalization: a :class:`tfpipe.data.normalize.Normalization` (it carries the schema and statistics).
        n_aux: width of the auxiliary space-time output.

    The result takes ``[batch, n_inputs]`` float32 and has the outputs of :func:`build_model`;
    ``model.get_layer("normalization")`` gives the statistics back (e.g. for the float64 inverse).
    """
    schema = normalization.schema
    core = build_model(config, normalization.n_channels, schema, n_aux)
    raw = keras.Input(shape=(schema.n_inputs,), dtype="float32", name="inputs")
    return keras.Model(raw, core(normalization(raw)), name=f"normalized_{core.name}")


def model_input(n_channels: int) -> keras.KerasTensor:
    """The common input: ``[batch, NLEV, n_channels]`` float32."""
    return keras.Input(shape=(NLEV, n_channels), dtype="float32", name="levels")

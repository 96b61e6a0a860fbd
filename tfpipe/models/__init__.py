"""Keras 3 models, each built by name: :mod:`~tfpipe.models.registry` (the one registry: name → config
class and builder, no Keras), :mod:`~tfpipe.models.configs` (every model's config class, no Keras),
:mod:`~tfpipe.models.build` (:func:`build_model`, :func:`build_normalized_model`) and one module per
architecture with its layers.

May import :mod:`tfpipe.data` (the schema, the normalisation layer); nothing of training, evaluation or
the command line. The Keras parts load on first use: configs read without TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tfpipe.models.configs import ModelConfig
from tfpipe.models.registry import MODELS, ModelEntry, register_model

if TYPE_CHECKING:
    from tfpipe.models.build import build_model, build_normalized_model


def __getattr__(name: str):
    if name in ("build_model", "build_normalized_model"):
        from tfpipe.models import build

        return getattr(build, name)
    raise AttributeError(f"module 'tfpipe.models' has no attribute {name!r}")


__all__ = ["MODELS", "ModelConfig", "ModelEntry", "build_model", "build_normalized_model", "register_model"]

"""Keras 3 models, all built by name through :func:`build_model`.

Importing this package registers every architecture in :data:`MODELS`.
"""

from tfpipe.models import cnn, lstm, mlp, squeezeformer  # noqa: F401  (registers the builders)
from tfpipe.models.registry import MODELS, ModelConfig, build_model, build_normalized_model, register

__all__ = ["MODELS", "ModelConfig", "build_model", "build_normalized_model", "register"]

"""Keras 3 models, each built by name (:func:`build_model`, :func:`build_normalized_model` in
:mod:`~tfpipe.models.build`) from its config; the registry (name → config class and builder) and the
config classes are :mod:`tfpipe.config.models`, which loads without TensorFlow.

Importing this package imports every architecture, and so registers its Keras layers for
``keras.models.load_model`` (``best.keras`` loads in a fresh process after ``import tfpipe.models``).
May import :mod:`tfpipe.config` and :mod:`tfpipe.data`; nothing of training, evaluation or the command
line.
"""

from tfpipe.config.models import MODELS, ModelConfig, ModelEntry, register_model
from tfpipe.models import cnn, lstm, mlp, squeezeformer  # noqa: F401  (registers their Keras layers)
from tfpipe.models.build import build_model, build_normalized_model

__all__ = ["MODELS", "ModelConfig", "ModelEntry", "build_model", "build_normalized_model", "register_model"]

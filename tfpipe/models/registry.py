"""The one model registry: model name → its config class and its Keras builder (no Keras here).

A model is one entry, registered on its config class::

    @register_model("mlp", builder="tfpipe.models.mlp:build_mlp")
    @dataclass
    class MLPConfig(ModelConfig): ...

Config loading reads the classes without loading TensorFlow; :func:`tfpipe.models.build.build_model`
imports the builder (``module:function``) only when a model is built. The built-in models register
in :mod:`tfpipe.models.configs`, which the package imports first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from tfpipe.models.configs import ModelConfig


@dataclass(frozen=True)
class ModelEntry:
    """One registered model."""

    config: type[ModelConfig]
    """Its config class (holds only this model's fields)."""
    builder: str
    """``module:function`` of ``builder(config, n_channels, schema, n_aux) -> keras.Model``."""


MODELS: dict[str, ModelEntry] = {}
"""Model name → :class:`ModelEntry`, in registration order (the flagship first)."""

C = TypeVar("C", bound="type[ModelConfig]")


def register_model(name: str, builder: str) -> Callable[[C], C]:
    """Class decorator: ``cls`` is the config of model ``name``, built by ``builder`` (``mod:function``)."""
    if builder.count(":") != 1:
        raise ValueError(f"builder of model {name!r} must be 'module:function', got {builder!r}")

    def wrap(cls: C) -> C:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = ModelEntry(cls, builder)
        return cls

    return wrap


def model_entry(name: str) -> ModelEntry:
    """The entry of model ``name``; ValueError naming the known models."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)}")
    return MODELS[name]


def model_config_class(name: str) -> type[ModelConfig]:
    """The config class of model ``name``; ValueError naming the known models."""
    return model_entry(name).config


def model_config_classes() -> dict[str, type[ModelConfig]]:
    """Model name → config class, for every registered model."""
    return {name: entry.config for name, entry in MODELS.items()}

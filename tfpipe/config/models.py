"""The models' configs and the one model registry: plain dataclasses, no Keras (so configs load without
TensorFlow).

One config class per model, holding only that model's fields (so changing an ``lstm_units`` never
touches a Squeezeformer run), registered with its Keras builder in :data:`MODELS`::

    @register_model("mlp", builder="tfpipe.models.mlp:build_mlp")
    @dataclass
    class MLPConfig(ModelConfig): ...

``ModelConfig(name=..., **fields)`` builds the class that ``name`` selects;
:func:`tfpipe.models.build_model` imports the builder (``module:function``) and builds the model.
:class:`LossConfig` is read by :func:`tfpipe.losses.total_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar


@dataclass(frozen=True)
class ModelEntry:
    """One registered model."""

    config: type[ModelConfig]
    """Its config class (holds only this model's fields)."""
    builder: str
    """``module:function`` of ``builder(config, n_channels, schema, n_aux) -> keras.Model``."""


MODELS: dict[str, ModelEntry] = {}
"""Model name → :class:`ModelEntry`, in registration order (the flagship first)."""

C = TypeVar("C", bound=type)


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


LOSS_KINDS = ("mae", "smooth_l1")


@dataclass
class ModelConfig:
    """Base of every model's config: ``name`` selects the model (and the config class).

    Calling ``ModelConfig(name="mlp", mlp_units=(64,))`` gives an :class:`MLPConfig`; the default
    name is the flagship, ``squeezeformer``. The defaults are the reference sizes; :meth:`tiny`
    gives sizes for tests.
    """

    name: str = "squeezeformer"
    """The model: one of :data:`tfpipe.config.models.MODELS` (``squeezeformer``, ``mlp``, ...)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> ModelConfig:
        if cls is ModelConfig:
            name = kwargs.get("name", args[0] if args else "squeezeformer")
            cls = model_config_class(name)
        return object.__new__(cls)

    def __post_init__(self) -> None:
        expected = next((n for n, e in MODELS.items() if e.config is type(self)), self.name)
        if self.name != expected:
            raise ValueError(f"{type(self).__name__} is the config of {expected!r}, not of {self.name!r}")

    @classmethod
    def tiny(cls, name: str = "squeezeformer", **overrides: Any) -> ModelConfig:
        """Smallest sizes that still exercise every layer of model ``name`` (tests, quick benchmarks)."""
        return model_config_class(name)(name=name, **(_TINY_SIZES.get(name, {}) | overrides))


@register_model("squeezeformer", builder="tfpipe.models.squeezeformer:build_squeezeformer")
@dataclass
class SqueezeformerConfig(ModelConfig):
    """Squeezeformer over the 60 levels (the flagship): conv + attention blocks, a per-level head."""

    name: str = "squeezeformer"
    """Selects this model."""
    d_model: int = 384
    """Channels of every block."""
    n_blocks: int = 12
    """Blocks (each: attention, feed-forward, convolution module, feed-forward)."""
    n_heads: int = 8
    """Attention heads (``d_model`` must be a multiple)."""
    kernel_size: int = 15
    """Depthwise convolution kernel over the levels."""
    expansion: int = 4
    """Feed-forward width as a multiple of ``d_model``."""
    head_units: int = 2048
    """Width of the per-level output head."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}")


@register_model("mlp", builder="tfpipe.models.mlp:build_mlp")
@dataclass
class MLPConfig(ModelConfig):
    """The ClimSim paper's MLP baseline."""

    name: str = "mlp"
    """Selects this model."""
    mlp_units: tuple[int, ...] = (768, 640, 512, 640, 640)
    """Widths of the hidden layers."""
    mlp_leaky_alpha: float = 0.15
    """Slope of the LeakyReLU activations."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.mlp_units = tuple(int(u) for u in self.mlp_units)


@register_model("lstm", builder="tfpipe.models.lstm:build_lstm")
@dataclass
class LSTMConfig(ModelConfig):
    """Bidirectional LSTM stack over the levels (LEAP 2nd place), a per-level head."""

    name: str = "lstm"
    """Selects this model."""
    lstm_units: int = 256
    """Units per direction of each LSTM layer."""
    lstm_layers: int = 4
    """Stacked bidirectional layers."""
    lstm_use_cudnn: bool = False
    """cuDNN kernels are faster on a GPU without XLA but do not compile with ``jit_compile=True``."""
    head_units: int = 2048
    """Width of the per-level output head."""


@register_model("cnn", builder="tfpipe.models.cnn:build_cnn")
@dataclass
class CNNConfig(ModelConfig):
    """1-D ResNet over the levels, a per-level head."""

    name: str = "cnn"
    """Selects this model."""
    cnn_filters: int = 256
    """Channels of every residual block."""
    cnn_blocks: int = 8
    """Residual blocks."""
    cnn_kernel: int = 5
    """Convolution kernel over the levels."""
    head_units: int = 2048
    """Width of the per-level output head."""


_TINY_SIZES: dict[str, dict[str, Any]] = {
    "squeezeformer": {"d_model": 16, "n_blocks": 1, "n_heads": 2, "kernel_size": 3, "expansion": 2,
                      "head_units": 16},
    "mlp": {"mlp_units": (32, 32)},
    "lstm": {"lstm_units": 8, "lstm_layers": 1, "head_units": 16},
    "cnn": {"cnn_filters": 16, "cnn_blocks": 1, "cnn_kernel": 3, "head_units": 16},
}  # fmt: skip


@dataclass
class LossConfig:
    """Which losses and with which weights.

    ``total = main + confidence_weight * confidence + aux_weight * aux + level_diff_weight * level_diff``
    where ``main`` is ``kind`` ("mae" or "smooth_l1" with ``beta``) on the predictions, ``aux`` uses
    the same kind, and ``level_diff`` is always SmoothL1 with ``beta``.
    """

    kind: str = "mae"
    beta: float = 1.0
    confidence_weight: float = 0.1
    aux_weight: float = 0.1
    level_diff_weight: float = 0.1
    n_profiles: int = 6
    """Profile targets at the front of the target columns (``len(schema.target_profiles)``)."""

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss kind {self.kind!r}; choose one of {LOSS_KINDS}")

    @property
    def main_beta(self) -> float:
        """SmoothL1 beta of the main loss (0 means MAE)."""
        return self.beta if self.kind == "smooth_l1" else 0.0

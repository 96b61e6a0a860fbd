"""What a model and its losses are: plain dataclasses, no Keras (so configs load without TensorFlow).

:class:`ModelConfig` is built into a Keras model by :func:`tfpipe.models.build_model`;
:class:`LossConfig` is read by :func:`tfpipe.losses.total_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

LOSS_KINDS = ("mae", "smooth_l1")


@dataclass
class ModelConfig:
    """Hyper-parameters of every registered model; each model reads the fields it needs.

    The defaults are the reference sizes; :meth:`tiny` gives sizes for tests.
    """

    name: str = "squeezeformer"
    # Squeezeformer (also: head_units for the per-level head of squeezeformer, lstm and cnn).
    d_model: int = 384
    n_blocks: int = 12
    n_heads: int = 8
    kernel_size: int = 15
    expansion: int = 4
    head_units: int = 2048
    # MLP baseline (ClimSim paper).
    mlp_units: tuple[int, ...] = (768, 640, 512, 640, 640)
    mlp_leaky_alpha: float = 0.15
    # Bidirectional LSTM stack (LEAP 2nd place).
    lstm_units: int = 256
    lstm_layers: int = 4
    lstm_use_cudnn: bool = False
    """cuDNN kernels are faster on a GPU without XLA but do not compile with ``jit_compile=True``."""
    # 1-D ResNet over levels.
    cnn_filters: int = 256
    cnn_blocks: int = 8
    cnn_kernel: int = 5

    def __post_init__(self) -> None:
        self.mlp_units = tuple(int(u) for u in self.mlp_units)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}")

    @classmethod
    def tiny(cls, name: str = "squeezeformer", **overrides: object) -> ModelConfig:
        """Smallest sizes that still exercise every layer (for tests and quick benchmarks)."""
        base = cls(
            name=name,
            d_model=16,
            n_blocks=1,
            n_heads=2,
            kernel_size=3,
            expansion=2,
            head_units=16,
            mlp_units=(32, 32),
            lstm_units=8,
            lstm_layers=1,
            cnn_filters=16,
            cnn_blocks=1,
            cnn_kernel=3,
        )
        return replace(base, **overrides)


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

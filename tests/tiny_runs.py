"""The smallest training runs that still prove a behaviour: shared by the experiment tests (sweep, launch, ...)."""

from __future__ import annotations

from pathlib import Path

TINY_CONFIG = "configs/tiny.yaml"
TINY_RUN = [
    "model.name=mlp", "model.mlp_units=[32]", "data.batch_size=128", "data.sub_epochs=2", "epochs=1",
    "data.val_fraction=0.25", "data.shuffle_buffer=256", "optim.warmup_steps=0.1",
    "steps_per_execution=10", "seed=3",
]  # fmt: skip


def tiny_overrides(encoded: Path | str, run_dir: Path | str | None = None, *extra: str) -> list[str]:
    """Overrides for `configs/tiny.yaml` that train a 2-sub-epoch MLP on `encoded` (in `run_dir`, if given)."""
    run = [f"run_dir={run_dir}"] if run_dir is not None else []
    return [*TINY_RUN, f"data.sources.0.path={encoded}", *run, *extra]

"""Training's inputs checked before TensorFlow loads, so that a typo is one line at once, not after 8-17 s.

Each check raises the error the command would raise later (a ValueError or a storage error, which
the command line prints as one line with exit code 2) and never refuses an input the command would
accept: it only looks at what every run of the command reads (data folders, statistics, models).
"""

from __future__ import annotations

from tfpipe import storage
from tfpipe.config import TrainConfig
from tfpipe.data.manifest import read_manifests
from tfpipe.data.stats import StatsError
from tfpipe.train.rundir import RunDir


def check_train_inputs(config: TrainConfig) -> None:
    """The sources' shard sets, the validation folder, the grid, and statistics to start or resume with."""
    data = config.data
    check_validation_data(config)
    for source in data.sources:
        if source.path:  # empty: the built-in demo data, prepared later
            read_manifests(source.path, schema=data.schema, allow_partial=data.allow_partial)
    if data.val_path:
        read_manifests(data.val_path, schema=data.schema, allow_partial=data.allow_partial)
    if data.grid and not storage.exists(data.grid):
        raise StatsError(f"{data.grid}: no such grid file (data.grid)")
    run_copy = RunDir(config.resolved_run_dir).stats  # what a resumed run uses
    if data.sources[0].path and not storage.exists(data.stats_path) and not storage.exists(run_copy):
        raise StatsError(f"{data.stats_path}: statistics file not found (run python -m data_prep.stats)")


def check_validation_data(config: TrainConfig) -> None:
    """Training scores every sub-epoch on validation data: ``val_fraction=0`` needs a ``val_path``."""
    data = config.data
    if data.val_fraction == 0 and not data.val_path:
        raise ValueError(
            "data.val_fraction=0 and no data.val_path: training has no validation data (every sub-epoch is "
            "scored on it to pick the best checkpoint); set data.val_fraction (e.g. 0.05) or data.val_path"
        )

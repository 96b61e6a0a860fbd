"""Training in resumable sub-epoch chunks: ``tfpipe train --config FILE [key=value ...] [--resume ...]``.

One room per concern, in the spirit of orbit (tensorflow/models):

- :mod:`~tfpipe.train.plan`: the stages (sub-epochs with their steps and source mix) and the
  learning-rate phases; pure functions of the config and the data.
- :mod:`~tfpipe.train.step`: model, optimizer, the compiled train and validation steps; no files.
- :mod:`~tfpipe.train.checkpoints`: run state, checkpoint mirror, resume target and guards.
- :mod:`~tfpipe.train.session`: strategy, data, statistics and the resume point of a session.
- :mod:`~tfpipe.train.validation`: scores from the gathered validation predictions.
- :mod:`~tfpipe.train.loop`: sub-epochs, the time budget, signals, and the commit order of writes.
- :mod:`~tfpipe.train.logs`: ``metrics.csv``, TensorBoard (MLflow: :mod:`tfpipe.train.tracking`).

The command line (``tfpipe train``, ``python -m tfpipe.train``) is :mod:`tfpipe.cli.train`; this package
never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tfpipe.train.checkpoints import RunState, TrainError, available_checkpoints, export_keras
    from tfpipe.train.loop import train

_LAZY = {
    "train": "tfpipe.train.loop", "export_keras": "tfpipe.train.checkpoints",
    "RunState": "tfpipe.train.checkpoints", "TrainError": "tfpipe.train.checkpoints",
    "available_checkpoints": "tfpipe.train.checkpoints",
}  # fmt: skip
"""Name -> module, or module:attribute where the attribute has another name there."""


def __getattr__(name: str):
    # Everything loads on first use: ``python -m tfpipe.train`` installs its signal handlers and
    # parses its arguments before TensorFlow and Keras are imported.
    if name in _LAZY:
        from importlib import import_module

        module, _, attribute = _LAZY[name].partition(":")
        return getattr(import_module(module), attribute or name)
    raise AttributeError(f"module 'tfpipe.train' has no attribute {name!r}")


__all__ = ["RunState", "TrainError", "available_checkpoints", "export_keras", "train"]

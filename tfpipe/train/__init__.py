"""Training in resumable sub-epoch chunks: ``tfpipe train --config FILE [key=value ...] [--resume ...]``.

One room per concern, in the spirit of orbit (tensorflow/models):

- :mod:`~tfpipe.train.plan`: the stages (sub-epochs with their steps and source mix) and the
  learning-rate phases; pure functions of the config and the data.
- :mod:`~tfpipe.train.step`: model, optimizer, the compiled train and validation steps; no files.
- :mod:`~tfpipe.train.checkpoints`: run state, checkpoint mirror, resume target and guards.
- :mod:`~tfpipe.train.session`: strategy, data, statistics and the resume point of a session.
- :mod:`~tfpipe.train.validation`: scores from the gathered validation predictions.
- :mod:`~tfpipe.train.loop`: sub-epochs, the time budget, signals, and the commit order of writes.
- :mod:`~tfpipe.train.logs`: ``metrics.csv``, TensorBoard, MLflow.
- :mod:`~tfpipe.train.cli`: the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tfpipe.train.checkpoints import RunState, TrainError, available_checkpoints

if TYPE_CHECKING:
    from tfpipe.train.loop import export_keras, train


def __getattr__(name: str):
    # train() and export_keras() import TensorFlow: load them on first use, so that the CLI's
    # --help and the checkpoint helpers stay light.
    if name in ("train", "export_keras"):
        from tfpipe.train import loop

        return getattr(loop, name)
    if name == "main":
        from tfpipe.train.cli import main

        return main
    raise AttributeError(name)


__all__ = ["RunState", "TrainError", "available_checkpoints", "export_keras", "main", "train"]

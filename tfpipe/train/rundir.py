"""The files of a run dir, named once: what training writes and every reader looks for.

Training (:mod:`tfpipe.train.loop`), ``tfpipe predict --checkpoint RUN``, ``export-models``, ``runs ls``,
``launch``, sweeps and tracking all find a run's files through :class:`RunDir`, so a file is renamed in
one place. Local paths and ``gs://`` alike (:func:`tfpipe.storage.join`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tfpipe import storage

BEST_KERAS = "best.keras"  # the best model, self-contained (normalisation included)
BEST_RECORD = "best.json"  # which checkpoint best.keras is and its score; written before best.keras
BEST = "best"  # best/ckpt-N: the best checkpoint (TF format), what best.keras is re-exported from
CHECKPOINTS = "checkpoints"  # checkpoints/ckpt-N (+ ckpt-N.state.json, the commit marker)
CONFIG = "config.yaml"  # the resolved config of the run
STATS = "stats.json"  # the run's copy of its statistics (a resumed run keeps normalising with it)
METRICS = "metrics.csv"  # one row per checkpoint
STATUS = "status.json"  # state, heartbeat and stop reason (tfpipe runs ls)
CLAIM = "train.lock"  # the live trainer's claim
TENSORBOARD = "tb"


@dataclass(frozen=True)
class RunDir:
    """The paths of one run dir's files."""

    path: str

    def __truediv__(self, name: str) -> str:
        return storage.join(self.path, name)

    @property
    def best_keras(self) -> str:
        return self / BEST_KERAS

    @property
    def best_record(self) -> str:
        return self / BEST_RECORD

    @property
    def best(self) -> str:
        return self / BEST

    @property
    def checkpoints(self) -> str:
        return self / CHECKPOINTS

    @property
    def config(self) -> str:
        return self / CONFIG

    @property
    def stats(self) -> str:
        return self / STATS

    @property
    def metrics(self) -> str:
        return self / METRICS

    @property
    def status(self) -> str:
        return self / STATUS

    @property
    def claim(self) -> str:
        return self / CLAIM

    @property
    def tensorboard(self) -> str:
        return self / TENSORBOARD

"""Inference: ``tfpipe predict --checkpoint RUN/best.keras|RUN/checkpoints/ckpt-N|RUN --data T --out P``.

TEST is a folder of encoded shards (local or gs://) or a Kaggle ``test.csv`` (read in chunks, float64).
The model carries its normalisation (:class:`tfpipe.data.normalize.Normalization`), so ``best.keras`` alone
is enough; a checkpoint is rebuilt from ``RUN/config.yaml`` and ``RUN/stats.json`` and, when the run
used EMA, predicts with the EMA weights (as validation did). Predictions are inverse-transformed in
float64 (:mod:`tfpipe.data.postprocess`); on the schema's replacement levels
``ptend_q0002_k = -state_q0002_k / 1200`` from the exact float64 inputs; zero-weight targets are 0;
``--weights sample_submission.csv`` multiplies by the submission weights. The parquet file has
``sample_id`` first and the targets in schema order (float64), rows in input order, written one row
group per batch (bounded memory) under a temporary name and published at the end.

Rooms: :mod:`~tfpipe.predict.loading` (the model), :mod:`~tfpipe.predict.batches` (data in, physical
predictions out), :mod:`~tfpipe.predict.sink` (parquet out), :mod:`~tfpipe.predict.core` (the commands'
functions, re-exported here). May import ``data``, ``evaluate``, ``models``, ``train.rundir`` and
``train.committed``, never the command line (``python -m tfpipe.predict`` is :mod:`tfpipe.cli.predict`).
"""

from tfpipe.predict.batches import iter_batches, iter_predictions, make_forward, model_predictions
from tfpipe.predict.core import predict, predict_into, submission_weights, validation_files
from tfpipe.predict.loading import (
    PredictError,
    load_for_inference,
    load_keras,
    normalization_of,
    resolve_checkpoint,
)
from tfpipe.predict.sink import PUBLISHING, ParquetSink, publish_together

__all__ = [
    "PUBLISHING", "ParquetSink", "PredictError", "iter_batches", "iter_predictions", "load_for_inference",
    "load_keras", "make_forward", "model_predictions", "normalization_of", "predict", "predict_into",
    "publish_together", "resolve_checkpoint", "submission_weights", "validation_files",
]  # fmt: skip

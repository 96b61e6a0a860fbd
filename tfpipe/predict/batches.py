"""Input batches (encoded shards or a Kaggle CSV, read once for any number of models) and the models'
forward pass to physical float64 predictions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from tfpipe.data.postprocess import physical_predictions
from tfpipe.data.schema import Schema
from tfpipe.predict.loading import PredictError

if TYPE_CHECKING:  # Keras and TensorFlow load only when a command runs, not for --help
    from tfpipe.data.normalize import Normalization


def _encoded_batches(
    path: str, schema: Schema, batch: int, files: list[str] | None = None, allow_partial: bool = False
):
    import tensorflow as tf

    from tfpipe.data.manifest import data_files, read_manifests
    from tfpipe.data.pipeline import make_predict_dataset
    from tfpipe.evaluate.export import exact_targets

    if files is None:
        manifests = read_manifests(path, schema=schema.name, allow_partial=allow_partial)
        files = data_files(path, manifests)
        with_targets = all(m.has_targets for m in manifests)
    else:
        with_targets = True
    batches = iter(make_predict_dataset(files, schema, batch, with_targets=with_targets))
    while True:
        try:
            b = next(batches)
        except StopIteration:
            return
        except tf.errors.OpError as err:  # a record that fails its CRC, a file lost while reading
            raise PredictError(_read_error(files, err)) from None
        ids = [s.decode() for s in b["sample_id"].numpy()]
        truth = exact_targets(b["targets"].numpy(), b["y64"].numpy(), schema) if with_targets else None
        yield ids, b["inputs"], b["x64"].numpy(), truth


def _read_error(files: list[str], err) -> str:
    """One line naming the file ``err`` (a TensorFlow error while reading ``files``) comes from."""
    from tfpipe.data.pipeline import diagnose_read_error

    first = (err.message or str(err)).strip().splitlines()[0]
    if "NaN/Inf" in first:
        return first
    return diagnose_read_error(files) or f"{', '.join(files[:3])}: {first}"


def _csv_batches(path: str, schema: Schema, batch: int):
    from tfpipe.data.kaggle_csv import csv_blocks
    from tfpipe.evaluate.export import exact_targets

    hint = "every row of a test set needs all its inputs: fill or remove such rows"
    for block in csv_blocks(path, schema, batch, bad_values_hint=hint):
        truth = None if block.targets is None else exact_targets(block.targets, block.y64, schema)
        yield block.sample_id, block.inputs, block.x64, truth


def iter_batches(
    data: str, schema: Schema, batch: int, files: list[str] | None = None, allow_partial: bool = False
) -> Iterator:
    """(ids, float32 inputs, float64 ``state_q0002`` levels, exact truth or None) per batch, in input
    order, from encoded shards (or their ``files``) or a Kaggle CSV: read and parsed once for any number
    of models."""
    if files is None and data.endswith(".csv"):
        return _csv_batches(data, schema, batch)
    return _encoded_batches(data, schema, batch, files, allow_partial)


def make_forward(model) -> Callable:
    """The model's XLA-compiled inference pass: float32 inputs → normalised predictions."""
    import tensorflow as tf

    @tf.function(jit_compile=True, reduce_retracing=True)
    def forward(x):
        return model(x, training=False)["pred"]

    return forward


def model_predictions(
    forward: Callable, inputs, x64: np.ndarray, norm: Normalization, where: str
) -> np.ndarray:
    """One batch's physical predictions (float64, :func:`~tfpipe.data.postprocess.physical_predictions`);
    PredictError naming ``where`` on NaN/Inf."""
    pred = physical_predictions(forward(inputs).numpy(), x64, norm)
    if not np.isfinite(pred).all():
        bad = [norm.schema.target_columns[i] for i in np.nonzero(~np.isfinite(pred).all(axis=0))[0]]
        raise PredictError(f"{where}: the model predicts NaN/Inf in {', '.join(bad[:5])}")
    return pred


def iter_predictions(
    model, norm: Normalization, data: str, batch: int, files=None, allow_partial: bool = False
) -> Iterator:
    """(ids, physical predictions float64, truth or None) per batch, in input order."""
    forward = make_forward(model)
    for ids, inputs, x64, truth in iter_batches(data, norm.schema, batch, files, allow_partial):
        yield ids, model_predictions(forward, inputs, x64, norm, data), truth

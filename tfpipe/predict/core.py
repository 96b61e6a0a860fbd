"""``predict``: one model's predictions into a parquet file; ``predict_into``: several models in one pass
over the data, with the exact truth for ``--oof``."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from tfpipe.data.schema import Schema
from tfpipe.predict.batches import iter_batches, make_forward, model_predictions
from tfpipe.predict.loading import PredictError, load_for_inference
from tfpipe.predict.sink import ParquetSink, publish_together

if TYPE_CHECKING:  # Keras and TensorFlow load only when a command runs, not for --help
    from tfpipe.data.normalize import Normalization


def submission_weights(weights: str | None, schema: Schema) -> np.ndarray | None:
    """The per-target weights of ``sample_submission.csv`` (float64), or None."""
    if not weights:
        return None
    from tfpipe.evaluate.prediction_files import load_weights

    return np.asarray(load_weights(weights, schema), dtype=np.float64)


def validation_files(config, where: str) -> tuple[list[str], str]:
    """(validation files, their folder) of a run's config: the data of ``--oof``."""
    from tfpipe.data.pipeline import resolve_sources

    if config is None:
        raise PredictError(f"{where}: --oof needs the run's config.yaml beside the model")
    source = resolve_sources(config.data)[0]
    return source.val_paths, source.path


def predict_into(
    models: Sequence[tuple[object, Normalization]], outs: Sequence[str], data: str, batch: int,
    weights: np.ndarray | None = None, files: list[str] | None = None, allow_partial: bool = False,
    truth_out: str | None = None, progress: bool = False, truth_extra: dict | None = None,
) -> int:  # fmt: skip
    """Predict ``data`` with every ``(model, norm)`` in one pass: each batch is read and parsed once and
    run through each model; model ``i``'s predictions (times ``weights``) go to the parquet file
    ``outs[i]`` and, with ``truth_out``, the exact truth to that file, marked as truth (with the keys
    ``truth_extra`` in its metadata). The files are published at the end (none on an error). Returns
    the number of rows."""
    from tqdm import tqdm

    from tfpipe.evaluate.prediction_files import TRAIN_STD_KEY, prediction_metadata, truth_metadata

    schema = models[0][1].schema
    forwards = [make_forward(model) for model, _ in models]
    labels = [data] if len(models) == 1 else [f"{data} (model of {out})" for out in outs]
    zipped = list(zip(forwards, models, labels, strict=True))
    sinks = [ParquetSink(out, schema.target_columns, prediction_metadata(schema)) for out in outs]
    if truth_out is not None:
        # the first model's training std per target: the blend's default objective divides by it
        own = {TRAIN_STD_KEY: models[0][1].values64["target_scale"].tolist()}
        truth_meta = truth_metadata(schema, **(own | (truth_extra or {})))
        sinks.append(ParquetSink(truth_out, schema.target_columns, truth_meta))
    bar = tqdm(
        unit="row",
        unit_scale=True,
        desc="predict",
        disable=not progress,
        file=sys.stderr,
        mininterval=1.0,
        delay=2.0,
    )  # fmt: skip  (short runs and early errors print no bar)
    try:
        for ids, inputs, x64, truth in iter_batches(data, schema, batch, files, allow_partial):
            rows = [model_predictions(f, inputs, x64, norm, where) for f, (_, norm), where in zipped]
            if truth_out is not None:
                rows.append(truth.astype(np.float64))
            for sink, values in zip(sinks, rows, strict=True):
                sink.write(ids, values * weights if weights is not None else values)
            bar.update(len(ids))
        for sink in sinks:  # every temp complete before the first file is published (a full disk fails here)
            sink.finish()
        publish_together(sinks)
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    finally:
        bar.close()
    return sinks[0].rows


def predict(
    checkpoint: str, data: str | None, out: str, weights: str | None = None, batch_size: int | None = None,
    oof: bool = False, allow_partial: bool = False, progress: bool = False,
) -> dict:  # fmt: skip
    """Write predictions for ``data`` (or, with ``oof``, the run's validation data plus its truth).

    With ``progress``, a bar over the rows goes to stderr.
    """
    t0 = time.time()
    model, config, norm = load_for_inference(checkpoint)
    schema = norm.schema
    batch = batch_size or (config.data.batch_size if config is not None else 1024)
    files = None
    if oof:
        files, path = validation_files(config, checkpoint)
        data = data or path
    if data is None:
        raise PredictError("--data is required (or --oof for the run's validation data)")
    w = submission_weights(weights, schema)
    truth_path = out[: -len(".parquet")] + ".truth.parquet" if out.endswith(".parquet") else out + ".truth"
    rows = predict_into(
        [(model, norm)], [out], data, batch, w, files, allow_partial, truth_path if oof else None, progress
    )
    seconds = time.time() - t0
    summary = {"out": out, "rows": rows, "columns": 1 + schema.n_targets, "seconds": round(seconds, 2)}
    if oof:
        summary["truth"] = truth_path
    summary["samples_per_s"] = round(rows / max(seconds, 1e-9), 1)
    return summary

"""Inference: ``tfpipe predict --checkpoint RUN/best.keras|RUN/checkpoints/ckpt-N|RUN --data T --out P``.

TEST is a folder of encoded shards (local or gs://) or a Kaggle ``test.csv`` (read in chunks, float64).
The model carries its normalisation (:class:`tfpipe.normalize.Normalization`), so ``best.keras`` alone
is enough; a checkpoint is rebuilt from ``RUN/config.yaml`` and ``RUN/stats.json`` and, when the run
used EMA, predicts with the EMA weights (as validation did). Predictions are inverse-transformed in
float64 (:mod:`tfpipe.postprocess`); on the schema's replacement levels
``ptend_q0002_k = -state_q0002_k / 1200`` from the exact float64 inputs; zero-weight targets are 0;
``--weights sample_submission.csv`` multiplies by the submission weights. The parquet file has
``sample_id`` first and the targets in schema order (float64), rows in input order, written one row
group per batch (bounded memory) under a temporary name and published at the end.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from tfpipe import storage
from tfpipe.postprocess import physical_predictions
from tfpipe.schema import Schema
from tfpipe.train.rundir import BEST, CHECKPOINTS, RunDir

if TYPE_CHECKING:  # Keras and TensorFlow load only when a command runs, not for --help
    from tfpipe.normalize import Normalization


class PredictError(ValueError):
    """A checkpoint that does not fit the data, or test data that does not fit the schema."""


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else "."


def resolve_checkpoint(checkpoint: str) -> tuple[str, str]:
    """``(run_dir, model)`` of ``RUN/best.keras``, ``RUN/checkpoints/ckpt-N``, ``RUN/ckpt-N`` or ``RUN``.

    ``model`` is a ``.keras`` path or a checkpoint prefix ``RUN/{checkpoints,best}/ckpt-N``; ``RUN``
    alone means its committed best model: ``best.keras``, or ``RUN/best/ckpt-B`` when a kill left
    ``best.keras`` holding a checkpoint no state committed (:func:`tfpipe.train.committed.best_model_path`).
    """
    path = checkpoint.rstrip("/")
    name = path.rsplit("/", 1)[-1]
    if path.endswith(".keras"):
        return _parent(path), path
    if name.startswith("ckpt-") and name[5:].isdigit():
        parent = _parent(path)
        if parent.rsplit("/", 1)[-1] in (CHECKPOINTS, BEST):
            return _parent(parent), path
        return parent, storage.join(RunDir(parent).checkpoints, name)
    from tfpipe.train.committed import best_model_path

    if not storage.exists(RunDir(path).checkpoints):  # not a run dir (or an older layout)
        return path, RunDir(path).best_keras
    return path, best_model_path(path)


def _run_config(run_dir: str, model_path: str = ""):
    """The run's config: ``NAME.config.yaml`` beside ``NAME.keras`` (a model set of ``tfpipe
    export-models``), else ``RUN/config.yaml``; None without either."""
    from tfpipe.config import load_saved_config

    beside = model_path[: -len(".keras")] + ".config.yaml" if model_path.endswith(".keras") else ""
    for path in (beside, RunDir(run_dir).config):
        if path and storage.exists(path):
            return load_saved_config(path)
    return None


def load_keras(path: str, sha256: str | None = None):
    """A ``.keras`` model file (local or gs://); with ``sha256``, the file must have that digest."""
    import hashlib

    import keras

    import tfpipe.models  # noqa: F401  (registers the custom layers the file names)
    import tfpipe.normalize  # noqa: F401

    if not storage.exists(path):
        raise PredictError(f"{path}: no such model file")
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model.keras")
        storage.download_file(path, local)
        if sha256 is not None:
            digest = hashlib.sha256()
            with open(local, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            if digest.hexdigest() != sha256:
                raise PredictError(
                    f"{path}: its sha256 is not the one its index records (changed or being replaced "
                    "since it was written?)"
                )
        try:
            return keras.models.load_model(local)
        except Exception as err:  # noqa: BLE001 - a truncated zip, a bad config: the file, not the temp
            detail = " ".join(str(err).replace(local, path).split())[:200]
            raise PredictError(f"{path}: not a loadable model ({type(err).__name__}: {detail})") from None


def _restore_checkpoint(run_dir: str, prefix: str, config):
    """The model of checkpoint ``prefix``, with EMA weights when the run used them."""
    import tensorflow as tf

    from tfpipe.models import build_normalized_model
    from tfpipe.normalize import Normalization
    from tfpipe.schedule import make_optimizer
    from tfpipe.stats import load_stats

    if config is None:
        raise PredictError(
            f"{prefix}: no {storage.join(run_dir, 'config.yaml')} (is this a tfpipe run directory?)"
        )
    if not storage.exists(prefix + ".index"):
        raise PredictError(f"no such checkpoint: {prefix}.index does not exist")
    data = config.data
    stats = load_stats(RunDir(run_dir).stats, schema=data.schema)
    layer = Normalization.for_data(data, stats)
    model = build_normalized_model(config.model, layer)
    optimizer = make_optimizer(config.optim, 1)
    optimizer.build(model.trainable_variables)
    try:
        tf.train.Checkpoint(model=model, optimizer=optimizer).restore(
            storage.tf_path(prefix)
        ).expect_partial()
    except (ValueError, tf.errors.OpError) as err:
        first = str(err).strip().splitlines()[0]
        raise PredictError(f"{prefix}: does not fit the model of {run_dir}/config.yaml ({first})") from None
    if layer.mismatched_weights():
        raise PredictError(f"{prefix}: normalises with other statistics than {run_dir}/stats.json")
    if config.optim.use_ema:
        optimizer.finalize_variable_values(model.trainable_variables)
    return model


def load_for_inference(checkpoint: str):
    """(model, run config or None, its Normalization layer) for ``RUN/best.keras``, a checkpoint or ``RUN``.

    A ``.keras`` file is enough on its own: the model carries its statistics and post-processing
    levels; ``RUN/config.yaml`` (or ``NAME.config.yaml`` beside ``NAME.keras``), when present, gives
    the default batch size and the data for ``--oof``.
    """
    run_dir, model_path = resolve_checkpoint(checkpoint)
    config = _run_config(run_dir, model_path)
    if model_path.endswith(".keras"):
        model = load_keras(model_path)
    else:
        model = _restore_checkpoint(run_dir, model_path, config)
    return model, config, normalization_of(model, checkpoint)


def normalization_of(model, where: str) -> Normalization:
    """The model's first layer, :class:`~tfpipe.normalize.Normalization` (PredictError without it)."""
    from tfpipe.normalize import Normalization

    try:
        norm = model.get_layer("normalization")
    except ValueError:
        raise PredictError(
            f"{where}: the model has no normalization layer (trained by an older tfpipe?)"
        ) from None
    if not isinstance(norm, Normalization):
        raise PredictError(f"{where}: its 'normalization' layer is not a tfpipe Normalization")
    return norm


def _encoded_batches(
    path: str, schema: Schema, batch: int, files: list[str] | None = None, allow_partial: bool = False
):
    import tensorflow as tf

    from tfpipe.data import make_predict_dataset
    from tfpipe.export import exact_targets
    from tfpipe.manifest import data_files, read_manifests

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
    from tfpipe.data import diagnose_read_error

    first = (err.message or str(err)).strip().splitlines()[0]
    if "NaN/Inf" in first:
        return first
    return diagnose_read_error(files) or f"{', '.join(files[:3])}: {first}"


def _csv_batches(path: str, schema: Schema, batch: int):
    from tfpipe.export import exact_targets
    from tfpipe.kaggle_csv import csv_blocks

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
    """One batch's physical predictions (float64, :func:`~tfpipe.postprocess.physical_predictions`);
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


class ParquetSink:
    """Writes ``sample_id`` + float64 columns one row group at a time; publishes atomically on close."""

    ROW_GROUP_ROWS = 16384

    def __init__(self, out: str, columns: tuple[str, ...], metadata: dict | None = None) -> None:
        """``metadata``: what the file is (:func:`tfpipe.prediction_files.truth_metadata` or
        ``prediction_metadata``), stored as its ``tfpipe`` key-value metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from tfpipe.prediction_files import arrow_metadata

        self.out, self.columns = out, columns
        self.schema = pa.schema(
            [pa.field("sample_id", pa.string())] + [pa.field(c, pa.float64()) for c in columns],
            metadata=None if metadata is None else arrow_metadata(metadata),
        )
        self.tmp = storage.local_temp_for(out)
        # dictionary encoding only for the ids: float columns never fill a dictionary (it halves write speed)
        self.writer = pq.ParquetWriter(self.tmp, self.schema, use_dictionary=["sample_id"])
        self.rows = 0
        self._pending: list = []
        self._pending_rows = 0

    def write(self, ids: list[str], values: np.ndarray) -> None:
        """Buffer a batch; a row group is written per ``ROW_GROUP_ROWS`` rows (bounded memory)."""
        import pyarrow as pa

        arrays = [pa.array(ids, pa.string())] + [pa.array(values[:, k]) for k in range(values.shape[1])]
        self._pending.append(pa.Table.from_arrays(arrays, schema=self.schema))
        self._pending_rows += len(ids)
        self.rows += len(ids)
        if self._pending_rows >= self.ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._pending:
            with self._named():
                self.writer.write_table(pa.concat_tables(self._pending))
            self._pending, self._pending_rows = [], 0

    def _named(self):
        """A write error (a full disk) as a PredictError naming the file, not its temp."""
        from contextlib import contextmanager

        @contextmanager
        def named():
            try:
                yield
            except OSError as err:  # pyarrow's carry their errno only in the text: "[errno 28] ..."
                import re

                code = err.errno or int((re.search(r"errno (\d+)", str(err)) or [0, 0])[1])
                reason = os.strerror(code) if code else " ".join(str(err).replace(self.tmp, self.out).split())
                raise PredictError(f"{self.out}: cannot write it: {reason}") from None

        return named()

    def finish(self) -> None:
        """Write the rest and close the temp (nothing published yet)."""
        self._flush()
        with self._named():
            self.writer.close()

    def publish(self) -> None:
        with self._named():
            storage.publish(self.tmp, self.out)

    def close(self) -> None:
        self.finish()
        self.publish()

    def abort(self) -> None:
        import contextlib

        self._pending = []
        with contextlib.suppress(Exception):  # a writer that failed to close (a full disk) fails again
            self.writer.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


PUBLISHING = ".tfpipe-publishing.json"
"""Present in a folder while :func:`publish_together` replaces several files there (its content names
them): a reader (``tfpipe blend --pred-dir``) refuses the folder, as a kill then leaves a mix."""


def publish_together(sinks: Sequence[ParquetSink]) -> None:
    """Publish finished sinks as one set: ``PUBLISHING`` is written in their folder first and deleted
    after the last, so that a kill between two files leaves a folder that readers refuse (the re-run
    publishes the whole set again) instead of a silent mix of two runs."""
    import json

    folders = {posix_dirname(sink.out) for sink in sinks}
    if len(sinks) < 2 or len(folders) != 1:
        for sink in sinks:
            sink.publish()
        return
    marker = storage.join(folders.pop(), PUBLISHING)
    names = [posix_basename(sink.out) for sink in sinks]
    try:
        storage.write_bytes(marker, json.dumps({"files": names, "pid": os.getpid()}).encode())
    except OSError as err:
        raise PredictError(f"{marker}: cannot write it: {err.strerror or err}") from None
    for sink in sinks:
        sink.publish()
    storage.delete(marker, missing_ok=True)


def posix_dirname(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else "."


def posix_basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def submission_weights(weights: str | None, schema: Schema) -> np.ndarray | None:
    """The per-target weights of ``sample_submission.csv`` (float64), or None."""
    if not weights:
        return None
    from tfpipe.prediction_files import load_weights

    return np.asarray(load_weights(weights, schema), dtype=np.float64)


def validation_files(config, where: str) -> tuple[list[str], str]:
    """(validation files, their folder) of a run's config: the data of ``--oof``."""
    from tfpipe.data import resolve_sources

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

    from tfpipe.prediction_files import TRAIN_STD_KEY, prediction_metadata, truth_metadata

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


if __name__ == "__main__":  # python -m tfpipe.predict: the command line is tfpipe.cli's
    from tfpipe.cli import predict_main

    sys.exit(predict_main(prog="python -m tfpipe.predict"))

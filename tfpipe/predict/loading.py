"""A trained model for inference: ``RUN/best.keras``, a checkpoint rebuilt from ``RUN/config.yaml`` and
``RUN/stats.json`` (EMA weights when the run used EMA), or ``RUN`` alone; and its Normalization layer."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

from tfpipe import storage
from tfpipe.train.rundir import BEST, CHECKPOINTS, RunDir

if TYPE_CHECKING:  # Keras and TensorFlow load only when a command runs, not for --help
    from tfpipe.data.normalize import Normalization


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

    import tfpipe.data.normalize  # noqa: F401
    import tfpipe.models  # noqa: F401  (registers the custom layers the file names)

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

    from tfpipe.data.normalize import Normalization
    from tfpipe.data.stats import load_stats
    from tfpipe.models import build_normalized_model
    from tfpipe.schedule import make_optimizer

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
    """The model's first layer, :class:`~tfpipe.data.normalize.Normalization` (PredictError without it)."""
    from tfpipe.data.normalize import Normalization

    try:
        norm = model.get_layer("normalization")
    except ValueError:
        raise PredictError(
            f"{where}: the model has no normalization layer (trained by an older tfpipe?)"
        ) from None
    if not isinstance(norm, Normalization):
        raise PredictError(f"{where}: its 'normalization' layer is not a tfpipe Normalization")
    return norm

"""``tfpipe predict --models MODELS/ --data T --out-dir PRED/``: every model of a set in one pass.

The data is read and parsed once; each batch goes through every model's own XLA-compiled forward pass
(:func:`tfpipe.predict.predict_into`), and model ``NAME``'s predictions go to ``PRED/NAME.parquet``:
the same file, bit for bit, as ``tfpipe predict --checkpoint MODELS/NAME.keras --data T --out
PRED/NAME.parquet`` with the same ``--batch-size`` (the same float32 batches through the same
compiled graph of the same weights; the float64 post-processing is per row). With ``--oof`` the
models' common validation files are predicted and their exact truth goes to ``PRED/truth.parquet``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tfpipe import storage
from tfpipe.experiments.model_set import ModelSetError, read_index
from tfpipe.predict import (
    PredictError,
    load_keras,
    normalization_of,
    predict_into,
    submission_weights,
    validation_files,
)

TRUTH_FILE = "truth.parquet"
"""The exact truth beside the models' files with ``--oof`` (``tfpipe blend --pred-dir`` skips it)."""


@dataclass
class SetModel:
    """One model of a set, loaded: its name, Keras model, Normalization layer and run config."""

    name: str
    model: Any
    norm: Any
    config: Any


def load_model_set(folder: str) -> list[SetModel]:
    """Every model of the set in ``folder``, in index order; each ``.keras`` is checked against the
    sha256 its index records (a file replaced by a later, unfinished export is refused)."""
    from tfpipe.config import load_saved_config

    index = read_index(folder)
    models = []
    for entry in index["models"]:
        files = entry["files"]
        path = storage.join(folder, files["model"]["file"])
        model = load_keras(path, sha256=files["model"]["sha256"])
        config_path = storage.join(folder, files["config"]["file"])
        config = load_saved_config(config_path) if storage.exists(config_path) else None
        models.append(SetModel(entry["name"], model, normalization_of(model, path), config))
    schemas = {m.norm.schema.name for m in models}
    if len(schemas) > 1:
        raise ModelSetError(f"{folder}: its models have different schemas ({', '.join(sorted(schemas))})")
    return models


def _oof_files(models: list[SetModel], folder: str) -> tuple[list[str], str]:
    """The validation files all models share (PredictError if they differ)."""
    seen = {m.name: validation_files(m.config, storage.join(folder, m.name + ".keras")) for m in models}
    first = models[0].name
    for name, files in seen.items():
        if files != seen[first]:
            raise PredictError(
                f"{folder}: {first} and {name} validate on different files; --oof needs one validation set "
                "(predict each model with --checkpoint MODELS/NAME.keras --oof instead)"
            )
    return seen[first]


def predict_models(
    folder: str, data: str | None, out_dir: str, weights: str | None = None, batch_size: int | None = None,
    oof: bool = False, allow_partial: bool = False, progress: bool = False,
) -> dict:  # fmt: skip
    """Write ``out_dir/NAME.parquet`` for every model of the set (and ``truth.parquet`` with ``oof``).

    The batch size is ``batch_size`` or the first model's ``data.batch_size``.
    """
    t0 = time.time()
    models = load_model_set(folder)
    first = models[0]
    batch = batch_size or (first.config.data.batch_size if first.config is not None else 1024)
    files = None
    if oof:
        files, path = _oof_files(models, folder)
        data = data or path
    if data is None:
        raise PredictError("--data is required (or --oof for the models' validation data)")
    outs = [storage.join(out_dir, m.name + ".parquet") for m in models]
    truth = storage.join(out_dir, TRUTH_FILE) if oof else None
    storage.makedirs(out_dir)
    rows = predict_into(
        [(m.model, m.norm) for m in models], outs, data, batch,
        submission_weights(weights, first.norm.schema), files, allow_partial, truth, progress,
    )  # fmt: skip
    seconds = time.time() - t0
    summary = {
        "out_dir": out_dir, "models": [m.name for m in models], "files": outs, "rows": rows,
        "batch_size": batch, "seconds": round(seconds, 2),
        "samples_per_s": round(rows / max(seconds, 1e-9), 1),
    }  # fmt: skip
    if truth is not None:
        summary["truth"] = truth
    return summary

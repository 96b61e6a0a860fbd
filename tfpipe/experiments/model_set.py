"""A model set: the folder ``tfpipe export-models`` writes and ``tfpipe predict --models`` reads.

``MODELS/<name>.keras`` (the run's ``best.keras``: self-contained, it carries its normalisation
statistics), ``MODELS/<name>.config.yaml`` (the run's resolved config), ``MODELS/<name>.stats.json``
(its statistics) and ``MODELS/models.json``, the index, written last: it commits the set. The index::

    {"version": 1, "kind": "tfpipe-model-set", "schema": "kaggle", "metric": "best_r2",
     "select": "best:13", "runs": "gs://b/runs",
     "models": [{"name", "run_dir", "run_name", "state", "best_checkpoint", "best_r2", "params",
                 "files": {"model"|"config"|"stats": {"file", "sha256", "bytes"}}}]}

``models`` is in selection order (best first for ``best:K``); ``params`` holds the config keys that
differ between the set's runs; a reader verifies each model file's sha256 before it loads it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tfpipe import storage
from tfpipe.experiments import check_name

INDEX = "models.json"
VERSION = 1
KIND = "tfpipe-model-set"
SUFFIXES = {"model": ".keras", "config": ".config.yaml", "stats": ".stats.json"}
"""The files of one model, by kind: ``<name><suffix>``."""


class ModelSetError(ValueError):
    """A bad selection, a run that cannot be exported, or a folder that is not a model set."""


def file_sha256(path: str) -> str:
    """sha256 hex digest of a local file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def file_names(name: str) -> dict[str, str]:
    """The file name of each kind of file of model ``name``."""
    return {kind: name + suffix for kind, suffix in SUFFIXES.items()}


def read_index(folder: str) -> dict[str, Any]:
    """The index of a model set (ModelSetError if ``folder`` is not one)."""
    path = storage.join(folder, INDEX)
    if not storage.exists(path):
        raise ModelSetError(f"{folder}: no {INDEX} (not a model set written by tfpipe export-models)")
    try:
        index = json.loads(storage.read_bytes(path))
    except ValueError as err:
        raise ModelSetError(f"{path}: not JSON ({err})") from None
    if not isinstance(index, dict) or index.get("kind") != KIND:
        raise ModelSetError(f"{path}: not a model set index (kind is not {KIND!r})")
    if index.get("version") != VERSION:
        raise ModelSetError(f"{path}: version {index.get('version')!r}, this tfpipe reads version {VERSION}")
    models = index.get("models")
    if not isinstance(models, list) or not models:
        raise ModelSetError(f"{path}: lists no models")
    seen: set[str] = set()
    for entry in models:
        if not isinstance(entry, dict) or "name" not in entry or set(entry.get("files", {})) != set(SUFFIXES):
            raise ModelSetError(f"{path}: a model entry lacks its name or files: {str(entry)[:120]}")
        try:  # the name becomes PRED/NAME.parquet: one plain file name, once
            check_name(entry["name"], "model name")
        except ValueError as err:
            raise ModelSetError(f"{path}: {err}") from None
        if entry["name"] in seen:
            raise ModelSetError(f"{path}: model name {entry['name']!r} appears twice (each model writes "
                                "NAME.parquet: one would overwrite the other)")  # fmt: skip
        seen.add(entry["name"])
    return index


def encode_index(index: dict[str, Any]) -> bytes:
    """The index as written: indented JSON, keys in a fixed order (a re-run writes the same bytes)."""
    return (json.dumps(index, indent=1) + "\n").encode()

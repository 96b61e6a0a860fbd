"""Experiment configuration: a YAML file plus dotted ``key=value`` overrides, as typed dataclasses.

A config file holds any subset of :class:`TrainConfig`'s fields (:mod:`tfpipe.config.schema`); the
rest keep their defaults::

    cfg = load_config("configs/tiny.yaml", ["model.d_model=128", "data.sources.0.path=gs://b/x",
                                            "data.representations=[column,log]"])

Type checking and conversion are OmegaConf's (structured configs: the dataclasses are the schema;
``1e-3`` becomes a float although YAML 1.1 reads it as a string, ``13.0`` is not an int). This module
only places values: overrides are parsed with ``yaml.safe_load``; a list index one past the end
appends an element (``data.sources.1.path=...`` adds a second source); ``model.name`` selects the
model's own config class (:mod:`tfpipe.config.models`), and a file's keys that belong to another model
are dropped (so ``model.name=mlp`` on a Squeezeformer file works). Unknown keys and wrong types raise
:class:`ConfigError` naming the key, the file or override, the expected type and the value.

"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import hashlib
import json
import os
import typing
from dataclasses import MISSING
from pathlib import Path
from typing import Any

import yaml

from tfpipe.config.models import model_config_class, model_config_classes
from tfpipe.config.schema import (
    RESUME_MUTABLE,
    SESSION_KEYS,
    ConfigError,
    TrainConfig,
    upgrade_legacy_keys,
)
from tfpipe.config.tree import ConfigTree, join_key, plain, resolve

PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
"""The configs shipped with the package (``tiny``, ``reference``); ``configs/`` of a checkout links here."""


# -- loading and saving ------------------------------------------------------------------------------


def config_path(name: str | os.PathLike[str]) -> str:
    """A config name (``tiny``: a config shipped with tfpipe) or a path, as a path."""
    text = os.fspath(name)
    packaged = PACKAGED_CONFIGS / f"{text}.yaml"
    if "/" not in text and not text.endswith((".yaml", ".yml")) and packaged.is_file():
        return str(packaged)
    return text


def yaml_error_line(path: str, err: yaml.YAMLError) -> str:
    """A YAML error in one line: ``PATH: line L, column C: problem`` (PyYAML's own text spans 4-7 lines)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    context = getattr(err, "context", None)
    return f"{path}: not valid YAML: {where}{problem}" + (f" ({context})" if context else "")


def _read_yaml(path: str) -> dict:
    try:
        if "://" in path:
            from tfpipe import storage

            text = storage.read_bytes(path).decode()
        else:
            text = Path(path).read_text()
        tree = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(yaml_error_line(path, err)) from None
    except (OSError, RuntimeError, UnicodeDecodeError) as err:  # storage.StorageError is a RuntimeError
        raise ConfigError(f"cannot read config {path}: {err}") from None
    if tree is None:
        # All defaults would train the reference-size model on the demo data: never what was meant.
        raise ConfigError(f"{path}: the config file is empty (set at least one key, or use --config tiny)")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(tree).__name__}")
    return tree


def load_config(path: str | os.PathLike[str] | None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (None: all defaults), apply ``key=value`` overrides, check every type.

    ``path`` may also name a config shipped with tfpipe (``"tiny"``, ``"reference"``). A missing
    ``name`` becomes the file's stem (``"default"`` without a file). Paths may be gs://.

    Raises:
        ConfigError: unknown key, wrong type, invalid value or unreadable YAML.
    """
    path = config_path(path) if path is not None else None
    tree = ConfigTree(_read_yaml(str(path)) if path is not None else {}, str(path) if path else "defaults")
    tree.tree.setdefault("name", Path(str(path)).stem if path is not None else "default")
    for text in overrides:
        tree.set(text)
    return resolve(tree)


def config_from_dict(tree: dict, where: str = "a saved config") -> TrainConfig:
    """A TrainConfig from the plain tree of :func:`config_to_dict` (ConfigError if it no longer fits).

    A tree of an older tfpipe, whose ``model`` held every model's fields, loads too (the other
    models' fields are dropped, as from a file), and so does one with ``mlflow: true`` (now
    ``tracking.backend: mlflow``).
    """
    return resolve(ConfigTree(copy.deepcopy(tree), where, drop_other_models=True))


def load_saved_config(path: str | os.PathLike[str]) -> TrainConfig:
    """A run's own ``config.yaml`` (local or gs://), also one an older tfpipe wrote."""
    return config_from_dict(_read_yaml(os.fspath(path)), os.fspath(path))


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as plain dicts, lists and scalars (``load_config`` of its YAML gives it back)."""
    return plain(config)


def dump_config(config: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Write the config as YAML, atomically (local or gs://; see ``tfpipe.storage.write_bytes``)."""
    from tfpipe import storage

    data = yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None, width=110)
    storage.write_bytes(os.fspath(path), data.encode())


# -- what a run is: hashes and resume rules ----------------------------------------------------------


def config_hash(config: TrainConfig, part: str) -> str:
    """sha256 of the fields that change the model (``part="model"``) or the data (``part="data"``).

    model: schema, representations, clip thresholds, q0002 levels and the model's own config (the
    training run adds the statistics' hash). data: sources' paths and weights, the validation split,
    seed, sub_epochs, batch_size (per replica).
    """
    d = config_to_dict(config)
    data = d["data"]
    if part == "model":
        keys = ("schema", "representations", "feature_clip", "target_clip", "q0002_replacement_levels")
        payload = {k: data[k] for k in keys} | {"model": d["model"]}
    elif part == "data":
        payload = {
            "sources": [{"path": s["path"], "weight": s["weight"]} for s in data["sources"]],
            "seed": d["seed"],
        } | {k: data[k] for k in ("val_fraction", "val_split", "val_period_days", "sub_epochs", "batch_size")}
    else:
        raise ValueError(f"part must be 'model' or 'data', got {part!r}")
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def normalized_tree(tree: dict) -> dict:
    """A saved config tree in today's layout, with only its model's fields (an older tfpipe saved every
    model's, and ``mlflow: true|false`` instead of the ``tracking`` section)."""
    tree = upgrade_legacy_keys(tree)
    model = tree.get("model")
    if not isinstance(model, dict) or model.get("name", "squeezeformer") not in model_config_classes():
        return tree
    mine = {f.name for f in dataclasses.fields(model_config_class(model.get("name", "squeezeformer")))}
    return tree | {"model": {k: v for k, v in model.items() if k in mine}}


def flatten_tree(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config tree (lists of dicts by index), values as YAML holds them."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out |= flatten_tree(v, join_key(prefix, str(k)))
        return out
    if isinstance(tree, (list, tuple)) and tree and all(isinstance(v, dict) for v in tree):
        items = (flatten_tree(item, join_key(prefix, str(i))) for i, item in enumerate(tree))
        return {k: v for flat in items for k, v in flat.items()}
    return {prefix: plain(tree)}


def changed_fields(old: dict, new: dict) -> list[str]:
    """Sorted dotted keys whose values differ between two :func:`config_to_dict` trees.

    Lists of mappings (``data.sources``) are compared element by element (``data.sources.0.path``);
    a key present on one side only counts as changed. Other models' fields in a tree saved by an
    older tfpipe are not compared.
    """
    a, b = flatten_tree(normalized_tree(old)), flatten_tree(normalized_tree(new))
    return sorted(
        k for k in a.keys() | b.keys() if a.get(k, MISSING) != b.get(k, MISSING) and k not in SESSION_KEYS
    )


def is_resume_mutable(key: str) -> bool:
    """Whether dotted ``key`` is in :data:`RESUME_MUTABLE` (patterns included)."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUME_MUTABLE)


def resume_conflicts(old: dict, new: dict) -> list[str]:
    """Changed keys that may not change on resume, even with ``--allow-config-change``."""
    return [k for k in changed_fields(old, new) if not is_resume_mutable(k)]

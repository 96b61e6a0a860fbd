"""Experiment configuration: a YAML file plus dotted ``key=value`` overrides, as typed dataclasses.

A config file holds any subset of :class:`TrainConfig`'s fields (:mod:`tfpipe.config_schema`); the
rest keep their defaults::

    cfg = load_config("configs/tiny.yaml", ["model.d_model=128", "data.sources.0.path=gs://b/x",
                                            "data.representations=[column,log]"])

Type checking and conversion are OmegaConf's (structured configs: the dataclasses are the schema;
``1e-3`` becomes a float although YAML 1.1 reads it as a string, ``13.0`` is not an int). This module
only places values: overrides are parsed with ``yaml.safe_load``; a list index one past the end
appends an element (``data.sources.1.path=...`` adds a second source); ``model.name`` selects the
model's own config class (:mod:`tfpipe.model_config`), and a file's keys that belong to another model
are dropped (so ``model.name=mlp`` on a Squeezeformer file works). Unknown keys and wrong types raise
:class:`ConfigError` naming the key, the file or override, the expected type and the value.

``python -m tfpipe.config --reference`` renders every field to ``docs/configuration.md``;
``python -m tfpipe.config --config F [key=value ...]`` prints the resolved config.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import sys
import types
import typing
from dataclasses import MISSING
from pathlib import Path
from typing import Any

import yaml

from tfpipe.config_schema import (  # noqa: F401  (re-exported: the public names of the configuration)
    PRECISIONS,
    REPRESENTATIONS,
    RESUME_MUTABLE,
    SESSION_KEYS,
    VAL_SPLITS,
    ConfigError,
    DataConfig,
    FinetuneConfig,
    OptimConfig,
    SourceConfig,
    TrainConfig,
    parse_duration,
)
from tfpipe.model_config import MODEL_CONFIGS, LossConfig, ModelConfig, model_config_class  # noqa: F401

PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
"""The configs shipped with the package (``tiny``, ``reference``); ``configs/`` of a checkout links here."""


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def plain(value: Any) -> Any:
    """Dataclasses to dicts and tuples to lists, recursively (what YAML and JSON hold)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


# -- where a value goes (types are checked by OmegaConf) ---------------------------------------------


def type_name(tp: Any) -> str:
    """A readable name of a type annotation (``float | None``, ``tuple[str, ...]``, ``DataConfig``)."""
    if tp is type(None):
        return "None"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"tuple[{type_name(args[0])}, ...]"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls).get(name, MISSING)


def _type_at(root: type, parts: list[str]) -> Any:
    """The annotation at dotted ``parts`` below dataclass ``root`` (MISSING if there is none)."""
    tp: Any = root
    for part in parts:
        if dataclasses.is_dataclass(tp):
            tp = _field_type(tp, part)
        elif typing.get_origin(tp) in (list, tuple) and part.isdigit():
            tp = typing.get_args(tp)[0]
        else:
            return MISSING
        if tp is MISSING:
            return MISSING
    return tp


def _default_at(root: type, parts: list[str]) -> Any:
    """The plain default of the field at ``parts`` (a fresh ``{}`` for a section)."""
    cls = _type_at(root, parts[:-1])
    f = next(f for f in dataclasses.fields(cls) if f.name == parts[-1])
    value = f.default_factory() if f.default_factory is not MISSING else f.default
    return {} if dataclasses.is_dataclass(value) else plain(value)


class _Tree:
    """The plain YAML tree of a config and where each value came from (file or override)."""

    def __init__(self, tree: dict, where: str, drop_other_models: bool = False) -> None:
        self.tree, self.where, self.origin = tree, where, {}
        self.overrides: list[str] = []
        self.drop_other_models = drop_other_models
        """A saved tree of an older tfpipe held every model's fields under ``model``."""

    @property
    def summary(self) -> str:
        """The file and the overrides, for errors that no single key explains."""
        return f"{self.where} with overrides {self.overrides}" if self.overrides else self.where

    def source_of(self, dotted: str) -> str:
        """The override that set ``dotted`` or a key above it, else the file."""
        while dotted:
            if dotted in self.origin:
                return self.origin[dotted]
            dotted = dotted.rpartition(".")[0]
        return self.where

    def set(self, text: str) -> list[str]:
        """Apply one ``dotted.key=value`` override (the path must exist or be one past a list's end)."""
        where = f"override {text!r}"
        if "=" not in text:
            raise ConfigError(f"{where}: expected key=value")
        dotted, raw = (s.strip() for s in text.split("=", 1))
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: cannot parse the value: {err}") from None
        parts = dotted.split(".")
        try:
            self._set_path(parts, value, where)
        except (AttributeError, TypeError, KeyError) as err:
            message = f"{where}: cannot set {dotted!r}: a value on its path is not a mapping or list"
            raise ConfigError(message) from err
        self.origin[dotted] = where
        self.overrides.append(text)
        return parts

    def _set_path(self, parts: list[str], value: Any, where: str) -> None:
        node: Any = self.tree
        for depth, part in enumerate(parts[:-1]):
            here = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                index = self._index(node, part, here, where)
                node = node[index]
                continue
            if parts[0] != "model" and _type_at(TrainConfig, parts[: depth + 1]) is MISSING:
                raise ConfigError(f"unknown key {here!r} in {where}; {_known(parts[:depth])}")
            if node.get(part) is None:
                node[part] = {} if parts[0] == "model" else _default_at(TrainConfig, parts[: depth + 1])
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[self._index(node, last, ".".join(parts), where)] = value
        else:
            node[last] = value

    @staticmethod
    def _index(node: list, part: str, here: str, where: str) -> int:
        if not part.isdigit():
            raise ConfigError(f"unknown key {here!r} in {where}: a list takes an index")
        index = int(part)
        if index > len(node):
            raise ConfigError(f"{here!r} in {where}: index past the end (length {len(node)})")
        if index == len(node):
            node.append({})
        return index


def _known(parts: list[str], root: type = TrainConfig) -> str:
    tp = _type_at(root, parts)
    if dataclasses.is_dataclass(tp):
        return f"known keys: {', '.join(f.name for f in dataclasses.fields(tp))}"
    return f"{'.'.join(parts)} has no sub-keys"


# -- validation: OmegaConf ---------------------------------------------------------------------------


def _omegaconf_error(
    err: Exception, dotted: str, value: Any, tree: _Tree, root: type, prefix: str
) -> ConfigError:
    """A ConfigError naming the key, what the schema expects, the value and its source."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    key = re.sub(r"\[(\d+)\]", r".\1", getattr(err, "full_key", "") or "") or dotted
    key = _join(prefix, key) if prefix and not key.startswith(prefix + ".") and key != prefix else key
    parts = key.split(".")[1:] if prefix else key.split(".")
    where = tree.source_of(key)
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        return ConfigError(f"unknown key {key!r} in {where}; {_known(parts[:-1], root)}")
    tp = _type_at(root, parts)
    got = getattr(err, "value", None)
    got = value if got is None or key == dotted else got
    return ConfigError(f"{key}: expected {type_name(tp)}, got {plain(got)!r} ({where})")


def _merge(node: Any, values: dict, tree: _Tree, root: type, prefix: str, path: str = "") -> None:
    """Put ``values`` into the structured ``node`` key by key, so that an error names its key."""
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException

    for key, value in values.items():
        dotted = _join(path, str(key))
        full = _join(prefix, dotted)
        child = node._get_node(key) if key in node.keys() else None
        if child is None:
            parts = dotted.split(".")
            raise ConfigError(f"unknown key {full!r} in {tree.source_of(full)}; {_known(parts[:-1], root)}")
        if isinstance(child, DictConfig) and (isinstance(value, dict) or value is None):
            _merge(child, value or {}, tree, root, prefix, dotted)  # an empty section keeps its defaults
            continue
        element = typing.get_args(_type_at(root, dotted.split(".")))
        if isinstance(value, list) and element and dataclasses.is_dataclass(element[0]):
            value = [
                _element(element[0], item, tree, root, prefix, f"{dotted}.{i}")
                for i, item in enumerate(value)
            ]
        try:
            node[key] = value
        except OmegaConfBaseException as err:
            raise _omegaconf_error(err, full, value, tree, root, prefix) from None


def _element(cls: type, value: Any, tree: _Tree, root: type, prefix: str, dotted: str) -> Any:
    """One structured list element (e.g. a source) from a mapping, each key checked where it is."""
    from omegaconf import OmegaConf

    full = _join(prefix, dotted)
    if not isinstance(value, dict):
        raise ConfigError(f"{full}: expected {cls.__name__}, got {value!r} ({tree.source_of(full)})")
    node = OmegaConf.structured(cls)
    _merge(node, value, tree, root, prefix, dotted)
    return node


def _build(cls: type, values: dict, tree: _Tree, prefix: str = "") -> Any:
    """``cls`` from plain ``values``: OmegaConf checks and converts every type, then the dataclass checks."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    node = OmegaConf.structured(cls)
    _merge(node, values, tree, cls, prefix)
    try:
        return OmegaConf.to_object(node)
    except (OmegaConfBaseException, ValueError, TypeError) as err:  # the dataclasses' own checks
        cause = err.__cause__ if isinstance(err.__cause__, (ValueError, TypeError)) else err
        raise ConfigError(f"{prefix + ': ' if prefix else ''}{cause} ({tree.summary})") from None


def _model(values: Any, tree: _Tree) -> ModelConfig:
    """The model's own config class (``name``) from the ``model`` section; other models' keys are dropped."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"model: expected a mapping of ModelConfig, got {values!r} ({tree.source_of('model')})"
        )
    name = values.get("name", "squeezeformer")
    try:
        cls = model_config_class(str(name))
    except ValueError as err:
        raise ConfigError(f"model.name: {err} ({tree.source_of('model.name')})") from None
    mine = {f.name for f in dataclasses.fields(cls)}
    others = {f.name for c in MODEL_CONFIGS.values() for f in dataclasses.fields(c)} - mine
    # a model.name override switches models: the file's keys of its own model no longer apply
    switched = tree.drop_other_models or tree.source_of("model.name") != tree.where
    kept = {}
    for key, value in values.items():
        if key in others and switched and tree.source_of(f"model.{key}") == tree.where:
            continue
        if key not in mine:
            raise ConfigError(
                f"unknown key {'model.' + str(key)!r} in {tree.source_of(f'model.{key}')}; "
                f"the {name} model's keys: {', '.join(sorted(mine))}"
            )
        kept[key] = value
    return _build(cls, kept, tree, "model")


# -- loading and saving ------------------------------------------------------------------------------


def config_path(name: str | os.PathLike[str]) -> str:
    """A config name (``tiny``: a config shipped with tfpipe) or a path, as a path."""
    text = os.fspath(name)
    packaged = PACKAGED_CONFIGS / f"{text}.yaml"
    if "/" not in text and not text.endswith((".yaml", ".yml")) and packaged.is_file():
        return str(packaged)
    return text


def _read_yaml(path: str) -> dict:
    try:
        if "://" in path:
            from tfpipe import storage

            text = storage.read_bytes(path).decode()
        else:
            text = Path(path).read_text()
        tree = yaml.safe_load(text)
    except (OSError, RuntimeError, yaml.YAMLError) as err:  # storage.StorageError is a RuntimeError
        raise ConfigError(f"cannot read config {path}: {err}") from None
    tree = {} if tree is None else tree
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(tree).__name__}")
    return tree


def _resolve(tree: _Tree) -> TrainConfig:
    values = dict(tree.tree)
    model = _model(values.pop("model", None), tree)
    return dataclasses.replace(_build(TrainConfig, values, tree), model=model)


def load_config(path: str | os.PathLike[str] | None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (None: all defaults), apply ``key=value`` overrides, check every type.

    ``path`` may also name a config shipped with tfpipe (``"tiny"``, ``"reference"``). A missing
    ``name`` becomes the file's stem (``"default"`` without a file). Paths may be gs://.

    Raises:
        ConfigError: unknown key, wrong type, invalid value or unreadable YAML.
    """
    path = config_path(path) if path is not None else None
    tree = _Tree(_read_yaml(str(path)) if path is not None else {}, str(path) if path else "defaults")
    tree.tree.setdefault("name", Path(str(path)).stem if path is not None else "default")
    for text in overrides:
        tree.set(text)
    return _resolve(tree)


def config_from_dict(tree: dict, where: str = "a saved config") -> TrainConfig:
    """A TrainConfig from the plain tree of :func:`config_to_dict` (ConfigError if it no longer fits).

    A tree of an older tfpipe, whose ``model`` held every model's fields, loads too (the other
    models' fields are dropped, as from a file).
    """
    return _resolve(_Tree(copy.deepcopy(tree), where, drop_other_models=True))


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
    """A saved config tree with only its model's fields (an older tfpipe saved every model's)."""
    model = tree.get("model")
    if not isinstance(model, dict) or model.get("name", "squeezeformer") not in MODEL_CONFIGS:
        return tree
    mine = {f.name for f in dataclasses.fields(model_config_class(model.get("name", "squeezeformer")))}
    return tree | {"model": {k: v for k, v in model.items() if k in mine}}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out |= _flatten(v, _join(prefix, str(k)))
        return out
    if isinstance(tree, (list, tuple)) and tree and all(isinstance(v, dict) for v in tree):
        return {k: v for i, item in enumerate(tree) for k, v in _flatten(item, _join(prefix, str(i))).items()}
    return {prefix: plain(tree)}


def changed_fields(old: dict, new: dict) -> list[str]:
    """Sorted dotted keys whose values differ between two :func:`config_to_dict` trees.

    Lists of mappings (``data.sources``) are compared element by element (``data.sources.0.path``);
    a key present on one side only counts as changed. Other models' fields in a tree saved by an
    older tfpipe are not compared.
    """
    a, b = _flatten(normalized_tree(old)), _flatten(normalized_tree(new))
    return sorted(
        k for k in a.keys() | b.keys() if a.get(k, MISSING) != b.get(k, MISSING) and k not in SESSION_KEYS
    )


def is_resume_mutable(key: str) -> bool:
    """Whether dotted ``key`` is in :data:`RESUME_MUTABLE` (patterns included)."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUME_MUTABLE)


def resume_conflicts(old: dict, new: dict) -> list[str]:
    """Changed keys that may not change on resume, even with ``--allow-config-change``."""
    return [k for k in changed_fields(old, new) if not is_resume_mutable(k)]


def main(argv: list[str] | None = None) -> int:
    from tfpipe.cliutil import ArgumentParser
    from tfpipe.config_reference import config_reference_markdown

    parser = ArgumentParser(prog="python -m tfpipe.config", description=__doc__.split("\n")[0])
    parser.add_argument("--reference", action="store_true", help="print the Markdown reference of all keys")
    parser.add_argument("--config", help="YAML file to resolve")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_intermixed_args(argv)
    if args.reference:
        sys.stdout.write(config_reference_markdown())
        return 0
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"python -m tfpipe.config: error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Placing a config's values: a plain YAML tree, overrides into it, then OmegaConf for every type.

:class:`ConfigTree` holds the tree and where each value came from (the file or an override), so
that every error names its source; :func:`resolve` builds the :class:`TrainConfig` (the model's own
config class chosen by ``model.name``). Types are checked and converted by OmegaConf structured
configs. The one conversion done here is the lossless widening OmegaConf 2.4 asks callers to do
themselves (an int where a float is declared, a list where a tuple is): :func:`as_declared`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import MISSING
from typing import Any

import yaml

from tfpipe.config.models import ModelConfig, model_config_class, model_config_classes
from tfpipe.config.schema import ConfigError, TrainConfig, upgrade_legacy_keys


def join_key(prefix: str, key: str) -> str:
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


class ConfigTree:
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


def as_declared(value: Any, tp: Any) -> Any:
    """``value`` widened to annotation ``tp`` where that loses nothing: int to float, list to tuple.

    OmegaConf 2.3 did these conversions on assignment; 2.4 still does them but warns (FutureWarning,
    "pass the declared type"). Anything else is left for OmegaConf to check and refuse.
    """
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        declared = [a for a in args if a is not type(None)]
        if type(value) is int and float in declared and int not in declared:
            return float(value)
        return as_declared(value, declared[0]) if len(declared) == 1 else value
    if tp is float and type(value) is int:  # not bool: True is no float
        return float(value)
    if typing.get_origin(tp) is tuple and isinstance(value, (list, tuple)):
        element = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        return tuple(as_declared(v, element) for v in value) if element is not None else tuple(value)
    return value


def _omegaconf_error(
    err: Exception, dotted: str, value: Any, tree: ConfigTree, root: type, prefix: str
) -> ConfigError:
    """A ConfigError naming the key, what the schema expects, the value and its source."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    key = re.sub(r"\[(\d+)\]", r".\1", getattr(err, "full_key", "") or "") or dotted
    key = join_key(prefix, key) if prefix and not key.startswith(prefix + ".") and key != prefix else key
    parts = key.split(".")[1:] if prefix else key.split(".")
    where = tree.source_of(key)
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        return ConfigError(f"unknown key {key!r} in {where}; {_known(parts[:-1], root)}")
    tp = _type_at(root, parts)
    got = getattr(err, "value", None)
    got = value if got is None or key == dotted else got
    return ConfigError(f"{key}: expected {type_name(tp)}, got {plain(got)!r} ({where})")


def _merge(node: Any, values: dict, tree: ConfigTree, root: type, prefix: str, path: str = "") -> None:
    """Put ``values`` into the structured ``node`` key by key, so that an error names its key."""
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException

    for key, value in values.items():
        dotted = join_key(path, str(key))
        full = join_key(prefix, dotted)
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
            node[key] = as_declared(value, _type_at(root, dotted.split(".")))
        except OmegaConfBaseException as err:
            raise _omegaconf_error(err, full, value, tree, root, prefix) from None


def _element(cls: type, value: Any, tree: ConfigTree, root: type, prefix: str, dotted: str) -> Any:
    """One structured list element (e.g. a source) from a mapping, each key checked where it is."""
    from omegaconf import OmegaConf

    full = join_key(prefix, dotted)
    if not isinstance(value, dict):
        raise ConfigError(f"{full}: expected {cls.__name__}, got {value!r} ({tree.source_of(full)})")
    node = OmegaConf.structured(cls)
    _merge(node, value, tree, root, prefix, dotted)
    return node


def _build(cls: type, values: dict, tree: ConfigTree, prefix: str = "") -> Any:
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


def _model(values: Any, tree: ConfigTree) -> ModelConfig:
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
    others = {f.name for c in model_config_classes().values() for f in dataclasses.fields(c)} - mine
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


def resolve(tree: ConfigTree) -> TrainConfig:
    """The TrainConfig of ``tree`` (an older tfpipe's keys upgraded: ``mlflow: true``)."""
    values = upgrade_legacy_keys(dict(tree.tree))
    model = _model(values.pop("model", None), tree)
    return dataclasses.replace(_build(TrainConfig, values, tree), model=model)

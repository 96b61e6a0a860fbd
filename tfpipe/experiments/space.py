"""A sweep's search space: dotted config keys mapped to Optuna distributions, read from YAML.

.. code-block:: yaml

    optim.learning_rate: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
    model.d_model:       {type: int, low: 64, high: 256, step: 64}
    data.representations: {type: categorical, choices: [[column, log], [column, variable, log]]}

``float`` takes ``low``, ``high`` and ``log`` or ``step``; ``int`` takes ``low``, ``high``, ``step``
(default 1) and ``log``; ``categorical`` takes ``choices`` (scalars, or lists and mappings, which Optuna
sees as their YAML text). :func:`load_space` checks the file, :func:`check_space` loads the config
with every bound and choice (unknown keys and wrong types are found before any trial starts).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from tfpipe import storage

TYPES = {
    "float": {"low", "high", "log", "step"},
    "int": {"low", "high", "log", "step"},
    "categorical": {"choices"},
}
"""The distribution types and the fields each takes (besides ``type``)."""


class SpaceError(ValueError):
    """A search space file that cannot be used (names the file and the key)."""


@dataclass(frozen=True)
class Param:
    """One dimension of the search space."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def extremes(self) -> list[Any]:
        """The values that bound this dimension: low and high, or every choice."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        """The trial's value (an Optuna ``Trial``); a non-scalar choice is returned as its value."""
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        texts = [_choice_label(c) for c in self.choices]
        label = trial.suggest_categorical(self.key, texts)
        return self.choices[texts.index(label)]


def _choice_label(value: Any) -> Any:
    """What Optuna stores for a choice: scalars as they are, lists and mappings as YAML flow text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else yaml_value(value)


def yaml_value(value: Any) -> str:
    """``value`` as the YAML text of a ``key=value`` override (``load_config`` parses it back)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return text[: -len("...")].strip() if text.endswith("\n...") or text == "..." else text


def override(key: str, value: Any) -> str:
    """The ``key=value`` override that sets ``key`` to ``value``."""
    return f"{key}={yaml_value(value)}"


NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
"""A number as YAML 1.1 leaves it a string: ``1e-4`` (YAML reads ``1.0e-4`` as a float)."""
RESERVED = {"run_dir": "each trial trains in RUNS_DIR/STUDY/trial-NNNN (set --runs-dir)"}
"""Config keys a search space must not set, and why."""


def _number(where: str, name: str, value: Any, integer: bool) -> float | int:
    kind = "an integer" if integer else "a number"
    if isinstance(value, str) and NUMBER.match(value.strip()):
        number = float(value)
        value = int(number) if integer and number.is_integer() and "." not in value else number
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
    ):
        raise SpaceError(f"{where}: {name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise SpaceError(f"{where}: {name} must be finite, got {value!r}")
    return value


def _param(where: str, key: str, spec: Any) -> Param:
    """One entry of the file, checked."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise SpaceError(f"{where}: expected a mapping with a type (float, int, categorical), got {spec!r}")
    kind = spec["type"]
    if kind not in TYPES:
        raise SpaceError(f"{where}: unknown type {kind!r} (expected one of {', '.join(TYPES)})")
    unknown = sorted(set(spec) - TYPES[kind] - {"type"})
    if unknown:
        raise SpaceError(f"{where}: unknown field(s) {', '.join(unknown)} for type {kind}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}: choices must be a non-empty list, got {choices!r}")
        labels = [yaml_value(c) for c in choices]
        if len(set(labels)) < len(labels):
            raise SpaceError(f"{where}: choices repeat a value: {choices!r}")
        return Param(key, kind, choices=tuple(choices))
    integer = kind == "int"
    for name in ("low", "high"):
        if name not in spec:
            raise SpaceError(f"{where}: {name} is missing")
    low, high = (_number(where, n, spec[n], integer) for n in ("low", "high"))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: log must be true or false, got {log!r}")
    step = None if spec.get("step") is None else _number(where, "step", spec["step"], integer)
    if low > high:
        raise SpaceError(f"{where}: low {low!r} is greater than high {high!r}")
    if log and low <= 0:
        raise SpaceError(f"{where}: log: true needs low > 0, got {low!r}")
    if step is not None and step <= 0:
        raise SpaceError(f"{where}: step must be positive, got {step!r}")
    if log and step is not None and not (integer and step == 1):
        raise SpaceError(f"{where}: log: true and a step cannot be combined")
    return Param(key, kind, low, high, step, log)


def load_space(path: str | os.PathLike[str]) -> dict[str, Param]:
    """The search space of a YAML file (local or gs://); SpaceError names the file and the key."""
    path = os.fspath(path)
    try:
        tree = yaml.safe_load(storage.read_bytes(path))
    except (OSError, RuntimeError) as err:  # storage.StorageError is a RuntimeError
        raise SpaceError(f"cannot read search space {path}: {err}") from None
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(tree, dict) or not tree:
        raise SpaceError(f"{path}: expected a mapping of dotted config keys to distributions")
    space = {}
    for key, spec in tree.items():
        if not isinstance(key, str) or not key or key.startswith(".") or key.endswith("."):
            raise SpaceError(f"{path}: {key!r}: keys must be dotted config keys, e.g. optim.learning_rate")
        if key in RESERVED:
            raise SpaceError(f"{path}: {key}: a sweep sets it, not the space: {RESERVED[key]}")
        space[key] = _param(f"{path}: {key}", key, spec)
    return space


def check_space(space: dict[str, Param], path: str, config: str | None, overrides: list[str]) -> None:
    """Load the config with every bound and choice of every key (the others at their first value).

    Raises:
        SpaceError: a key the config does not have, a value of the wrong type, or a key that the
            command-line overrides also set.
    """
    from tfpipe.config import ConfigError, load_config

    fixed = {text.partition("=")[0].strip() for text in overrides}
    for key in space:
        if key in fixed:
            raise SpaceError(f"{path}: {key}: also set by a command-line override; drop one of the two")
    first = {key: param.extremes()[0] for key, param in space.items()}
    for key, param in space.items():
        for value in param.extremes():
            trial = [override(k, value if k == key else v) for k, v in first.items()]
            try:
                load_config(config, [*overrides, *trial])
            except ConfigError as err:
                raise SpaceError(f"{path}: {key}: {value!r} does not fit the config: {err}") from None

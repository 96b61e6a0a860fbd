"""Experiment configuration: typed dataclasses loaded from YAML, with dotted ``key=value`` overrides.

A config file holds any subset of :class:`TrainConfig`'s fields; the rest keep their defaults::

    cfg = load_config("configs/tiny.yaml", ["model.d_model=128", "data.sources.0.path=gs://b/x",
                                            "data.representations=[column,log]"])

Override values are parsed with ``yaml.safe_load`` and then checked and coerced against the field's
type (``1e-3`` becomes a float although YAML 1.1 reads it as a string). A list index one past the end
appends an element (``data.sources.1.path=...`` adds a second source). Unknown keys and wrong types
raise :class:`ConfigError` naming the key, the file or override, the expected type and the value.

Every field is documented once, in the dataclass; ``python -m tfpipe.config --reference`` renders
all of them to ``docs/configuration.md``. ``python -m tfpipe.config --config F [key=value ...]``
prints the resolved config.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import hashlib
import inspect
import json
import os
import re
import sys
import textwrap
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from tfpipe.model_config import LossConfig, ModelConfig
from tfpipe.schema import NLEV, Q0002_REPLACEMENT_LEVELS, SCHEMAS

VAL_SPLITS = ("last", "periodic", "random")

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
REPRESENTATIONS = ("column", "variable", "log")

RESUME_MUTABLE: frozenset[str] = frozenset(
    {
        "epochs",
        "time_budget",
        "keep_checkpoints",
        "log_every_steps",
        "mlflow",
        "run_dir",
        "steps_per_execution",
        "jit_compile",
        "float32_after_epoch",
        "optim.learning_rate",
        "optim.weight_decay",
        "optim.warmup_steps",
        "optim.min_lr_ratio",
        "optim.clipnorm",
        "data.allow_partial",
        "data.batch_size",
        "data.ignore_errors",
        "data.deterministic",
        "data.cycle_length",
        "data.shuffle_buffer",
        "data.val_path",
        "data.grid",
        "data.stats",
        "data.sources.*.path",
        "data.sources.*.stats",
        "finetune.learning_rate",
        "finetune.warmup_steps",
    }
)
"""Dotted keys that may change on ``--resume`` with ``--allow-config-change`` (``*`` matches an index).

Schedule, logging and performance knobs, and data locations (data moved to another bucket or disk;
what the data holds is checked separately, by the files and statistics hashes). Everything else
changes the model, the optimizer state or the data and needs a new run.
"""

SESSION_KEYS: frozenset[str] = frozenset({"run_dir", "time_budget", "data.deterministic"})
"""Keys that belong to one session, not to the run: never compared on resume (a run dir may be copied
elsewhere; every notebook session has its own time budget; ``--deterministic`` is a flag per session)."""


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclasses."""


def _f(default: Any = MISSING, *, doc: str, factory: Any = MISSING) -> Any:
    """A dataclass field with its documentation (rendered by :func:`config_reference_markdown`)."""
    return field(default=default, default_factory=factory, metadata={"doc": doc})


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def parse_duration(text: str | float) -> float:
    """Seconds in ``"8h30m"``, ``"90m"``, ``"45s"``, ``"1h"``, ``"2h 15m"``, ``"1d"`` or plain seconds.

    Raises:
        ConfigError: for anything else, or a negative duration.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower()
        if re.fullmatch(r"\d+(\.\d*)?|\.\d+", s):
            seconds = float(s)
        elif re.fullmatch(r"(\s*(\d+(\.\d*)?|\.\d+)\s*[dhms])+\s*", s):
            unit = {"d": 86400, "h": 3600, "m": 60, "s": 1}
            seconds = sum(float(n) * unit[u] for n, u in re.findall(r"(\d+(?:\.\d*)?|\.\d+)\s*([dhms])", s))
        else:
            raise ConfigError(f"cannot read duration {text!r}; use e.g. '8h30m', '90m', '45s' or seconds")
    _check(seconds >= 0 and seconds != float("inf"), f"duration {text!r} must be finite and >= 0")
    return seconds


@dataclass
class SourceConfig:
    """One source of training data (e.g. low-res or high-res ClimSim), sampled with a weight."""

    name: str = _f("lowres", doc="Label of the source in logs.")
    path: str = _f("", doc="Folder of encoded shards, local or gs://; empty: the synthetic demo data.")
    stats: str = _f(
        "",
        doc="Statistics JSON; empty: `{path}/stats.json`. Only the model's statistics are read "
        "(see `data.stats`).",
    )
    weight: float = _f(1.0, doc="Relative sampling weight among the sources.")

    def __post_init__(self) -> None:
        _check(self.weight > 0, f"weight must be > 0, got {self.weight}")

    @property
    def stats_path(self) -> str:
        """The statistics file, defaulting to ``{path}/stats.json``."""
        return self.stats or (f"{self.path.rstrip('/')}/stats.json" if self.path else "")


@dataclass
class DataConfig:
    """Input pipeline: sources, normalisation, batching and the sub-epoch split."""

    sources: list[SourceConfig] = _f(factory=lambda: [SourceConfig()], doc="Training data sources.")
    schema: str = _f("kaggle", doc=f"Variable layout, one of {', '.join(SCHEMAS)}.")
    representations: tuple[str, ...] = _f(
        REPRESENTATIONS,
        doc="Input channels per column: z-score per `column`, per `variable` (levels pooled), signed `log`.",
    )
    feature_clip: float = _f(6.0, doc="Soft-clip threshold of normalised features.")
    target_clip: float = _f(6.0, doc="Soft-clip threshold of normalised targets.")
    batch_size: int = _f(1024, doc="Batch size per replica (global = this x replicas).")
    shuffle_buffer: int = _f(
        16384,
        doc="Samples per shuffle window (each permuted at once, after a buffer of whole blocks of about "
        "as many samples); 0: no shuffle.",
    )
    sub_epochs: int = _f(10, doc="Sub-epochs per epoch; validation and a checkpoint after each.")
    stats: str = _f(
        "",
        doc="Statistics the model normalises every source with (inputs and targets); empty: the first "
        "source's. The run dir keeps a copy and the model carries them.",
    )
    val_fraction: float = _f(0.05, doc="Share of the first source's samples held out for validation.")
    val_split: str = _f(
        "last",
        doc="How the validation samples are chosen: `last` (the latest period, as the Kaggle test set "
        "follows "
        "the training years), `periodic` (the end of every `val_period_days`), `random` (files at random, "
        "interleaved in time with training: optimistic).",
    )
    val_period_days: float = _f(10.0, doc="Period of `val_split: periodic`, in days.")
    val_path: str = _f(
        "", doc="Separate validation folder; empty: hold out `val_fraction` of the first source."
    )
    grid: str = _f("", doc="Grid file; empty: `{path}/grid-info.nc` of the first source.")
    q0002_replacement_levels: tuple[int, ...] = _f(
        Q0002_REPLACEMENT_LEVELS, doc="Levels where `ptend_q0002 = -state_q0002 / 1200` replaces the model."
    )
    ignore_errors: bool = _f(False, doc="Skip unreadable records instead of failing.")
    allow_partial: bool = _f(
        False, doc="Train on a shard set with missing shards (named in a warning) instead of refusing it."
    )
    deterministic: bool = _f(False, doc="Deterministic tf.data order (slower).")
    cycle_length: int = _f(4, doc="Shard files read in parallel.")

    def __post_init__(self) -> None:
        self.representations = tuple(self.representations)
        self.q0002_replacement_levels = tuple(self.q0002_replacement_levels)
        _check(len(self.sources) > 0, "sources must name at least one source")
        names = [s.name for s in self.sources]
        _check(len(set(names)) == len(names), f"sources: names must be unique, got {names}")
        _check(self.schema in SCHEMAS, f"schema: unknown {self.schema!r}; one of {sorted(SCHEMAS)}")
        reps = self.representations
        _check(
            len(reps) > 0 and len(set(reps)) == len(reps) and set(reps) <= set(REPRESENTATIONS),
            f"representations: {list(reps)} must be distinct values from {list(REPRESENTATIONS)}",
        )
        _check(self.feature_clip > 0 and self.target_clip > 0, "clip thresholds must be > 0")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.shuffle_buffer >= 0, f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        _check(self.sub_epochs >= 1, f"sub_epochs must be >= 1, got {self.sub_epochs}")
        _check(0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        _check(self.val_split in VAL_SPLITS, f"val_split must be one of {VAL_SPLITS}, got {self.val_split!r}")
        _check(self.val_period_days > 0, f"val_period_days must be > 0, got {self.val_period_days}")
        _check(self.cycle_length >= 1, f"cycle_length must be >= 1, got {self.cycle_length}")
        levels = self.q0002_replacement_levels
        _check(
            len(set(levels)) == len(levels) and all(0 <= k < NLEV for k in levels),
            f"q0002_replacement_levels must be distinct levels in [0, {NLEV}), got {list(levels)}",
        )

    @property
    def stats_path(self) -> str:
        """The statistics of the model: ``stats``, else the first source's."""
        return self.stats or self.sources[0].stats_path

    @property
    def grid_path(self) -> str:
        """The grid file, defaulting to ``grid-info.nc`` beside the first source's shards."""
        path = self.sources[0].path
        return self.grid or (f"{path.rstrip('/')}/grid-info.nc" if path else "")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and half-cosine decay (see `tfpipe.schedule`)."""

    learning_rate: float = _f(1e-3, doc="Peak learning rate.")
    weight_decay: float | None = _f(None, doc="Decoupled weight decay; null: 4 x learning_rate.")
    warmup_steps: int | float = _f(1000, doc="Warm-up steps, or a fraction (< 1) of all training steps.")
    min_lr_ratio: float = _f(0.0, doc="Final learning rate as a fraction of the peak.")
    beta_1: float = _f(0.9, doc="Adam beta_1.")
    beta_2: float = _f(0.999, doc="Adam beta_2.")
    clipnorm: float | None = _f(1.0, doc="Clip each gradient to this norm; null: no clipping.")
    use_ema: bool = _f(False, doc="Keep an exponential moving average of the weights.")
    ema_momentum: float = _f(0.999, doc="EMA momentum.")

    def __post_init__(self) -> None:
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _check(self.weight_decay is None or self.weight_decay >= 0, "weight_decay must be >= 0")
        w = self.warmup_steps
        _check(
            w >= 0 and (float(w).is_integer() or w < 1),
            f"warmup_steps must be a step count or a fraction < 1, got {w}",
        )
        _check(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(0 <= self.beta_1 < 1 and 0 <= self.beta_2 < 1, "beta_1 and beta_2 must be in [0, 1)")
        _check(self.clipnorm is None or self.clipnorm > 0, "clipnorm must be > 0 or null")
        _check(0 <= self.ema_momentum < 1, f"ema_momentum must be in [0, 1), got {self.ema_momentum}")

    @property
    def resolved_weight_decay(self) -> float:
        """``weight_decay``, or 4 x ``learning_rate`` when it is None."""
        return 4.0 * self.learning_rate if self.weight_decay is None else self.weight_decay

    def resolved_warmup_steps(self, total_steps: int) -> int:
        """Warm-up in steps: a fraction (< 1) is taken of ``total_steps``."""
        w = self.warmup_steps
        return int(round(w * total_steps)) if 0 < w < 1 else int(w)


@dataclass
class FinetuneConfig:
    """Group fine-tuning after the main epochs (LEAP 2nd place): the loss on one target group at a time."""

    groups: tuple[str, ...] = _f(
        (),
        doc="Target groups in order, each a target variable or several joined by `+` (`cam_out` = all "
        "scalars), e.g. `[ptend_t, ptend_q0001+ptend_q0002, cam_out]`; empty: no fine-tuning.",
    )
    sub_epochs_per_group: int = _f(1, doc="Sub-epochs trained on each group.")
    learning_rate: float | None = _f(
        None,
        doc="Peak learning rate of each group's own warm-up + half-cosine; null: 0.1 x optim.learning_rate.",
    )
    warmup_steps: int | float = _f(0.1, doc="Warm-up of each group: steps, or a fraction (< 1) of its steps.")

    def __post_init__(self) -> None:
        self.groups = tuple(self.groups)
        _check(self.sub_epochs_per_group >= 1, "finetune.sub_epochs_per_group must be >= 1")
        _check(self.learning_rate is None or self.learning_rate > 0, "finetune.learning_rate must be > 0")
        w = self.warmup_steps
        _check(
            w >= 0 and (float(w).is_integer() or w < 1),
            f"finetune.warmup_steps must be a step count or a fraction < 1, got {w}",
        )


@dataclass
class TrainConfig:
    """One experiment: data, model, loss, optimizer and how training runs."""

    name: str = _f(doc="Run name; defaults to the config file's stem.")
    seed: int = _f(0, doc="Seed of initialisation, shard permutation and shuffling.")
    epochs: int = _f(4, doc="Passes over the training shards.")
    data: DataConfig = _f(factory=DataConfig, doc="Input pipeline.")
    model: ModelConfig = _f(factory=ModelConfig, doc="Model architecture (`tfpipe.models`).")
    loss: LossConfig = _f(factory=LossConfig, doc="Loss kinds and weights (`tfpipe.losses`).")
    optim: OptimConfig = _f(factory=OptimConfig, doc="Optimizer and learning-rate schedule.")
    precision: str = _f(
        "float32", doc="float32, mixed_bfloat16, mixed_float16, or auto (bf16 on TPU, float32 elsewhere)."
    )
    float32_after_epoch: int | None = _f(None, doc="Switch to float32 from this epoch on; null: never.")
    steps_per_execution: int = _f(1, doc="Train steps per compiled call (fewer host round trips on TPU).")
    jit_compile: bool = _f(True, doc="Compile the train step with XLA.")
    run_dir: str = _f("runs/{name}", doc="Checkpoints and logs; `{name}` is replaced by the run name.")
    time_budget: str = _f("", doc="Stop after the last sub-epoch that fits, e.g. `8h30m`; empty: none.")
    keep_checkpoints: int = _f(3, doc="Checkpoints kept by the CheckpointManager.")
    log_every_steps: int = _f(50, doc="Steps between training log lines.")
    mlflow: bool = _f(False, doc="Also log to MLflow (when installed).")
    finetune: FinetuneConfig = _f(factory=FinetuneConfig, doc="Group fine-tuning after the main epochs.")

    def __post_init__(self) -> None:
        _check(bool(self.name), "name must not be empty")
        _check(self.precision in PRECISIONS, f"precision: {self.precision!r} is not one of {PRECISIONS}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.steps_per_execution >= 1, "steps_per_execution must be >= 1")
        _check(self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")
        _check(self.log_every_steps >= 1, "log_every_steps must be >= 1")
        _check(self.float32_after_epoch is None or self.float32_after_epoch >= 0, "float32_after_epoch < 0")
        if self.time_budget:
            parse_duration(self.time_budget)

    @property
    def resolved_run_dir(self) -> str:
        """``run_dir`` with ``{name}`` filled in."""
        return self.run_dir.replace("{name}", self.name)

    @property
    def time_budget_s(self) -> float | None:
        """The time budget in seconds, or None."""
        return parse_duration(self.time_budget) if self.time_budget else None


# ---------------------------------------------------------------------------------------------
# Type checking and coercion


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"tuple[{_type_name(args[0])}, ...]"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def _plain(value: Any) -> Any:
    """Dataclasses to dicts and tuples to lists, recursively (what YAML and JSON hold)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """``value`` as type ``tp``, or a ConfigError naming ``key`` and ``where``."""

    def wrong() -> ConfigError:
        return ConfigError(f"{key or 'config'}: expected {_type_name(tp)}, got {value!r} ({where})")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _coerce(value, arg, key, where)
                except ConfigError:
                    pass
        raise wrong()
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, key, where)
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)):
            value = [value]  # a bare scalar is a one-element sequence
        if not isinstance(value, (list, tuple)):
            raise wrong()
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise wrong()
            pairs = enumerate(zip(value, args, strict=True))
            return tuple(_coerce(v, a, f"{key}.{i}", where) for i, (v, a) in pairs)
        return origin(_coerce(v, args[0], f"{key}.{i}", where) for i, v in enumerate(value))
    if isinstance(value, bool) or value is None:
        if tp is bool and value is not None:
            return value
        raise wrong()
    if tp in (int, float):
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-3" as a string
        if isinstance(value, (int, float)):
            if tp is float:
                return float(value)
            if float(value).is_integer():
                return int(value)
        raise wrong()
    if tp is str and isinstance(value, (str, int, float)):
        return str(value)
    raise wrong()


def _from_dict(cls: type, value: Any, key: str, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys."""
    if isinstance(value, cls):
        return value
    if value is None:  # an empty section in YAML
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key or 'config'}: expected a mapping of {cls.__name__}, got {value!r} ({where})")
    hints = _hints(cls)
    unknown = [k for k in value if k not in hints]
    if unknown:
        raise ConfigError(
            f"unknown key {_join(key, str(unknown[0]))!r} in {where}; known keys: {', '.join(hints)}"
        )
    kwargs = {k: _coerce(v, hints[k], _join(key, k), where) for k, v in value.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{key + ': ' if key else ''}{err} ({where})") from None


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _field_default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not MISSING:
        value = f.default_factory()
        return {} if dataclasses.is_dataclass(value) else _plain(value)
    return _plain(f.default)


def _apply_override(tree: dict, text: str) -> None:
    """Set one ``dotted.key=value`` in the plain ``tree`` of a TrainConfig, checking key and type."""
    where = f"override {text!r}"
    if "=" not in text:
        raise ConfigError(f"{where}: expected key=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: cannot parse the value: {err}") from None
    try:
        _set_path(tree, parts, value, where)
    except (AttributeError, TypeError, KeyError) as err:
        message = f"{where}: cannot set {dotted.strip()!r}: a value on its path is not a mapping or list"
        raise ConfigError(message) from err


def _set_path(tree: dict, parts: list[str], value: Any, where: str) -> None:
    tp: Any = TrainConfig
    node: Any = tree
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if dataclasses.is_dataclass(tp):
            hints = _hints(tp)
            if part not in hints:
                raise ConfigError(f"unknown key {here!r} in {where}; known keys: {', '.join(hints)}")
            if not last and node.get(part) is None:
                node[part] = _field_default(tp, part)
            tp = hints[part]
        elif typing.get_origin(tp) in (list, tuple) and part.isdigit():
            index = int(part)
            if index > len(node):
                raise ConfigError(f"{here!r} in {where}: index past the end (length {len(node)})")
            if index == len(node):
                node.append({})
            part, tp = index, typing.get_args(tp)[0]
        else:
            raise ConfigError(f"unknown key {here!r} in {where}: {'.'.join(parts[:depth])} has no sub-keys")
        if last:
            node[part] = _plain(_coerce(value, tp, ".".join(parts), where))
        else:
            node = node[part]


PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
"""The configs shipped with the package (``tiny``, ``reference``); ``configs/`` of a checkout links here."""


def config_path(name: str | os.PathLike[str]) -> str:
    """A config name (``tiny``: a config shipped with tfpipe) or a path, as a path."""
    text = os.fspath(name)
    packaged = PACKAGED_CONFIGS / f"{text}.yaml"
    if "/" not in text and not text.endswith((".yaml", ".yml")) and packaged.is_file():
        return str(packaged)
    return text


def load_config(path: str | os.PathLike[str] | None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (None: all defaults), apply ``key=value`` overrides, check every type.

    ``path`` may also name a config shipped with tfpipe (``"tiny"``, ``"reference"``). A missing
    ``name`` becomes the file's stem (``"default"`` without a file). Paths may be gs://.

    Raises:
        ConfigError: unknown key, wrong type, invalid value or unreadable YAML.
    """
    path = config_path(path) if path is not None else None
    where = str(path) if path is not None else "defaults"
    tree: Any = {}
    if path is not None:
        try:
            if "://" in str(path):
                from tfpipe import storage

                text = storage.read_bytes(str(path)).decode()
            else:
                text = Path(path).read_text()
            tree = yaml.safe_load(text)
        except (OSError, RuntimeError, yaml.YAMLError) as err:  # storage.StorageError is a RuntimeError
            raise ConfigError(f"cannot read config {where}: {err}") from None
        tree = {} if tree is None else tree
        if not isinstance(tree, dict):
            raise ConfigError(f"{where}: the top level must be a mapping, got {type(tree).__name__}")
    tree.setdefault("name", Path(str(path)).stem if path is not None else "default")
    for text in overrides:
        _apply_override(tree, text)
    if overrides:
        where = f"{where} with overrides {list(overrides)}"
    return _from_dict(TrainConfig, tree, "", where)


def config_from_dict(tree: dict, where: str = "a saved config") -> TrainConfig:
    """A TrainConfig from the plain tree of :func:`config_to_dict` (ConfigError if it no longer fits)."""
    import copy

    return _from_dict(TrainConfig, copy.deepcopy(tree), "", where)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as plain dicts, lists and scalars (``load_config`` of its YAML gives it back)."""
    return _plain(config)


def dump_config(config: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Write the config as YAML, atomically (local or gs://; see ``tfpipe.storage.write_bytes``)."""
    from tfpipe import storage

    data = yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None, width=110)
    storage.write_bytes(os.fspath(path), data.encode())


def config_hash(config: TrainConfig, part: str) -> str:
    """sha256 of the fields that change the model (``part="model"``) or the data (``part="data"``).

    model: schema, representations, clip thresholds, q0002 levels and the whole model config (the
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


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out |= _flatten(v, _join(prefix, str(k)))
        return out
    if isinstance(tree, (list, tuple)) and tree and all(isinstance(v, dict) for v in tree):
        return {k: v for i, item in enumerate(tree) for k, v in _flatten(item, _join(prefix, str(i))).items()}
    return {prefix: _plain(tree)}


def changed_fields(old: dict, new: dict) -> list[str]:
    """Sorted dotted keys whose values differ between two :func:`config_to_dict` trees.

    Lists of mappings (``data.sources``) are compared element by element (``data.sources.0.path``);
    a key present on one side only counts as changed.
    """
    a, b = _flatten(old), _flatten(new)
    return sorted(
        k for k in a.keys() | b.keys() if a.get(k, MISSING) != b.get(k, MISSING) and k not in SESSION_KEYS
    )


def is_resume_mutable(key: str) -> bool:
    """Whether dotted ``key`` is in :data:`RESUME_MUTABLE` (patterns included)."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUME_MUTABLE)


def resume_conflicts(old: dict, new: dict) -> list[str]:
    """Changed keys that may not change on resume, even with ``--allow-config-change``."""
    return [k for k in changed_fields(old, new) if not is_resume_mutable(k)]


# ---------------------------------------------------------------------------------------------
# Reference documentation


def _attribute_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string right after a field) of a class defined elsewhere."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for a, b in zip(body, body[1:], strict=False):
        if (
            isinstance(a, ast.AnnAssign)
            and isinstance(a.target, ast.Name)
            and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant)
            and isinstance(b.value.value, str)
        ):
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _sections(cls: type, prefix: str) -> list[str]:
    hints, attr_docs = _hints(cls), _attribute_docs(cls)
    summary = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())
    title = prefix or "top level"
    lines = [f"## `{title}`", "", summary, "", "| key | type | default | description |", "|---|---|---|---|"]
    later: list[str] = []
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], _join(prefix, f.name)
        doc = f.metadata.get("doc") or attr_docs.get(f.name, "")
        if dataclasses.is_dataclass(tp):
            later += _sections(tp, key)
            continue
        element = (typing.get_args(tp) or (None,))[0]
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(element):
            later += _sections(element, f"{key}.<i>")
        if f.default is not MISSING:
            default = f"`{json.dumps(_plain(f.default))}`"
        elif f.default_factory is not MISSING:
            default = f"`{json.dumps(_plain(f.default_factory()))}`"
        else:
            default = "required"
        lines.append(f"| `{key}` | `{_cell(_type_name(tp))}` | {_cell(default)} | {_cell(doc)} |")
    return lines + [""] + later


def config_reference_markdown() -> str:
    """Markdown tables of every config key: type, default and description (``docs/configuration.md``)."""
    head = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m tfpipe.config --reference > docs/configuration.md`; do not edit. -->",
        "",
        "A config file (`configs/*.yaml`) sets any of these keys; the others keep their defaults.",
        "Override any key on the command line as `dotted.key=value` (YAML value syntax), e.g.",
        "`model.d_model=128`, `data.sources.0.path=gs://bucket/x`, `data.representations=[column,log]`.",
        f"On `--resume` with `--allow-config-change` only these may change: "
        f"{', '.join(f'`{k}`' for k in sorted(RESUME_MUTABLE))}; "
        f"{', '.join(f'`{k}`' for k in sorted(SESSION_KEYS))} belong to one session and may differ on "
        "any resume.",
        "Other resume changes have their own flags: `--allow-data-change` (other training files or",
        "statistics), `--allow-replica-change` (another replica count). A changed plan re-anchors the",
        "learning-rate curve.",
        "",
    ]
    return "\n".join(head + _sections(TrainConfig, "")).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    from tfpipe.cliutil import ArgumentParser

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

"""The experiment configuration's schema: typed dataclasses, each field documented once.

:mod:`tfpipe.config` loads them from YAML with dotted overrides (OmegaConf structured configs);
``python -m tfpipe.config --reference`` renders every field to ``docs/configuration.md``. The model's
own fields live in :mod:`tfpipe.config.models`, one class per model.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field
from typing import Any

from tfpipe.config.models import LossConfig, ModelConfig
from tfpipe.data.schema import NLEV, Q0002_REPLACEMENT_LEVELS, SCHEMAS

VAL_SPLITS = ("last", "periodic", "random")

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
SELECT_METRICS = ("val_r2_train_var", "val_r2", "val_r2_near_constant_as_1")
REPRESENTATIONS = ("column", "variable", "log")
TRACKING_BACKENDS = ("none", "mlflow")

RESUME_MUTABLE: frozenset[str] = frozenset(
    {
        "epochs",
        "time_budget",
        "keep_checkpoints",
        "run_dir",
        "steps_per_execution",
        "jit_compile",
        "float32_after_epoch",
        "optim.learning_rate",
        "optim.weight_decay",
        "optim.warmup_steps",
        "optim.min_lr_ratio",
        "optim.clipnorm",
        "optim.global_clipnorm",
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

SESSION_KEYS: frozenset[str] = frozenset(
    {
        "run_dir",
        "time_budget",
        "data.deterministic",
        "tracking.backend",
        "tracking.uri",
        "tracking.experiment",
    }
)
"""Keys that belong to one session, not to the run: never compared on resume (a run dir may be copied
elsewhere; every notebook session has its own time budget; ``--deterministic`` is a flag per session;
where a session is tracked does not change what it trains)."""


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
    warmup_steps: float = _f(1000, doc="Warm-up steps, or a fraction (< 1) of all training steps.")
    min_lr_ratio: float = _f(0.0, doc="Final learning rate as a fraction of the peak.")
    beta_1: float = _f(0.9, doc="Adam beta_1.")
    beta_2: float = _f(0.999, doc="Adam beta_2.")
    global_clipnorm: float | None = _f(
        1.0,
        doc="Clip the gradient of all weights together (summed over the replicas) to this norm, as "
        "`tf.clip_by_global_norm`; null: no global clipping.",
    )
    clipnorm: float | None = _f(
        None,
        doc="Clip the gradient of each weight (summed over the replicas) to this norm, before the global "
        "clip; null: none. A config that sets `clipnorm` but not `global_clipnorm` (any run config saved "
        "before `global_clipnorm` existed: those runs clipped per weight) clips per weight only.",
    )
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
        _check(
            self.global_clipnorm is None or self.global_clipnorm > 0, "global_clipnorm must be > 0 or null"
        )
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
    warmup_steps: float = _f(0.1, doc="Warm-up of each group: steps, or a fraction (< 1) of its steps.")

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
class TrackingConfig:
    """Experiment tracking: every run's config, per-sub-epoch metrics and files in MLflow
    (docs/tracking.md). TensorBoard (`RUN/tb`) and `RUN/metrics.csv` are written in any case."""

    backend: str = _f("none", doc=f"One of {', '.join(TRACKING_BACKENDS)}.")
    uri: str = _f(
        "",
        doc="MLflow tracking URI (`http://host:5000`, `sqlite:///mlflow.db`, `file:/path/mlruns`, "
        "`databricks`); empty: the store of the parent run (a sweep's) if there is one, else "
        "`$MLFLOW_TRACKING_URI`, else the file store `mlruns/` in the current directory (made absolute "
        "when the run starts).",
    )
    experiment: str = _f(
        "tfpipe",
        doc="MLflow experiment (created when missing); a run nested under a parent run goes in "
        "the parent's experiment.",
    )

    def __post_init__(self) -> None:
        _check(
            self.backend in TRACKING_BACKENDS,
            f"tracking.backend: {self.backend!r} is not one of {', '.join(TRACKING_BACKENDS)}",
        )


def upgrade_legacy_keys(tree: dict) -> dict:
    """A config tree of an older tfpipe in today's layout: the bare flag ``mlflow: true|false`` becomes
    the ``tracking`` section (``backend: mlflow|none``, the other keys at their defaults); an ``optim``
    with ``clipnorm`` and no ``global_clipnorm`` gets ``global_clipnorm: null`` (it clipped per weight
    only, and resumes so). Trees without old keys are returned as they are."""
    optim = tree.get("optim")
    if isinstance(optim, dict) and "clipnorm" in optim and "global_clipnorm" not in optim:
        tree = tree | {"optim": optim | {"global_clipnorm": None}}
    if "log_every_steps" in tree:  # read nowhere (it named no log line): dropped, old configs still load
        tree = {k: v for k, v in tree.items() if k != "log_every_steps"}
    if "mlflow" not in tree:
        return tree
    tree = dict(tree)
    legacy = tree.pop("mlflow")
    on = legacy is True or str(legacy).strip().lower() == "true"
    defaults = {"backend": "mlflow" if on else "none"}
    tree["tracking"] = defaults | dict(tree.get("tracking") or {})
    return tree


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
    select_metric: str = _f(
        "val_r2_train_var",
        doc="Validation metric that picks the best checkpoint (`best.keras`), a sweep trial's value and "
        "`export-models --select best:K`: `val_r2_train_var` (R² with each target's training variance as "
        "denominator: estimates the Kaggle score of a long test period, and targets whose validation truth "
        "is nearly constant cannot wreck it), `val_r2` (the Kaggle R² of the validation rows: on a short "
        "validation period near-constant targets make it hugely negative and decide alone) or "
        "`val_r2_near_constant_as_1` (`val_r2` with those targets counted as 1).",
    )
    tracking: TrackingConfig = _f(factory=TrackingConfig, doc="Experiment tracking (MLflow).")
    finetune: FinetuneConfig = _f(factory=FinetuneConfig, doc="Group fine-tuning after the main epochs.")

    def __post_init__(self) -> None:
        _check(bool(self.name), "name must not be empty")
        _check(self.precision in PRECISIONS, f"precision: {self.precision!r} is not one of {PRECISIONS}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(
            self.select_metric in SELECT_METRICS,
            f"select_metric: {self.select_metric!r} is not one of {SELECT_METRICS}",
        )
        _check(self.steps_per_execution >= 1, "steps_per_execution must be >= 1")
        _check(self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")
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

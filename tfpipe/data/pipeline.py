"""tf.data input pipelines over encoded shards: raw float32 columns, exact source mixing, static shapes.

The pipelines do no normalisation: that is the model's first layer (:mod:`tfpipe.data.normalize`), on
the accelerator. Which files and how many samples of each source a step takes is planned in
:mod:`tfpipe.data.sampling` (pure functions of ``(seed, epoch, sub_epoch)``, so a resumed run rebuilds
exactly the data it would have seen).

Training (:func:`make_train_dataset`), per source: interleave the files' records (blocks of samples)
→ parse → shuffle the raw samples (seeded, in two vectorised stages: whole blocks in a buffer, then
every window of ``shuffle_buffer`` samples permuted at once) → repeat → cut into the planned number
of samples per step (``rebatch`` with the per-step counts of :func:`tfpipe.data.sampling.plan_sub_epoch`)
→ space-time auxiliary targets from the source's grid. The sources are then zipped and every
replica's share of a global batch gets the same mix. Elements are ``(inputs [B, n_inputs], targets
[B, T], aux_targets [B, 8], aux_mask [B, 8])``, raw float32, exactly ``plan.steps`` of them.

Validation and prediction read files in order; validation batches are padded to the global batch
(static shapes on a TPU) with a ``valid`` flag per row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from tfpipe import storage
from tfpipe.data.grid import read_grid
from tfpipe.data.manifest import Manifest, read_manifests
from tfpipe.data.records import iter_records, parse_block
from tfpipe.data.sampling import DataFile, Piece, SubEpochPlan, split_files
from tfpipe.data.schema import NCOL, Schema, get_schema

log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE
GRID_FILE = "grid-info.nc"
TRAIN_KEYS = ("inputs", "targets", "ncol", "time")


class DataError(ValueError):
    """Data that cannot feed the pipeline (no files, too few files, corrupt records)."""


@dataclass
class Source:
    """One resolved data source: its files (split into training and validation) and grid tables."""

    name: str
    path: str
    weight: float
    train_files: list[DataFile]
    val_files: list[DataFile]
    lat: np.ndarray | None  # (ncol,) radians, None without a grid file
    lon: np.ndarray | None

    @property
    def train_paths(self) -> list[str]:
        return [f.path for f in self.train_files]

    @property
    def val_paths(self) -> list[str]:
        return [f.path for f in self.val_files]


@dataclass
class ReadOptions:
    """How files are read (a DataConfig has the same fields)."""

    cycle_length: int = 1
    deterministic: bool = True
    ignore_errors: bool = False


def _data_files(folder: str, manifests: list[Manifest]) -> list[DataFile]:
    return [
        DataFile(storage.join(folder, f.name), f.samples, f.time_min, f.records, m.block_size)
        for m in manifests
        for f in m.files
    ]


def _grid_tables(path: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not path or not storage.exists(path):
        return None, None
    if storage.is_remote(path):
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, GRID_FILE)
            storage.download_file(path, local)
            grid = read_grid(local)
    else:
        grid = read_grid(path)
    return np.deg2rad(grid.lat).astype(np.float32), np.deg2rad(grid.lon).astype(np.float32)


def resolve_source(
    name: str, path: str, weight: float, config, grid: str = "", validate: bool = True
) -> Source:
    """Files, validation split and grid of one source (``config``: a DataConfig).

    With ``validate`` the source holds out its validation files (or takes ``config.val_path``);
    without, every file trains.
    """
    schema = get_schema(config.schema)
    files = _data_files(path, read_manifests(path, schema=schema.name, allow_partial=config.allow_partial))
    if not validate:
        train, val = files, []
    elif config.val_path:
        val_manifests = read_manifests(
            config.val_path, schema=schema.name, allow_partial=config.allow_partial
        )
        train, val = files, _data_files(config.val_path, val_manifests)
    else:
        train, val = split_files(files, config.val_fraction, config.val_split, config.val_period_days)
    lat, lon = _grid_tables(grid or storage.join(path, GRID_FILE))
    if lat is None:
        log.warning("%s: no grid file; latitude/longitude auxiliary targets are masked out", path)
    return Source(name, path, weight, train, val, lat, lon)


def resolve_sources(config) -> list[Source]:
    """Every source of a DataConfig. The first one's held-out samples validate the model; the other
    sources train on all their files."""
    out = []
    for i, s in enumerate(config.sources):
        if not s.weight > 0:
            raise DataError(f"source {s.name!r}: weight must be > 0, got {s.weight}")
        out.append(resolve_source(s.name, s.path, s.weight, config, config.grid if i == 0 else "", i == 0))
    return out


def data_fingerprint(sources: list[Source]) -> str:
    """sha256 of what the sources hold: names, weights, and every file's name and sample count per split.

    Independent of where the data lives (a moved bucket keeps it), sensitive to added, removed or
    re-split files.
    """
    payload = [
        [s.name, s.weight, [[os.path.basename(f.path), f.samples] for f in s.train_files],
         [[os.path.basename(f.path), f.samples] for f in s.val_files]]
        for s in sources
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def aux_targets(lat: np.ndarray | None, lon: np.ndarray | None, ncol: tf.Tensor, time: tf.Tensor):
    """``[n, 8]`` space-time targets (sin/cos of lat, lon, day of year, time of day) and their mask."""
    known_col = ncol >= 0
    col = tf.maximum(ncol, 0)
    if lat is None:
        lat_t = lon_t = tf.zeros(tf.shape(ncol), tf.float32)
        known_col = tf.zeros_like(known_col)
    else:
        lat_t, lon_t = tf.gather(tf.constant(lat), col), tf.gather(tf.constant(lon), col)
    known_time = time >= 0
    t = tf.maximum(time, 0)
    doy = tf.cast((t // 86400) % 365, tf.float32) * (2 * np.pi / 365)
    tod = tf.cast(t % 86400, tf.float32) * (2 * np.pi / 86400)
    values = tf.stack([f(a) for a in (lat_t, lon_t, doy, tod) for f in (tf.sin, tf.cos)], axis=1)
    col_mask = tf.cast(known_col, tf.float32)[:, None]
    time_mask = tf.cast(known_time, tf.float32)[:, None]
    mask = tf.concat([tf.tile(col_mask, [1, 4]), tf.tile(time_mask, [1, 4])], axis=1)
    return values * mask, mask


def _records(parts: list[str] | list[Piece], options, ordered: bool) -> tf.data.Dataset:
    """The records of whole files (paths) or of record ranges (pieces), interleaved."""
    if not parts:
        raise DataError("no files to read")
    pieces = [p if isinstance(p, Piece) else Piece(DataFile(p, 0)) for p in parts]
    tf_paths = [storage.tf_path(p.path) for p in pieces]
    first = [p.first for p in pieces]
    count = [-1 if p.count is None else p.count for p in pieces]  # take(-1): to the end

    def read(path: tf.Tensor, first: tf.Tensor, count: tf.Tensor) -> tf.data.Dataset:
        ds = tf.data.TFRecordDataset(path, buffer_size=8 << 20).skip(first).take(count)
        return ds.ignore_errors(log_warning=True) if options.ignore_errors else ds

    slices = (tf_paths, tf.constant(first, tf.int64), tf.constant(count, tf.int64))
    return tf.data.Dataset.from_tensor_slices(slices).interleave(
        read,
        cycle_length=max(1, min(options.cycle_length, len(tf_paths))),
        num_parallel_calls=AUTOTUNE,
        deterministic=True if ordered else bool(options.deterministic),
    )


def parsed_blocks(
    paths: list[str] | list[Piece], schema: Schema, options, with_targets: bool, keys: tuple[str, ...],
    ordered: bool,
) -> tf.data.Dataset:  # fmt: skip
    """The records (blocks of samples) of the files or pieces, parsed, keeping ``keys``."""

    def parse(record: tf.Tensor) -> dict:
        return parse_block(record, schema, with_targets=with_targets, keys=keys)

    return _records(paths, options, ordered).map(
        parse, num_parallel_calls=AUTOTUNE, deterministic=True if ordered else bool(options.deterministic)
    )


def shuffle_samples(blocks: tf.data.Dataset, window: int, seed: int) -> tf.data.Dataset:
    """Seeded shuffle of the samples of ``blocks`` without a tf.data step per sample.

    Whole blocks go through a buffer of ``window // NCOL`` blocks; the stream is then cut into
    windows of ``window`` samples and each window is permuted as a whole (a stateless permutation
    from ``(seed, window index)``). Up to about ``2 x window`` samples are held in memory.
    """
    blocks = blocks.shuffle(max(2, window // NCOL), seed=seed, reshuffle_each_iteration=False)

    def permute(index: tf.Tensor, samples: dict) -> dict:
        n = tf.shape(tf.nest.flatten(samples)[0])[0]
        key = tf.stack([tf.constant(seed % (2**31), tf.int64), index])
        order = tf.argsort(tf.random.stateless_uniform([n], seed=key))
        return {k: tf.gather(v, order) for k, v in samples.items()}

    return blocks.rebatch(window).enumerate().map(permute, num_parallel_calls=AUTOTUNE, deterministic=True)


def _check_finite(batch: dict, where: str) -> dict:
    out = dict(batch)
    out["inputs"] = tf.debugging.check_numerics(batch["inputs"], f"NaN/Inf in the input data of {where}")
    if "targets" in batch:
        out["targets"] = tf.debugging.check_numerics(
            batch["targets"], f"NaN/Inf in the target data of {where}"
        )
    return out


def seed_of(*parts: int) -> int:
    """A 32-bit seed from integers (a stable hash)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _source_steps(pieces: tuple[Piece, ...], index: int, config, seed: int, epoch: int, sub_epoch: int,
                  sizes: np.ndarray) -> tf.data.Dataset:  # fmt: skip
    """One source's samples of a sub-epoch, cut into ``sizes[s]`` samples at step ``s`` (raw dicts)."""
    schema = get_schema(config.schema)
    ds = parsed_blocks(list(pieces), schema, config, True, TRAIN_KEYS, ordered=False)
    if config.shuffle_buffer > 0:
        ds = shuffle_samples(ds, config.shuffle_buffer, seed_of(seed, epoch, sub_epoch, index))
    # Every source repeats: the first one's chunk holds exactly enough samples for the planned steps,
    # so it only wraps around when it holds fewer than planned (records skipped by ignore_errors,
    # blocks shortened by drop-sample encoding) and the sub-epoch still has its planned steps.
    ds = ds.repeat()
    constant = bool((sizes == sizes[0]).all())
    return ds.rebatch(int(sizes[0]) if constant else tf.constant(sizes, tf.int64), drop_remainder=constant)


def _with_aux(source: Source):
    def add(batch: dict) -> dict:
        aux, aux_mask = aux_targets(source.lat, source.lon, batch["ncol"], batch["time"])
        return {"inputs": batch["inputs"], "targets": batch["targets"], "aux": aux, "aux_mask": aux_mask}

    return add


def _training_element(sources: list[Source], schema: Schema, replicas: int, global_batch: int):
    """Per-source pieces of one step → ``(inputs, targets, aux, aux_mask)`` of the global batch.

    Several sources: every replica's slice of the global batch gets the same mix (the pieces are
    interleaved replica by replica), so that BatchNorm statistics see the configured ratio.
    """

    def element(*parts: dict):
        parts = [_with_aux(s)(p) for s, p in zip(sources, parts, strict=True)]
        out = {}
        for key, width in (
            ("inputs", schema.n_inputs),
            ("targets", schema.n_targets),
            ("aux", 8),
            ("aux_mask", 8),
        ):
            if len(parts) == 1:
                merged = parts[0][key]
            else:
                pieces = [tf.reshape(p[key], [replicas, -1, width]) for p in parts]
                merged = tf.reshape(tf.concat(pieces, axis=1), [global_batch, width])
            out[key] = tf.ensure_shape(merged, [global_batch, width])
        return out["inputs"], out["targets"], out["aux"], out["aux_mask"]

    return element


def make_train_dataset(
    sources: list[Source],
    config,
    seed: int,
    epoch: int,
    sub_epoch: int,
    plan: SubEpochPlan,
    replicas: int = 1,
) -> tf.data.Dataset:
    """The ``plan.steps`` global batches of training sub-epoch ``sub_epoch`` of ``epoch``.

    Args:
        sources: resolved sources (the first is read once; the others repeat).
        config: a DataConfig.
        seed, epoch, sub_epoch: fix the shuffle (the plan fixed what is read).
        plan: what each source reads, the steps and the per-replica samples of each source per step
            (:func:`tfpipe.data.sampling.plan_stage`).
        replicas: replicas the global batch is split over; each replica slice gets the same mix.

    The records were checked for NaN/Inf when they were encoded and are CRC-checked when read; the
    training loop stops on a non-finite loss.
    """
    schema = get_schema(config.schema)
    if len(plan.pieces) != len(sources):
        raise DataError(f"the plan reads {len(plan.pieces)} source(s), not {len(sources)}: use plan_stage")
    global_batch = replicas * int(plan.counts[:, 0].sum()) if plan.steps else replicas * config.batch_size
    parts = [
        _source_steps(plan.pieces[i], i, config, seed, epoch, sub_epoch, replicas * plan.counts[i])
        for i in range(len(sources))
    ]
    ds = parts[0] if len(parts) == 1 else tf.data.Dataset.zip(tuple(parts))
    element = _training_element(sources, schema, replicas, global_batch)
    ds = ds.take(plan.steps).map(
        (lambda b: element(b)) if len(parts) == 1 else element,
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    options = tf.data.Options()
    options.deterministic = bool(config.deterministic)
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options).prefetch(AUTOTUNE)


def make_validation_dataset(paths: list[str], schema: Schema, batch: int) -> tf.data.Dataset:
    """Ordered batches of exactly ``batch`` rows (the last one padded) for distributed validation.

    Elements: ``inputs [B, n_inputs]`` and ``targets [B, T]`` float32; ``x64`` and ``y64`` (the
    float64 ``state_q0002`` and ``ptend_q0002`` levels, bit-cast to ``int32 [B, 60, 2]`` so that a
    TPU can carry them); ``valid [B]`` (1.0 for real rows, 0.0 for padding).
    """
    keys = ("inputs", "targets", "x64", "y64")
    ds = parsed_blocks(paths, schema, ReadOptions(), True, keys, ordered=True).rebatch(batch)
    widths = {"inputs": schema.n_inputs, "targets": schema.n_targets}

    def pad(b: dict) -> dict:
        b = _check_finite(b, "the validation files")
        n = tf.shape(b["inputs"])[0]
        padded = {k: tf.pad(v, [[0, batch - n], [0, 0]]) for k, v in b.items()}
        out = {k: tf.ensure_shape(padded[k], [batch, w]) for k, w in widths.items()}
        for k in ("x64", "y64"):  # float64 travels as int32 pairs: TPUs have no float64
            out[k] = tf.ensure_shape(tf.bitcast(padded[k], tf.int32), [batch, b[k].shape[1], 2])
        out["valid"] = tf.sequence_mask(n, batch, tf.float32)
        return out

    return ds.map(pad, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)


def make_predict_dataset(
    paths: list[str], schema: Schema, batch_size: int, with_targets: bool
) -> tf.data.Dataset:
    """Ordered batches of raw ``{inputs, x64, sample_id, ncol, time[, targets, y64]}`` for inference."""
    keys = ("inputs", "x64", "sample_id", "ncol", "time") + (("targets", "y64") if with_targets else ())
    ds = parsed_blocks(paths, schema, ReadOptions(), with_targets, keys, ordered=True).rebatch(batch_size)
    check = lambda b: _check_finite(b, "the data")  # noqa: E731
    return ds.map(check, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)


def diagnose_read_error(files: list[str]) -> str | None:
    """Name the first corrupt or unreadable TFRecord file among ``files`` (None if all are sound)."""
    for path in files:
        try:
            for _ in iter_records(storage.read_bytes(path), path):
                pass
        except (OSError, storage.StorageError) as err:
            return str(err)
    return None

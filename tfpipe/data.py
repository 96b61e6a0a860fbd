"""tf.data input pipelines over encoded shards: sub-epoch plans, normalisation, mixing, batching.

An epoch is a seeded permutation of a source's training files, from ``(seed, epoch)``, cut into K
chunks; sub-epoch ``k`` reads chunk ``k``. The plan is a pure function of ``(seed, epoch, k)``, so a
resumed run rebuilds exactly the data it would have seen. Validation files are a fixed, seeded
choice of ``val_fraction`` of each source's files (or a separate folder) and never overlap training.

Per source: interleave the files' records (blocks of samples) → parse → shuffle the raw samples
(seeded, in two vectorised stages: whole blocks in a buffer, then every window of ``shuffle_buffer``
samples permuted at once; no per-sample tf.data step) → re-batch → normalise each batch with the
source's own statistics. Several sources are then mixed by ``sample_from_datasets`` with the
configured weights, in granules of ``MIX_GRANULE`` samples, and re-batched. Batches keep
``drop_remainder`` (static shapes for TPUs) and are prefetched. Elements are
``(inputs [B,60,C], targets [B,T], mask [B,T], aux)`` with ``aux = {"targets": [B,8], "mask": [B,8]}``
(space-time targets from ``ncol`` and ``time``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from data_prep.stats import load_stats
from tfpipe import storage
from tfpipe.grid import read_grid
from tfpipe.manifest import data_files, read_manifests
from tfpipe.normalize import Normalizer
from tfpipe.records import iter_records, parse_block
from tfpipe.schema import NCOL, get_schema

log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE
SPLIT_SEED = 20240717
"""Seed of the train/validation file split: fixed, so that runs with different seeds share it."""
GRID_FILE = "grid-info.nc"
MIX_GRANULE = 8
"""Samples drawn from one source at a time when mixing several (each draw is one tf.data step)."""


class DataError(ValueError):
    """Data that cannot feed the pipeline (no files, too few files, bad stats, corrupt records)."""


@dataclass
class Source:
    """One resolved data source: its files, normaliser and grid tables."""

    name: str
    path: str
    weight: float
    train_files: list[str]
    val_files: list[str]
    normalizer: Normalizer
    lat: np.ndarray | None  # (384,) radians, None without a grid file
    lon: np.ndarray | None
    samples: dict[str, int]  # samples per file, from the manifests


def split_files(files: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """(train, val): a fixed seeded choice of ``round(val_fraction * n)`` files (at least one if > 0)."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = 0 if val_fraction == 0 else max(1, round(val_fraction * len(files)))
    if n_val >= len(files) and n_val:
        raise DataError(f"{len(files)} files cannot be split into training and {n_val} validation files")
    chosen = set(np.random.default_rng(SPLIT_SEED).permutation(len(files))[:n_val].tolist())
    train = [f for i, f in enumerate(files) if i not in chosen]
    val = [f for i, f in enumerate(files) if i in chosen]
    return train, val


def sub_epoch_files(files: list[str], seed: int, epoch: int, sub_epoch: int, sub_epochs: int) -> list[str]:
    """The files of sub-epoch ``k`` of ``epoch``: chunk k of a permutation seeded by (seed, epoch)."""
    if not 0 <= sub_epoch < sub_epochs:
        raise DataError(f"sub-epoch {sub_epoch} outside 0..{sub_epochs - 1}")
    if len(files) < sub_epochs:
        raise DataError(f"{len(files)} training files cannot make {sub_epochs} sub-epochs (need one each)")
    order = np.random.default_rng([seed, epoch]).permutation(len(files))
    return [files[i] for i in np.array_split(order, sub_epochs)[sub_epoch]]


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


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
    name: str,
    path: str,
    weight: float,
    config,
    stats_path: str = "",
    val_path: str = "",
) -> Source:
    """Files, split, statistics and grid of one source (``config``: a DataConfig)."""
    schema = get_schema(config.schema)
    manifests = read_manifests(path, schema=schema.name)
    files = data_files(path, manifests)
    samples = dict(zip(files, (f.samples for m in manifests for f in m.files), strict=True))
    if val_path:
        val_manifests = read_manifests(val_path, schema=schema.name)
        train, val = files, data_files(val_path, val_manifests)
        samples |= dict(zip(val, (f.samples for m in val_manifests for f in m.files), strict=True))
    else:
        train, val = split_files(files, config.val_fraction)
    stats = load_stats(stats_path or storage.join(path, "stats.json"), schema=schema.name)
    if stats.targets is None:
        raise DataError(f"{stats_path or path}: statistics without targets cannot train a model")
    normalizer = Normalizer(
        schema, stats, tuple(config.representations), config.feature_clip, config.target_clip
    )
    lat, lon = _grid_tables(config.grid or storage.join(path, GRID_FILE))
    if lat is None:
        log.warning("%s: no grid file; latitude/longitude auxiliary targets are masked out", path)
    return Source(name, path, weight, train, val, normalizer, lat, lon, samples)


def resolve_sources(config) -> list[Source]:
    """Every source of a DataConfig; DataError for a bad weight."""
    out = []
    for s in config.sources:
        if not s.weight > 0:
            raise DataError(f"source {s.name!r}: weight must be > 0, got {s.weight}")
        out.append(resolve_source(s.name, s.path, s.weight, config, s.stats, config.val_path))
    return out


def sub_epoch_steps(sources: list[Source], config, seed: int, epoch: int, sub_epoch: int, batch: int) -> int:
    """Batches in a training sub-epoch: the first source's chunk read once, the others in proportion.

    With several sources the others repeat as needed, so that they keep their share of every batch.
    """
    first = sources[0]
    files = sub_epoch_files(first.train_files, seed, epoch, sub_epoch, config.sub_epochs)
    share = first.weight / sum(s.weight for s in sources)
    return int(sum(first.samples[f] for f in files) / share) // batch


def aux_targets(source: Source, ncol: tf.Tensor, time: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``[n, 8]`` space-time targets (sin/cos of lat, lon, day of year, time of day) and their mask."""
    known_col = ncol >= 0
    col = tf.maximum(ncol, 0)
    if source.lat is None:
        lat = lon = tf.zeros(tf.shape(ncol), tf.float32)
        known_col = tf.zeros_like(known_col)
    else:
        lat = tf.gather(tf.constant(source.lat), col)
        lon = tf.gather(tf.constant(source.lon), col)
    known_time = time >= 0
    t = tf.maximum(time, 0)
    two_pi = 2 * np.pi
    doy = tf.cast((t // 86400) % 365, tf.float32) * (two_pi / 365)
    tod = tf.cast(t % 86400, tf.float32) * (two_pi / 86400)
    angles = [lat, lon, doy, tod]
    values = tf.stack([f(a) for a in angles for f in (tf.sin, tf.cos)], axis=1)
    col_mask = tf.cast(known_col, tf.float32)[:, None]
    time_mask = tf.cast(known_time, tf.float32)[:, None]
    mask = tf.concat([tf.tile(col_mask, [1, 4]), tf.tile(time_mask, [1, 4])], axis=1)
    return values * mask, mask


_TRAIN_KEYS = ("inputs", "targets", "aux", "aux_mask")
_RAW_TRAIN_KEYS = ("inputs", "x64", "targets", "ncol", "time")


def _parsed_blocks(
    files: list[str], schema, config, with_targets: bool, keys: tuple[str, ...], ordered: bool
) -> tf.data.Dataset:
    """The files' records (blocks of samples), parsed, keeping ``keys``."""

    def parse(record: tf.Tensor) -> dict:
        block = parse_block(record, schema, with_targets=with_targets)
        return {k: block[k] for k in keys}

    return _records(files, config, ordered).map(
        parse, num_parallel_calls=AUTOTUNE, deterministic=True if ordered else bool(config.deterministic)
    )


def _normalise_fn(source: Source, keys: tuple[str, ...]):
    """Normalise a batch of parsed samples (features, targets, space-time aux); keep ``keys``.

    ``targets`` become the normalised targets and ``raw_targets`` the parsed ones; ``x64``,
    ``ncol``, ``time`` and ``sample_id`` pass through when present.
    """
    norm = source.normalizer

    def normalise(batch: dict) -> dict:
        aux, aux_mask = aux_targets(source, batch["ncol"], batch["time"])
        out = dict(batch, inputs=norm.features(batch["inputs"], batch["x64"]), aux=aux, aux_mask=aux_mask)
        if "targets" in batch:
            out.update(targets=norm.targets(batch["targets"]), raw_targets=batch["targets"])
        return {k: out[k] for k in keys}

    return normalise


def _records(files: list[str], config, ordered: bool) -> tf.data.Dataset:
    paths = [storage.tf_path(f) for f in files]
    if not paths:
        raise DataError("no files to read")

    def read(path: tf.Tensor) -> tf.data.Dataset:
        ds = tf.data.TFRecordDataset(path, buffer_size=8 << 20)
        return ds.ignore_errors(log_warning=True) if config.ignore_errors else ds

    return tf.data.Dataset.from_tensor_slices(paths).interleave(
        read,
        cycle_length=max(1, min(config.cycle_length, len(paths))),
        num_parallel_calls=AUTOTUNE,
        deterministic=True if ordered else bool(config.deterministic),
    )


def _source_batches(
    source: Source, files: list[str], config, shuffle_seed: int | None, batch: int, drop: bool
) -> tf.data.Dataset:
    """Batches of one source's normalised training samples (``_TRAIN_KEYS``).

    Parsed samples are shuffled (``shuffle_samples``, when a seed is given) before normalisation:
    a raw sample is about 8 times smaller than its ``[60, C]`` features, so shuffling first moves
    fewer bytes, and normalising whole batches costs the same per sample as whole blocks.
    """
    ordered = shuffle_seed is None
    ds = _parsed_blocks(files, source.normalizer.schema, config, True, _RAW_TRAIN_KEYS, ordered)
    if shuffle_seed is not None and config.shuffle_buffer > 0:
        ds = shuffle_samples(ds, config.shuffle_buffer, shuffle_seed)
    ds = ds.rebatch(batch, drop_remainder=drop)
    return ds.map(_normalise_fn(source, _TRAIN_KEYS), num_parallel_calls=AUTOTUNE, deterministic=True)


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


def _to_training_element(mask: np.ndarray):
    mask_t = tf.constant(mask)

    def element(batch: dict):
        target_mask = tf.broadcast_to(mask_t, tf.shape(batch["targets"]))
        aux = {"targets": batch["aux"], "mask": batch["aux_mask"]}
        return batch["inputs"], batch["targets"], target_mask, aux

    return element


def make_dataset(
    config,
    split: str,
    epoch: int = 0,
    sub_epoch: int = 0,
    *,
    seed: int = 0,
    batch_size: int | None = None,
    drop_remainder: bool | None = None,
    sources: list[Source] | None = None,
) -> tf.data.Dataset:
    """The training (``split="train"``: sub-epoch ``sub_epoch`` of ``epoch``) or validation dataset.

    Args:
        config: a DataConfig (sources, schema, representations, clipping, batch size, ...).
        split: "train" or "val".
        epoch, sub_epoch: which chunk of the training plan (ignored for "val").
        seed: run seed; with (epoch, sub_epoch) it fixes the file chunk and the shuffle.
        batch_size: global batch (default ``config.batch_size``).
        drop_remainder: default True for train, False for val.
        sources: already resolved sources (saves re-reading manifests and stats).
    """
    if split not in ("train", "val"):
        raise DataError(f"split must be 'train' or 'val', not {split!r}")
    sources = sources if sources is not None else resolve_sources(config)
    batch = batch_size or config.batch_size
    mask = sources[0].normalizer.target_mask(tuple(config.q0002_replacement_levels))

    drop = split == "train" if drop_remainder is None else drop_remainder
    if split == "train":
        parts = []
        for i, s in enumerate(sources):
            files = sub_epoch_files(s.train_files, seed, epoch, sub_epoch, config.sub_epochs)
            shuffle_seed = _seed(seed, epoch, sub_epoch, i)
            if len(sources) == 1:
                parts.append(_source_batches(s, files, config, shuffle_seed, batch, drop))
                continue
            part = _source_batches(s, files, config, shuffle_seed, batch, False).rebatch(MIX_GRANULE)
            parts.append(part if i == 0 else part.repeat())
        if len(parts) == 1:
            ds = parts[0]
        else:
            weights = np.array([s.weight for s in sources], dtype=np.float64)
            ds = tf.data.Dataset.sample_from_datasets(
                parts, weights=(weights / weights.sum()).tolist(), seed=_seed(seed, epoch, sub_epoch, 999),
                stop_on_empty_dataset=True,
            )  # fmt: skip
            ds = ds.rebatch(batch, drop_remainder=drop)
    else:
        with_val = [s for s in sources if s.val_files]
        if not with_val:
            raise DataError("no validation files (val_fraction is 0 and no val_path)")
        single = len(with_val) == 1
        parts = [_source_batches(s, s.val_files, config, None, batch, drop and single) for s in with_val]
        ds = parts[0]
        for p in parts[1:]:
            ds = ds.concatenate(p)
        if not single:  # whole batches across the sources' boundaries
            ds = ds.rebatch(batch, drop_remainder=drop)
    if split == "train":
        ds = ds.take(sub_epoch_steps(sources, config, seed, epoch, sub_epoch, batch))
    ds = ds.map(_to_training_element(mask), num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = bool(config.deterministic) or split == "val"
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options).prefetch(AUTOTUNE)


def make_predict_dataset(files: list[str], source: Source, batch_size: int, with_targets: bool):
    """Ordered batches of ``{inputs, x64, sample_id, ncol, time[, raw_targets]}`` for inference."""
    keys = ("inputs", "x64", "sample_id", "ncol", "time")
    raw_keys = keys + (("targets",) if with_targets else ())
    keys += ("raw_targets",) if with_targets else ()
    ds = _parsed_blocks(files, source.normalizer.schema, _PredictConfig(), with_targets, raw_keys, True)
    normalise = _normalise_fn(source, keys)
    ds = ds.rebatch(batch_size).map(normalise, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE)


@dataclass
class _PredictConfig:
    cycle_length: int = 1
    deterministic: bool = True
    ignore_errors: bool = False


def diagnose_read_error(files: list[str]) -> str | None:
    """Name the first corrupt or unreadable TFRecord file among ``files`` (None if all are sound)."""
    for path in files:
        try:
            for _ in iter_records(storage.read_bytes(path), path):
                pass
        except (OSError, storage.StorageError) as err:
            return str(err)
    return None

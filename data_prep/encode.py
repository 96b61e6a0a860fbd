"""Encode one shard of a raw ClimSim tree or a Kaggle CSV into TFRecord files plus a manifest.

    python -m data_prep.encode --src SRC --dst DST --shard I --num-shards N

SRC is a raw tree (local folder, ``gs://bucket/prefix`` or ``hf://datasets/OWNER/NAME[/path]``) or,
with ``--format kaggle-csv``, a Kaggle ``train.csv``/``test.csv``. Shard I takes files ``[I::N]``
of the sorted (and ``--stride``-thinned) mli file list, or the I-th contiguous slice of CSV rows.
The shard's files are published first (temporary name, then rename or upload) and
``DST/manifest-IIIII-of-NNNNN.json`` last: the manifest is the commit marker. A shard whose manifest
exists and verifies is skipped; ``--overwrite`` redoes it. Output bytes depend only on the input
and the options, so a killed and re-run shard equals an uninterrupted one byte for byte.

(Just over 400 lines: like every ``data_prep`` job, the job and its command line share one module, so
``python -m data_prep.encode`` stays the entry point; reading and writing blocks are their own modules.)
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from data_prep.raw import RawDataError
from data_prep.raw_blocks import list_raw_pairs, raw_blocks
from data_prep.shard_writer import BackgroundWriter, ShardWriter
from data_prep.sharding import SHARD_ENV, ShardEnvError, int_from_env
from tfpipe import storage
from tfpipe.console import ArgumentParser, check_path_arguments, stop_on_signals
from tfpipe.data.kaggle_csv import CsvError, csv_blocks, read_header
from tfpipe.data.manifest import (
    ENCODER,
    MANIFEST_RE,
    Manifest,
    ManifestError,
    differences,
    manifest_name,
    source_key,
    verify,
)
from tfpipe.data.records import Block
from tfpipe.data.schema import NCOL, SCHEMAS, Schema, get_schema

FORMATS = ("raw", "kaggle-csv")
BAD_VALUE_POLICIES = ("error", "drop-sample")
BAD_VALUES_HINT = "use --on-bad-values=drop-sample to drop such rows"
"""How the error about a CSV row with NaN/Inf or empty values ends."""
GRID_FILE = "grid-info.nc"


class EncodeError(ValueError):
    """Bad input or options; the message names the file and the problem."""


@dataclass
class EncodeConfig:
    src: str
    dst: str
    shard: int
    num_shards: int
    format: str = "raw"
    schema: str = "kaggle"
    stride: int = 1
    workers: int = 1
    blocks_per_file: int = 16
    """Raw: time steps (blocks of 384 samples) per TFRecord file. CSV: blocks of ``block_size`` rows."""
    block_size: int = NCOL
    """CSV rows per block (raw blocks are always one time step)."""
    overwrite: bool = False
    on_bad_values: str = "error"
    grid: str | None = None
    progress: bool = True


@dataclass
class EncodeSummary:
    shard: int
    num_shards: int
    dst: str
    skipped: bool
    files: int
    samples: int
    bytes: int
    source_files: int
    dropped_samples: int
    seconds: float
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- sources


# ---------------------------------------------------------------- output


def _check_writable(dst: str) -> None:
    probe = storage.join(dst, f".write-probe-{os.getpid()}")
    try:
        storage.makedirs(dst)
        storage.write_bytes(probe, b"")
        storage.delete(probe)
    except (OSError, storage.StorageError) as err:
        raise EncodeError(f"{dst}: not writable ({err})") from None


def _remove_stale(config: EncodeConfig, keep: set[str]) -> None:
    """Delete this shard's files that its manifest does not list, and what killed runs of it left."""
    prefix = f"part-{config.shard:05d}-of-{config.num_shards:05d}-"
    for path in storage.list_files(config.dst):
        name = path.rsplit("/", 1)[-1]
        if name.startswith(prefix) and name not in keep:
            storage.delete(path, missing_ok=True)
    storage.remove_temps(config.dst, prefix=prefix)  # of files being written when a run was killed
    storage.remove_temps(config.dst, [manifest_name(config.shard, config.num_shards)])


def _producer(config: EncodeConfig) -> dict:
    """What a manifest of this run records about its producer (see ``Manifest.producer``)."""
    return Manifest(
        config.shard, config.num_shards, config.schema, config.format, config.src, config.stride, 0, 0, True,
        [], [], blocks_per_file=config.blocks_per_file, block_size=config.block_size,
        on_bad_values=config.on_bad_values, encoder=ENCODER,
    ).producer()  # fmt: skip


def _check_shard_set(config: EncodeConfig) -> str | None:
    """Refuse to add a shard to a folder that holds a set of another ``--num-shards`` or parameters.

    With ``--overwrite`` (re-encoding a set shard by shard) other parameters only warn (the returned
    warning is printed once the shard is committed): readers refuse the mixed set until every shard
    is redone. Another ``--num-shards`` is always refused.
    """
    if not storage.exists(config.dst):
        return None
    for path in storage.list_files(config.dst, suffix=".json"):
        match = MANIFEST_RE.search(path)
        if not match or (int(match[1]), int(match[2])) == (config.shard, config.num_shards):
            continue
        other = Manifest.from_json(storage.read_bytes(path).decode(), path)
        differ = differences(other.producer(), _producer(config))
        if not differ:
            continue
        what = f"{config.dst} holds a shard set encoded with other parameters ({'; '.join(differ)})"
        if config.overwrite and other.num_shards == config.num_shards:
            return (
                f"data_prep.encode: warning: {path}: {what}; readers refuse the folder until every shard "
                "is re-encoded the same way"
            )
        raise EncodeError(f"{path}: {what}: write this shard to another --dst, or delete that set first")
    return None


def _committed(config: EncodeConfig, manifest_path: str) -> tuple[Manifest | None, str | None]:
    """(the shard's committed manifest or None, what is wrong with it or None)."""
    if not storage.exists(manifest_path):
        return None, None
    try:
        old = Manifest.from_json(storage.read_bytes(manifest_path).decode(), manifest_path)
    except ManifestError as err:
        return None, str(err)
    differ = differences(old.producer(), _producer(config))
    if differ and not config.overwrite:
        raise EncodeError(
            f"{manifest_path}: shard {config.shard} was encoded with other parameters ({'; '.join(differ)}): "
            "pass --overwrite to re-encode it, or write to another --dst"
        )
    return old, verify(old, config.dst)


def _source_grid(config: EncodeConfig) -> tuple[str, bytes] | None:
    """(path, bytes) of the grid file to copy beside the data (``--grid``, else ``SRC/grid-info.nc``
    of a raw tree), checked to open as a grid-info netCDF file; None without one."""
    src = config.grid or (storage.join(config.src, GRID_FILE) if config.format == "raw" else None)
    if src is None or not storage.exists(src):
        if config.grid:
            raise EncodeError(f"{config.grid}: grid file not found")
        return None
    data = storage.read_bytes(src)
    if not data:
        raise EncodeError(f"{src}: empty grid file (0 bytes): copy it again, or pass --grid FILE")
    from tfpipe.data.grid import read_grid

    try:
        read_grid(src, memory=data)
    except ValueError as err:
        raise EncodeError(f"{err}: copy it again, or pass --grid FILE") from None
    return src, data


def _copy_grid(config: EncodeConfig, grid: tuple[str, bytes] | None) -> None:
    """Write the checked grid file beside the data (a damaged or other copy there is replaced)."""
    if grid is None:
        return
    target = storage.join(config.dst, GRID_FILE)
    if not storage.exists(target) or storage.read_bytes(target) != grid[1]:
        storage.write_bytes(target, grid[1])


def _check_options(c: EncodeConfig) -> None:
    """EncodeError for options that cannot work, before anything is read or written."""
    if c.num_shards < 1:
        raise EncodeError(f"--num-shards must be >= 1, got {c.num_shards}")
    if not 0 <= c.shard < c.num_shards:
        raise EncodeError(f"shard {c.shard} out of range 0..{c.num_shards - 1}")
    if c.format not in FORMATS:
        raise EncodeError(f"unknown format {c.format!r}; known: {', '.join(FORMATS)}")
    if c.schema not in SCHEMAS:
        raise EncodeError(f"unknown schema {c.schema!r}; known: {', '.join(SCHEMAS)}")
    if c.format == "kaggle-csv" and c.schema != "kaggle":
        raise EncodeError("--format kaggle-csv needs --schema kaggle")
    if c.stride < 1 or c.blocks_per_file < 1 or c.block_size < 1 or c.workers < 1:
        raise EncodeError("--stride, --blocks-per-file, --block-size and --workers must be >= 1")


def _write_blocks(c: EncodeConfig, blocks: Iterator[Block], total: int | None) -> BackgroundWriter:
    """Every block into the shard's files (published, not yet committed), with progress; the writer
    (its ``entries``) when all are written. On any error the file in progress is dropped."""
    writer = BackgroundWriter(ShardWriter(c.shard, c.num_shards, c.dst, c.blocks_per_file))
    samples = 0
    with _progress(c, total) as bar:
        try:
            for block in blocks:
                writer.write(block)
                samples += len(block)
                bar.update(1)
                bar.set_postfix(samples=samples, refresh=False)
            writer.close()
        except BaseException as err:
            writer.abort()
            if hasattr(blocks, "close"):  # stop the reader pool now, not when the generator is collected
                blocks.close()
            if isinstance(err, (RawDataError, CsvError)):  # encode_shard's errors are EncodeErrors
                raise EncodeError(str(err)) from None
            raise
    return writer


def encode_shard(config: EncodeConfig) -> EncodeSummary:
    """Encode one shard (see the module docstring). EncodeError on bad input or options."""
    t0 = time.perf_counter()
    c = config
    _check_options(c)
    schema = get_schema(c.schema)
    manifest_path = storage.join(c.dst, manifest_name(c.shard, c.num_shards))
    old, problem = _committed(c, manifest_path)
    if old is not None and problem is None and not c.overwrite:
        _remove_stale(c, {f.name for f in old.files})  # files of an abandoned attempt, dead temps
        return EncodeSummary(
            c.shard, c.num_shards, c.dst, True, len(old.files), old.samples,
            sum(f.bytes for f in old.files), len(old.source_files), old.dropped_samples,
            round(time.perf_counter() - t0, 3), {"reason": "manifest exists and verifies"},
        )  # fmt: skip
    if problem is not None:
        print(f"data_prep.encode: redoing shard {c.shard}: {problem}", file=sys.stderr)
    warning = _check_shard_set(c)

    if c.format == "raw":
        try:
            pairs = list_raw_pairs(c.src, c.stride)
        except RawDataError as err:
            raise EncodeError(str(err)) from None
        mine = pairs[c.shard :: c.num_shards]
        source_files = [p for pair in mine for p in pair]
    else:
        if not storage.exists(c.src):
            raise EncodeError(f"{c.src}: file not found")
        mine, source_files = None, [c.src]
    _check_writable(c.dst)
    grid = _source_grid(c)  # before any data is written: a 0-byte or unreadable grid is refused
    # A committed shard stays committed (manifest and files) until the new manifest replaces it.

    bad_values: list[dict] = []
    writer = _write_blocks(
        c, _shard_blocks(c, schema, mine, bad_values), len(mine) if mine is not None else None
    )
    dropped_samples = sum(entry["dropped_samples"] for entry in bad_values)

    _copy_grid(c, grid)  # beside the data before the shard is committed; nothing at all if encoding failed
    manifest = Manifest(
        shard=c.shard,
        num_shards=c.num_shards,
        schema=schema.name,
        format=c.format,
        source=source_key(c.src),  # resolved: the same folder matches however it is spelled
        stride=c.stride,
        n_inputs=schema.n_inputs,
        n_targets=schema.n_targets,
        has_targets=_has_targets(c, schema),
        files=writer.entries,
        source_files=[_relative(c.src, p) for p in source_files],
        dropped_samples=dropped_samples,
        bad_values=bad_values,
        blocks_per_file=c.blocks_per_file,
        block_size=c.block_size,
        on_bad_values=c.on_bad_values,
        encoder=ENCODER,
    )
    storage.write_bytes(manifest_path, manifest.to_json().encode())  # the commit
    _remove_stale(c, {e.name for e in writer.entries})
    if warning:
        print(warning, file=sys.stderr)
    return EncodeSummary(
        c.shard, c.num_shards, c.dst, False, len(writer.entries), manifest.samples,
        sum(e.bytes for e in writer.entries), len(source_files), dropped_samples,
        round(time.perf_counter() - t0, 3),
    )  # fmt: skip


def _shard_blocks(
    config: EncodeConfig, schema: Schema, pairs: list[tuple[str, str]] | None, bad_values: list[dict]
) -> Iterator[Block]:
    """The shard's blocks: its raw ``pairs``, or (``None``) its slice of the CSV rows.

    Samples dropped for NaN/Inf values (``--on-bad-values=drop-sample``) are described in ``bad_values``.
    """
    if pairs is not None:
        return raw_blocks(
            pairs, config.schema, bad_values, config.on_bad_values == "drop-sample", config.workers
        )
    dropped = bad_values if config.on_bad_values == "drop-sample" else None
    return csv_blocks(
        config.src, schema, config.block_size, config.shard, config.num_shards,
        dropped=dropped, bad_values_hint=BAD_VALUES_HINT,
    )  # fmt: skip


def _has_targets(config: EncodeConfig, schema: Schema) -> bool:
    if config.format == "raw":
        return True
    return len(read_header(config.src)) == 1 + schema.n_inputs + schema.n_targets


def _relative(src: str, path: str) -> str:
    return path[len(src) :].lstrip("/") if path.startswith(src) and path != src else path


def _progress(config: EncodeConfig, total: int | None):
    from tqdm import tqdm

    unit = "file" if config.format == "raw" else "block"
    return tqdm(
        total=total,
        unit=unit,
        desc=f"shard {config.shard}/{config.num_shards}",
        disable=not config.progress,
        file=sys.stderr,
        mininterval=1.0,
    )


# ---------------------------------------------------------------- CLI


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m data_prep.encode", description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, help="raw tree (dir, gs://, hf://) or Kaggle CSV file")
    p.add_argument("--dst", required=True, help="output folder (local or gs://)")
    p.add_argument(
        "--shard", type=int, default=None, help=f"shard index (default ${' or $'.join(SHARD_ENV)})"
    )
    p.add_argument("--num-shards", type=int, required=True, help="number of shards N")
    p.add_argument("--format", choices=FORMATS, default="raw", help="a raw netCDF tree or a Kaggle CSV file")
    p.add_argument("--schema", choices=sorted(SCHEMAS), default="kaggle", help="variable layout to encode")
    p.add_argument("--stride", type=int, default=1, help="keep every K-th time step (Kaggle train: 7)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="parallel file readers (processes); one per core on shards over a day",
    )
    p.add_argument("--blocks-per-file", type=int, default=16, help="blocks per TFRecord file")
    p.add_argument("--block-size", type=int, default=NCOL, help="CSV rows per block")
    p.add_argument(
        "--on-bad-values", choices=BAD_VALUE_POLICIES, default="error",
        help="NaN/Inf or empty values: stop with an error, or drop those samples (counted in the manifest)",
    )  # fmt: skip
    p.add_argument("--grid", default=None, help="grid file to copy to DST (default SRC/grid-info.nc)")
    p.add_argument("--overwrite", action="store_true", help="redo a shard that is already complete")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return check_path_arguments(p)


def main(argv: list[str] | None = None) -> int:
    stop_on_signals("data_prep.encode")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        shard = args.shard if args.shard is not None else int_from_env(SHARD_ENV)[0]
        if shard is None:
            parser.error(f"--shard is required (or set ${' or $'.join(SHARD_ENV)})")
        config = EncodeConfig(
            src=args.src.rstrip("/") if args.format == "raw" else args.src,
            dst=args.dst.rstrip("/"),
            shard=shard,
            num_shards=args.num_shards,
            format=args.format,
            schema=args.schema,
            stride=args.stride,
            workers=args.workers,
            blocks_per_file=args.blocks_per_file,
            block_size=args.block_size,
            overwrite=args.overwrite,
            on_bad_values=args.on_bad_values,
            grid=args.grid,
            progress=not args.no_progress,
        )
        summary = encode_shard(config)
    except (EncodeError, ShardEnvError, RawDataError, ManifestError, storage.StorageError) as err:
        print(f"data_prep.encode: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        where = err.filename or args.dst  # an error without a file name happened while writing DST
        print(f"data_prep.encode: error: {where}: {err.strerror or err}", file=sys.stderr)
        return 2
    verb = "skipped (complete)" if summary.skipped else "wrote"
    print(
        f"shard {summary.shard}/{summary.num_shards}: {verb} {summary.files} files, "
        f"{summary.samples} samples, "
        f"{summary.bytes / 1e6:.1f} MB in {summary.seconds:.1f} s",
        file=sys.stderr,
    )
    print(json.dumps(summary.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main())

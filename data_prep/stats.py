"""Streaming float64 statistics of encoded data: per column, per variable (levels pooled), counts.

    python -m data_prep.stats --data DST --out stats.json [--shard I --num-shards N]
    python -m data_prep.stats --merge part-0.json part-1.json ... --out stats.json

Each block's mean and sum of squared deviations are computed in float64 and combined with Chan's
parallel formula, so results are numerically stable and shards merge into the one-pass result (to
float64 round-off: the merge order differs). ``state_q0002`` uses the exact float64 copy in the
records. The statistics themselves and the ``stats.json`` format are :mod:`tfpipe.data.stats`.
"""

from __future__ import annotations

import json
import sys
import time

from tqdm import tqdm

from tfpipe import storage
from tfpipe.console import (
    ArgumentParser,
    check_path_arguments,
    quiet_native_logs,
    stop_on_signals,
    terminal_stderr,
)
from tfpipe.data.manifest import ManifestError, data_files, read_manifests
from tfpipe.data.records import read_blocks
from tfpipe.data.schema import Schema, get_schema
from tfpipe.data.stats import MIN_STD, Moments, Stats, StatsError, load_stats
from tfpipe.evaluate.export import block_columns


def compute_stats(
    data: str, shard: int = 0, num_shards: int = 1, allow_partial: bool = False, progress: bool = False
) -> Stats:
    """Statistics of the data files ``[shard::num_shards]`` of every complete shard under ``data``.

    With ``progress``, a bar over the samples goes to stderr.
    """
    if not 0 <= shard < num_shards:
        raise StatsError(f"shard {shard} out of range 0..{num_shards - 1}")
    manifests = read_manifests(data, allow_partial=allow_partial)
    schema: Schema = get_schema(manifests[0].schema)
    with_targets = all(m.has_targets for m in manifests)
    files = data_files(data, manifests)[shard::num_shards]
    inputs = Moments.empty(schema.n_inputs)
    targets = Moments.empty(schema.n_targets) if with_targets else None
    total = sum(f.samples for m in manifests for f in m.files) // num_shards if progress else None
    # Decoding a block imports TensorFlow (its Example protobuf, 10-15 s): done before the bar exists,
    # so that its rate and time left measure reading alone.
    from tensorflow.core.example import example_pb2  # noqa: F401

    bar = tqdm(total=total, unit="sample", unit_scale=True, desc="statistics", disable=not progress,
               file=terminal_stderr(), mininterval=1.0, delay=2.0)  # fmt: skip
    for block in read_blocks(files, schema):
        bar.update(len(block))
        x, y = block_columns(block, schema)
        inputs = inputs.merge(Moments.of(x))
        if targets is not None:
            targets = targets.merge(Moments.of(y))
    bar.close()
    if num_shards == 1 and inputs.count == 0:
        raise StatsError(f"{data}: zero samples")
    return Stats(schema.name, inputs, targets)


def merge_files(paths: list[str]) -> Stats:
    """The statistics of several stats files together (e.g. the parts of a sharded run)."""
    if not paths:
        raise StatsError("--merge needs at least one stats file")
    parts = [load_stats(p) for p in paths]
    total = parts[0]
    for part in parts[1:]:
        total = total.merge(part)
    if total.count == 0:
        raise StatsError(f"{', '.join(paths)}: zero samples in all")
    return total


def build_parser() -> ArgumentParser:
    """The ``python -m data_prep.stats`` command line."""
    p = ArgumentParser(prog="python -m data_prep.stats", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="folder of encoded shards (local or gs://)")
    p.add_argument("--merge", nargs="+", metavar="STATS", help="combine partial stats files instead")
    p.add_argument("--out", required=True, help="stats JSON to write (local or gs://)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--shard", type=int, default=0, help="this part's index (files [I::N])")
    p.add_argument(
        "--num-shards", type=int, default=1, help="number of parts N the statistics are split into"
    )
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="use a shard set with missing shards (they are named on stderr)",
    )
    return check_path_arguments(p)


def main(argv: list[str] | None = None) -> int:
    stop_on_signals("data_prep.stats")
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_native_logs()  # TensorFlow's start-up lines (when it loads) stay out of our one-line errors
    if (args.data is None) == (args.merge is None):
        parser.error("give exactly one of --data and --merge")
    t0 = time.perf_counter()
    try:
        stats = (
            merge_files(args.merge)
            if args.merge
            else compute_stats(
                args.data, args.shard, args.num_shards, args.allow_partial, not args.no_progress
            )
        )
        storage.write_bytes(args.out, stats.to_json().encode())
    except (StatsError, ManifestError, storage.StorageError, OSError) as err:
        print(f"data_prep.stats: error: {err}", file=sys.stderr)
        return 2
    summary = {
        "out": args.out,
        "schema": stats.schema,
        "count": stats.count,
        "zero_variance_targets": 0 if stats.targets is None else int((stats.targets.std <= MIN_STD).sum()),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

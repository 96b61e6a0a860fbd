"""Streaming float64 statistics of encoded data: per column, per variable (levels pooled), counts.

    python -m data_prep.stats --data DST --out stats.json [--shard I --num-shards N]
    python -m data_prep.stats --merge part-0.json part-1.json ... --out stats.json

Each block's mean and sum of squared deviations are computed in float64 and combined with Chan's
parallel formula, so results are numerically stable and shards merge into the one-pass result (to
float64 round-off: the merge order differs). ``state_q0002`` uses the exact float64 copy in the
records. A stats file holds the accumulators (count, mean, m2, min, max) per column, so any stats
file can be merged again, plus what readers use: ``std``, per-variable pooled values, the target
``scale`` used to normalise targets and the names of zero-variance columns.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from tfpipe import storage
from tfpipe.cliutil import ArgumentParser, stop_on_signals
from tfpipe.export import block_columns
from tfpipe.manifest import ManifestError, data_files, read_manifests
from tfpipe.records import read_blocks
from tfpipe.schema import VARIABLES, Schema, get_schema

STATS_VERSION = 1
#: A standard deviation at or below this (in the column's units) counts as zero variance: such a
#: column is constant for the model (its float32 z-score would overflow or be noise).
MIN_STD = 1e-30


class StatsError(ValueError):
    """No samples, mismatched schemas, or an unreadable stats file."""


@dataclass
class Moments:
    """Per-column count, mean, sum of squared deviations (m2), min and max, all float64."""

    count: int
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, width: int) -> Moments:
        return cls(0, np.zeros(width), np.zeros(width), np.full(width, np.inf), np.full(width, -np.inf))

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        values = np.asarray(values, dtype=np.float64)
        mean = values.mean(axis=0)
        return cls(
            len(values), mean, ((values - mean) ** 2).sum(axis=0), values.min(axis=0), values.max(axis=0)
        )

    def merge(self, other: Moments) -> Moments:
        """Chan et al.'s pairwise combination."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return Moments(n, mean, m2, np.minimum(self.min, other.min), np.maximum(self.max, other.max))

    def pooled(self, columns: slice) -> Moments:
        """Moments of the values of ``columns`` taken together (a variable's levels pooled)."""
        out = Moments.empty(1)
        for k in range(columns.start, columns.stop):
            out = out.merge(
                Moments(
                    self.count,
                    self.mean[k : k + 1],
                    self.m2[k : k + 1],
                    self.min[k : k + 1],
                    self.max[k : k + 1],
                )
            )
        return out

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1))

    def to_dict(self) -> dict:
        return {
            "count": self.count,
            "mean": self.mean.tolist(),
            "m2": self.m2.tolist(),
            "min": self.min.tolist(),
            "max": self.max.tolist(),
            "std": self.std.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Moments:
        return cls(
            int(data["count"]), *(np.asarray(data[k], dtype=np.float64) for k in ("mean", "m2", "min", "max"))
        )


@dataclass
class Stats:
    """Statistics of one dataset for one schema (what ``stats.json`` holds)."""

    schema: str
    inputs: Moments
    targets: Moments | None

    @property
    def count(self) -> int:
        return self.inputs.count

    def merge(self, other: Stats) -> Stats:
        if other.schema != self.schema:
            raise StatsError(f"cannot merge stats of schemas {self.schema!r} and {other.schema!r}")
        if (self.targets is None) != (other.targets is None):
            raise StatsError("cannot merge stats with targets and stats without")
        targets = None if self.targets is None else self.targets.merge(other.targets)
        return Stats(self.schema, self.inputs.merge(other.inputs), targets)

    def variable_stats(self, which: str) -> dict[str, dict]:
        schema = get_schema(self.schema)
        moments, names = (self.inputs, schema.inputs) if which == "inputs" else (self.targets, schema.targets)
        out = {}
        for name in names:
            cols = schema.input_slice(name) if which == "inputs" else schema.target_slice(name)
            pooled = moments.pooled(cols)
            out[name] = {
                "mean": float(pooled.mean[0]),
                "std": float(pooled.std[0]),
                "min": float(pooled.min[0]),
                "max": float(pooled.max[0]),
                "count": pooled.count,
                "levels": VARIABLES[name].width,
            }
        return out

    def to_json(self) -> str:
        schema = get_schema(self.schema)
        data = {
            "version": STATS_VERSION,
            "schema": self.schema,
            "count": self.count,
            "input_columns": self.inputs.to_dict(),
            "input_variables": self.variable_stats("inputs"),
            "zero_variance_inputs": [
                c for c, s in zip(schema.input_columns, self.inputs.std, strict=True) if s <= MIN_STD
            ],
        }
        if self.targets is not None:
            std = self.targets.std
            data["target_columns"] = self.targets.to_dict()
            data["target_variables"] = self.variable_stats("targets")
            data["target_scale"] = np.where(std > MIN_STD, std, 1.0).tolist()
            data["zero_variance_targets"] = [
                c for c, s in zip(schema.target_columns, std, strict=True) if s <= MIN_STD
            ]
        return json.dumps(data) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Stats:
        try:
            data = json.loads(text)
            if data.get("version") != STATS_VERSION:
                raise ValueError(f"stats version {data.get('version')}, expected {STATS_VERSION}")
            schema = get_schema(data["schema"])
            inputs = Moments.from_dict(data["input_columns"])
            targets = Moments.from_dict(data["target_columns"]) if "target_columns" in data else None
        except (ValueError, KeyError, TypeError) as err:
            raise StatsError(f"{where}: not a tfpipe stats file ({err})") from None
        if inputs.mean.shape != (schema.n_inputs,) or (
            targets is not None and targets.mean.shape != (schema.n_targets,)
        ):
            raise StatsError(f"{where}: column counts do not match schema {schema.name!r}")
        return cls(schema.name, inputs, targets)


def load_stats(path: str, schema: str | None = None) -> Stats:
    """Read a stats file; StatsError when it is for another schema than ``schema``."""
    if not storage.exists(path):
        raise StatsError(f"{path}: stats file not found (run python -m data_prep.stats)")
    stats = Stats.from_json(storage.read_bytes(path).decode(), path)
    if schema is not None and stats.schema != schema:
        raise StatsError(f"{path}: stats are for schema {stats.schema!r}, expected {schema!r}")
    return stats


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
    bar = tqdm(total=total, unit="sample", unit_scale=True, desc="statistics", disable=not progress,
               file=sys.stderr, mininterval=1.0, delay=2.0)  # fmt: skip
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
    return p


def main(argv: list[str] | None = None) -> int:
    stop_on_signals("data_prep.stats")
    parser = build_parser()
    args = parser.parse_args(argv)
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

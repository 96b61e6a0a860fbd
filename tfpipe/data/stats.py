"""Float64 statistics of a dataset (what ``stats.json`` holds): moments, Chan merge, load and save.

Per column: count, mean, sum of squared deviations (m2), min and max, combined block by block with
Chan's parallel formula (numerically stable; parts merge into the one-pass result to float64
round-off). A stats file holds these accumulators, so any stats file can be merged again, plus what
readers use: ``std``, per-variable pooled values, the target ``scale`` used to normalise targets and
the names of zero-variance columns. Computing them over encoded shards is :mod:`data_prep.stats`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from tfpipe import storage
from tfpipe.data.schema import VARIABLES, get_schema

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
        """No samples yet (``width`` columns)."""
        return cls(0, np.zeros(width), np.zeros(width), np.full(width, np.inf), np.full(width, -np.inf))

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        """Moments of a ``[n, width]`` block, in float64."""
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
        """Population standard deviation per column (0 without samples)."""
        return np.sqrt(self.m2 / max(self.count, 1))

    def to_dict(self) -> dict:
        """The accumulators and ``std`` as JSON-ready lists."""
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
        """Inverse of :meth:`to_dict` (``std`` is recomputed)."""
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
        """Samples the statistics cover."""
        return self.inputs.count

    def merge(self, other: Stats) -> Stats:
        """Statistics of both datasets together; StatsError for another schema or target presence."""
        if other.schema != self.schema:
            raise StatsError(f"cannot merge stats of schemas {self.schema!r} and {other.schema!r}")
        if (self.targets is None) != (other.targets is None):
            raise StatsError("cannot merge stats with targets and stats without")
        targets = None if self.targets is None else self.targets.merge(other.targets)
        return Stats(self.schema, self.inputs.merge(other.inputs), targets)

    def variable_stats(self, which: str) -> dict[str, dict]:
        """Per variable of ``which`` (``inputs`` or ``targets``): its levels pooled."""
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
        """The ``stats.json`` text (one line)."""
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
        """Parse a ``stats.json`` text; StatsError naming ``where`` when it is not one."""
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

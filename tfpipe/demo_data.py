"""The built-in demo data: synthetic raw files → encoded shards → statistics, prepared once in a cache.

Each stage is idempotent and atomic (synth publishes its tree by rename, encode skips complete shards,
stats are written by rename), so an interrupted preparation simply continues the next time.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tfpipe import storage
from tfpipe.data.records import LAYOUT_VERSION

DEMO_VERSION = 1
"""Bumped when the synthetic data change; the cache folder also names the record layout, so a cache
written by an older tfpipe (another layout) is never read, only a new one made beside it."""


def cache_root() -> Path:
    """``$TFPIPE_CACHE``, else ``$XDG_CACHE_HOME/tfpipe``, else ``~/.cache/tfpipe``."""
    if os.environ.get("TFPIPE_CACHE"):
        return Path(os.environ["TFPIPE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "tfpipe"


def demo_cache_dir(days: float, seed: int) -> Path:
    """The cache folder of the demo data: named by the demo version, the record layout, days and seed."""
    return cache_root() / f"demo-v{DEMO_VERSION}-l{LAYOUT_VERSION}-d{days:g}-s{seed}"


def prepare_demo_data(
    root: str | os.PathLike | None = None,
    days: float = 2.0,
    seed: int = 0,
    num_shards: int = 3,
    blocks_per_file: int = 4,
    quiet: bool = False,
) -> str:
    """Synthesise, encode and summarise the demo data under ``root``; returns the encoded folder."""
    from data_prep.encode import EncodeConfig, encode_shard
    from data_prep.stats import compute_stats
    from data_prep.synth import synthesize

    root = Path(root) if root is not None else demo_cache_dir(days, seed)
    raw, encoded = root / "raw", root / "encoded"
    root.mkdir(parents=True, exist_ok=True)
    if not (raw / "grid-info.nc").is_file():
        say(quiet, f"[demo data] synthesising {days:g} days into {raw}")
        synthesize(raw, days=days, seed=seed, overwrite=raw.exists())
    for shard in range(num_shards):
        summary = encode_shard(
            EncodeConfig(
                str(raw), str(encoded), shard, num_shards, blocks_per_file=blocks_per_file, progress=False
            )
        )
        if not summary.skipped:
            say(quiet, f"[demo data] encoded shard {shard}/{num_shards}: {summary.samples} samples")
    stats_path = encoded / "stats.json"
    if not stats_path.is_file():
        storage.write_bytes(str(stats_path), compute_stats(str(encoded)).to_json().encode())
        say(quiet, f"[demo data] statistics in {stats_path}")
    return str(encoded)


def say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr)

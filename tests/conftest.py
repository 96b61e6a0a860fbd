"""Shared fixtures: small synthetic raw trees and one local GCS emulator for the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gcs_emulator import GcsEmulator

from data_prep.synth import synthesize


@pytest.fixture(scope="session")
def raw_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """74 steps from 0001-01-31 00:00 to 0001-02-01 00:20: a full day and a month boundary."""
    out = tmp_path_factory.mktemp("raw") / "tree"
    synthesize(out, days=74 / 72, start="0001-01-31", seed=0)
    return out


@pytest.fixture(scope="session")
def small_raw_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four steps: the smallest tree that still has several files to shard."""
    out = tmp_path_factory.mktemp("raw-small") / "tree"
    synthesize(out, days=4 / 72, seed=1)
    return out


@pytest.fixture(scope="session")
def highres(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second encoded source (other weather, June 1st, 20 steps) standing in for high-resolution data."""
    from data_prep.encode import EncodeConfig, encode_shard
    from data_prep.stats import compute_stats

    tree = tmp_path_factory.mktemp("hr") / "tree"
    synthesize(tree, days=20 / 72, start="0001-06-01", seed=7)
    dst = tmp_path_factory.mktemp("highres") / "d"
    encode_shard(EncodeConfig(str(tree), str(dst), 0, 1, blocks_per_file=1, progress=False))
    (dst / "stats.json").write_text(compute_stats(str(dst)).to_json())
    return dst


@pytest.fixture(scope="session")
def tiny_encoded(small_raw_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`small_raw_tree` encoded (1536 samples) with its stats.json: data for the tiny experiment runs."""
    from data_prep.encode import EncodeConfig, encode_shard
    from data_prep.stats import compute_stats

    dst = tmp_path_factory.mktemp("tiny-encoded") / "enc"
    encode_shard(EncodeConfig(str(small_raw_tree), str(dst), 0, 1, blocks_per_file=1, progress=False))
    (dst / "stats.json").write_text(compute_stats(str(dst)).to_json())
    return dst


@pytest.fixture(scope="session")
def gcs() -> Iterator[GcsEmulator]:
    """fake-gcs-server on a free loopback port, stopped when the session ends."""
    with GcsEmulator() as emulator:
        yield emulator

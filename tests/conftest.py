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
def gcs() -> Iterator[GcsEmulator]:
    """fake-gcs-server on a free loopback port, stopped when the session ends."""
    with GcsEmulator() as emulator:
        yield emulator

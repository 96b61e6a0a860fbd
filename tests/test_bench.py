"""Benchmarks run end to end and print their JSON line (their numbers are not asserted:
throughput targets live in the benchmarks, never in timed unit tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench  # a benchmark run: once, in `make test`

REPO = Path(__file__).resolve().parents[1]


def test_synth_benchmark_prints_its_json_line():
    result = subprocess.run(
        [sys.executable, "bench/synth.py"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) == {"steps_per_s", "mb_per_s", "ratio_vs_write_only"}
    assert all(value > 0 for value in report.values())

"""The data benchmarks (encode, input pipeline) run end to end in quick mode and print their JSON line.

Only the keys and that the numbers are positive and finite are checked: throughput goals live in the
benchmarks' own output, never in timed unit tests.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench  # benchmark runs: once, in `make test`

REPO = Path(__file__).resolve().parents[1]


def run_quick(script: str) -> dict:
    env = dict(os.environ, TFPIPE_BENCH_QUICK="1")
    result = subprocess.run(
        [sys.executable, script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def positive_numbers(report: dict) -> list[float]:
    values = []
    for value in report.values():
        values += positive_numbers(value) if isinstance(value, dict) else [value]
    return values


@pytest.mark.parametrize(
    "script, keys",
    [
        (
            "bench/encode.py",
            {
                "encode_mb_per_s",
                "read_only_mb_per_s",
                "ratio_vs_read_only",
                "ratio_vs_read_only_by_workers",
                "bytes_per_sample_ratio",
                "samples",
            },
        ),
        (
            "bench/pipeline.py",
            {
                "samples_per_s",
                "ratio_vs_memory",
                "ratio_vs_pandas_csv",
                "ratio_vs_pandas_read_only",
                "bytes_per_s",
                "samples_per_s_by_threads",
            },
        ),
    ],
)
def test_data_benchmark_quick_mode_prints_its_json_line(script: str, keys: set[str]) -> None:
    report = run_quick(script)
    assert set(report) == keys
    if "samples_per_s_by_threads" in report:
        assert set(report["samples_per_s_by_threads"]) == {"1", "2"}
    if "ratio_vs_read_only_by_workers" in report:
        assert set(report["ratio_vs_read_only_by_workers"]) == {"1", "2"}
        assert report["ratio_vs_read_only"] == max(report["ratio_vs_read_only_by_workers"].values())
    for value in positive_numbers(report):
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, report

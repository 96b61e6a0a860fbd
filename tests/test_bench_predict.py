"""bench/predict.py runs end to end in quick mode and prints its JSON line (numbers not asserted:
throughput goals live in the benchmark, never in timed unit tests)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.bench
def test_predict_benchmark_prints_its_json_line():
    env = {**os.environ, "TFPIPE_BENCH_QUICK": "1"}
    result = subprocess.run(
        [sys.executable, "bench/predict.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"samples_per_s", "model_only_samples_per_s", "io_overhead_fraction", "samples"} <= set(report)
    scalars = [v for v in report.values() if not isinstance(v, dict)]
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in scalars)
    assert report["samples_per_s"] > 0 and report["model_only_samples_per_s"] > 0
    assert report["samples"] > 0 and isinstance(report["samples"], int)
    assert report["io_overhead_fraction"] < 1  # can be slightly negative: timing noise
    assert math.isclose(
        report["io_overhead_fraction"],
        1 - report["samples_per_s"] / report["model_only_samples_per_s"],
        abs_tol=2e-3,
    )

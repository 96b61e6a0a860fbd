"""bench/train.py runs end to end in quick mode and prints its JSON line (numbers not asserted beyond
being positive and finite: throughput and resume goals live in the benchmark, never in timed tests)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def numbers(value, key: str = "") -> list[tuple[str, float]]:
    """Every number in a JSON value, with the key it sits under (lists inherit their key)."""
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in numbers(v, k)]
    if isinstance(value, list):
        return [pair for v in value for pair in numbers(v, key)]
    return [(key, value)]


@pytest.mark.slow
@pytest.mark.bench
def test_train_benchmark_prints_its_json_line():
    env = {**os.environ, "TFPIPE_BENCH_QUICK": "1"}
    result = subprocess.run(
        [sys.executable, "bench/train.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {
        "train_samples_per_s", "resume_to_first_step_s", "resume_to_first_progress_s", "resume_process_s",
        "resume_breakdown_s", "checkpoint_save_s", "checkpoint_first_save_s", "checkpoint_restore_s",
        "checkpoint_bytes", "details",
    } <= set(report)  # fmt: skip
    assert set(report["train_samples_per_s"]) == {"squeezeformer_tiny", "mlp"}  # quick: no reference size
    assert {"imports", "data_resolve", "model_build", "restore", "to_first_step", "process"} <= set(
        report["resume_breakdown_s"]
    )
    assert isinstance(report["checkpoint_bytes"], int)
    for key, value in numbers(report):
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value), (key, value)
        # compile_overhead_s is a difference of two timings: positive in practice, not by construction
        assert value > 0 or key == "compile_overhead_s", (key, value)
    # the first step ends before the first progress update (10 steps), both before the process ends
    first_step, first_update = report["resume_to_first_step_s"], report["resume_to_first_progress_s"]
    assert first_step < first_update < report["resume_process_s"]

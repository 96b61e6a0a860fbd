"""The ``tfpipe`` console script, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tfpipe.schema import KAGGLE

TFPIPE = Path(sys.executable).parent / "tfpipe"  # the console script installed with the package


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TFPIPE), *args], capture_output=True, text=True, timeout=300)


def test_demo_rejects_bad_days_with_one_line(tmp_path: Path):
    result = _run("demo", "--workdir", str(tmp_path / "demo"), "--days", "-2")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["tfpipe demo: error: days must be > 0, got -2.0"]


def test_schema_prints_the_kaggle_column_order():
    result = _run("schema", "--columns")
    assert result.returncode == 0
    assert result.stdout.split() == list(KAGGLE.columns)
    summary = json.loads(_run("schema", "--name", "v1").stdout)
    assert (summary["n_inputs"], summary["n_targets"]) == (124, 128)


def test_unknown_subcommand_is_a_one_line_error():
    result = _run("frobnicate")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "invalid choice" in result.stderr

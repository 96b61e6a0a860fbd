"""The ``tfpipe`` console script, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tfpipe.data.schema import KAGGLE

pytestmark = pytest.mark.cli  # the command line itself: run once, in `make test`

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


HELP = [
    ["tfpipe.cli.main", "train", "--help"], ["tfpipe.cli.main", "predict", "--help"], ["tfpipe.cli.main", "score", "--help"],
    ["tfpipe.cli.main", "blend", "--help"], ["tfpipe.cli.main", "export", "--help"], ["tfpipe.cli.main", "schema", "--help"],
    ["tfpipe.cli.main", "demo", "--help"], ["tfpipe.train", "--help"], ["tfpipe.predict", "--help"],
    ["tfpipe.config", "--help"], ["data_prep.encode", "--help"], ["data_prep.stats", "--help"],
    ["data_prep.synth", "--help"], ["data_prep.download", "--help"], ["tfpipe.cli.main", "sweep", "--help"],
    ["tfpipe.cli.main", "launch", "--help"], ["tfpipe.cli.main", "runs", "ls", "--help"],
    ["tfpipe.cli.main", "export-models", "--help"],
]  # fmt: skip
HELP_PROBE = """
import json, runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code
heavy = [m for m in ("tensorflow", "keras", "jax", "optuna", "ray", "mlflow") if m in sys.modules]
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def test_help_of_every_command_loads_no_tensorflow() -> None:
    """--help is instant: asserted as "TensorFlow and Keras are not imported", not by timing it."""
    for args in HELP:
        result = subprocess.run([sys.executable, "-c", HELP_PROBE, *args], capture_output=True, text=True,
                                timeout=120, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
        probe = json.loads(result.stderr.strip().splitlines()[-1])
        assert probe == {"code": 0, "heavy": []}, (args, probe, result.stderr[-1000:])
        text = result.stdout
        assert "usage:" in text and len(text.splitlines()) > 3, (args, text)
        for option in ("--workdir", "--days", "--start", "--workers"):  # defaults are shown
            if f"  {option} " in text:
                block = text[text.index(f"  {option} ") :].split("\n  -")[0]
                assert "default:" in " ".join(block.split()), (args, option, block)
        if args[:2] in (["tfpipe.cli.main", "score"], ["tfpipe.cli.main", "blend"], ["tfpipe.cli.main", "demo"]):
            assert text.split("\n\n")[1].strip(), f"{args}: no description"  # description paragraph


def test_data_that_is_not_encoded_shards_says_what_it_is(small_raw_tree: Path, tmp_path: Path) -> None:
    cases = {
        str(tmp_path / "nope"): "nope: no such folder",
        str(
            small_raw_tree
        ): "a raw netCDF tree, not encoded shards: run python -m data_prep.encode on it first",
        str(tmp_path / "train.csv"): "a CSV file, not encoded shards: encode it first",
    }
    for data, message in cases.items():
        result = _run("export", "--data", data, "--out", str(tmp_path / "x.parquet"))
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1

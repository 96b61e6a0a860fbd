"""The fault suite of ``tfpipe train`` (issue 23): bad configs, racing trainers, kills at checkpoint writes.

Bad inputs run the real command in a subprocess and assert exit code 2 and one line on stderr naming
the file or key; kill points kill a real trainer where an event (a file appearing) says it is, and
check what a reader, and the next run, find. Runs are the tiny 2-sub-epoch MLP of tests/tiny_runs.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_runs import TINY_CONFIG, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def train(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "tfpipe.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The single stderr line of a refused command (exit 2) that holds every one of ``words``."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


# -- bad configs: one line, exit 2, before training (no TensorFlow needed) ------------------------------


def test_empty_config_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set\n")
    proc = train("--config", str(empty), "--run-dir", str(tmp_path / "run"))
    one_line_error(proc, str(empty), "empty")
    assert not (tmp_path / "run").exists()


def test_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\ndata: {batch_size: 8\nseed: 3\n")
    proc = train("--config", str(bad), "--run-dir", str(tmp_path / "run"))
    one_line_error(proc, str(bad), "line 3")


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("bogus://x", ["bogus://x", "no tracking store"]),
        ("sqlite:////proc/x.db", ["/proc/x.db", "cannot create"]),
    ],
)
def test_bad_tracking_uri_is_one_line_before_training(
    tiny_encoded: Path, tmp_path: Path, uri: str, words: list[str]
) -> None:
    pytest.importorskip("mlflow")
    run = tmp_path / "run"
    proc = train(
        "--config", TINY_CONFIG, *tiny_overrides(tiny_encoded, run),
        "tracking.backend=mlflow", f"tracking.uri={uri}",
    )  # fmt: skip
    one_line_error(proc, "tracking.uri", *words)
    assert not run.exists()


def test_val_fraction_zero_without_val_path_names_the_keys(tiny_encoded: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = train("--config", TINY_CONFIG, *tiny_overrides(tiny_encoded, run), "data.val_fraction=0")
    one_line_error(proc, "data.val_fraction=0", "data.val_path")
    assert not run.exists()

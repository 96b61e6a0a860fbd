"""`make zoo-demo` (examples/zoo-demo.sh, the README's "Experiments" block): the experiment loop in miniature."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_readme import readme_block

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "zoo-demo.sh"


def test_the_readme_shows_the_script_as_it_is() -> None:
    lines = SCRIPT.read_text().splitlines()
    body = [line for line in lines[lines.index("W=${1:-zoo-demo}") :] if line.strip()]
    assert readme_block("## Experiments") == [line for line in body if not line.startswith("#")]


@pytest.mark.slow
@pytest.mark.e2e
def test_sweep_zoo_runs_ls_export_predict_blend_score(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(SCRIPT), "zoo"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=1500)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    outputs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    work = tmp_path / "zoo"
    with sqlite3.connect(work / "sweeps.db") as db:  # the study: 4 complete trials
        states = db.execute("SELECT state FROM trials").fetchall()
    assert sorted(s for (s,) in states) == ["COMPLETE"] * 4
    launch = next(o for o in outputs if "engine" in o)
    assert launch["finished"] == launch["total"] == 3
    assert {r["name"] for r in launch["runs"]} >= {"sq"} and all(r["attempts"] == 1 for r in launch["runs"])
    table = result.stdout[result.stdout.index("run ") :]  # runs ls: a row per run, what differs
    assert all(name in table for name in (r["name"] for r in launch["runs"])) and "finished" in table
    index = json.loads((work / "models" / "models.json").read_text())
    assert len(index["models"]) == 3 and {m["name"] for m in index["models"]} == {
        r["name"] for r in launch["runs"]
    }
    for name in (m["name"] for m in index["models"]):
        assert (work / "pred" / f"{name}.parquet").is_file() and (work / "oof" / f"{name}.parquet").is_file()
    submission = pd.read_parquet(work / "submission.parquet")
    assert submission.shape == (18 * 384, 369)
    score = outputs[-1]
    assert score["pred"].endswith("submission.parquet") and score["n"] == 18 * 384
    assert "nearly constant truth" in result.stdout  # the score explains its near-constant targets

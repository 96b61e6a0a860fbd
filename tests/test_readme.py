"""The README's "How the pipeline fits together" block runs as written, line by line, in a fresh folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_block(heading: str) -> list[str]:
    """The commands of the first ```bash block after ``heading``."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading) :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"no bash block after {heading!r}"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.slow
@pytest.mark.e2e
def test_the_pipeline_block_of_the_readme_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the commands run from a repository root
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    lines = readme_block("## How the pipeline fits together")
    assert len(lines) >= 15
    for line in lines:
        result = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, env=env,
                                timeout=900)  # fmt: skip
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    work = tmp_path / "work"
    submission = pd.read_parquet(work / "submission.parquet")
    truth = pd.read_parquet(work / "test.truth.parquet")
    assert submission.shape == (18 * 384, 369) and set(submission["sample_id"]) == set(truth["sample_id"])
    assert sorted(p.name for p in (work / "runs" / "sq" / "checkpoints").glob("ckpt-*.state.json"))

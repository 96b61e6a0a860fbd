"""Bad input paths are refused before TensorFlow loads: one line, exit code 2, at once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cli  # the commands' checks before TensorFlow loads: run once, in `make test`

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code
heavy = [m for m in ("tensorflow", "keras") if m in sys.modules]
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


@pytest.fixture(scope="module")
def folders(tiny_encoded: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Shards without statistics (manifests and hard links to their part files) and a run folder whose
    best.keras exists."""
    root = tmp_path_factory.mktemp("preflight")
    bare = root / "bare"
    bare.mkdir()
    for manifest in tiny_encoded.glob("manifest-*.json"):
        shutil.copy(manifest, bare)
    for part in tiny_encoded.glob("part-*.tfrecord"):  # readers check that each listed file is whole
        (bare / part.name).hardlink_to(part)
    run = root / "run"
    run.mkdir()
    (run / "best.keras").write_bytes(b"")
    return {"enc": tiny_encoded, "bare": bare, "run": run, "nope": root / "nope"}


CASES = [
    (["tfpipe.cli.main", "train", "--config", "tiny", "data.sources.0.path={nope}", "run_dir={run}/t"], "nope: no such folder"),
    (["tfpipe.train", "--config", "tiny", "data.sources.0.path={bare}", "run_dir={run}/t"],
     "bare/stats.json: statistics file not found"),
    (["tfpipe.cli.main", "train", "--config", "tiny", "data.sources.0.path={enc}", "data.val_path={nope}"], "nope: no such folder"),
    (["tfpipe.cli.main", "predict", "--checkpoint", "{nope}", "--data", "{enc}", "--out", "{run}/p.parquet"],
     "nope/best.keras: no such model file"),
    (["tfpipe.predict", "--checkpoint", "{run}/checkpoints/ckpt-3", "--data", "{enc}", "--out", "{run}/p.parquet"],
     "ckpt-3: no such checkpoint"),
    (["tfpipe.cli.main", "predict", "--checkpoint", "{run}", "--data", "{nope}", "--out", "{run}/p.parquet"], "nope: no such folder"),
    (["tfpipe.cli.main", "predict", "--checkpoint", "{run}", "--data", "{nope}.csv", "--out", "{run}/p.parquet"], "nope.csv: no such file"),
    (["tfpipe.cli.main", "predict", "--models", "{run}", "--data", "{enc}", "--out-dir", "{run}/p"], "no models.json"),
    (["tfpipe.cli.main", "export", "--data", "{nope}", "--out", "{run}/x.parquet"], "nope: no such folder"),
    (["tfpipe.cli.main", "blend", "--pred", "{nope}/a.parquet", "--method", "equal", "--out", "{run}/b.parquet"], "a.parquet: no such file"),
    (["data_prep.stats", "--data", "{nope}", "--out", "{run}/s.json"], "nope: no such folder"),
]  # fmt: skip


@pytest.mark.parametrize("args, message", CASES, ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else None)
def test_a_bad_path_is_one_line_before_tensorflow_loads(folders: dict, args: list[str], message: str) -> None:
    argv = [a.format(**folders) for a in args]
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)  # fmt: skip
    *lines, probe = result.stderr.strip().splitlines()
    assert json.loads(probe) == {"code": 2, "heavy": []}, result.stderr[-2000:]
    assert len(lines) == 1 and ": error: " in lines[0] and message in lines[0], lines

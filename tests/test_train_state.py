"""Training state that must survive a session: gs:// checkpoint rotation, the float16 loss scale,
native error lines, TPU-node checkpoint options and gradient clipping after the all-reduce."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gcs_emulator import HAS_TF_GCS_PLUGIN, NO_TF_GCS_PLUGIN
from tiny_runs import TINY_CONFIG, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def _train(*args: str, env: dict | None = None) -> dict:
    """``python -m tfpipe.train ARGS --quiet`` in a child process; its summary (exit 0 asserted)."""
    result = subprocess.run([sys.executable, "-m", "tfpipe.train", "--config", TINY_CONFIG, *args, "--quiet"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not HAS_TF_GCS_PLUGIN, reason=NO_TF_GCS_PLUGIN)
def test_gs_resume_keeps_the_checkpoints_of_earlier_sessions(tiny_encoded: Path, gcs, tmp_path: Path) -> None:
    """keep_checkpoints 3, two sessions of 2 sub-epochs on gs://: ckpt-2, 3 and 4 stay, as in a local dir."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_storage

    gcs.create_bucket("state-bucket")
    env = {**os.environ, **gcs.env(), "TMPDIR": str(tmp_path)}
    args = [*tiny_overrides(tiny_encoded, None, "epochs=2", "keep_checkpoints=3"),
            "--run-dir", "gs://state-bucket/run", "--stop-after-sub-epochs", "2"]  # fmt: skip
    assert _train(*args, env=env)["resumed_from"] is None
    assert _train(*args, env=env)["resumed_from"] == "ckpt-2"
    client = gcs_storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs.endpoint}
    )
    names = {
        b.name.removeprefix("run/checkpoints/")
        for b in client.list_blobs("state-bucket", prefix="run/checkpoints/")
    }
    kept = sorted({int(n.split(".")[0][5:]) for n in names if n.startswith("ckpt-") and n.endswith(".index")})
    states = sorted({int(n.split(".")[0][5:]) for n in names if n.endswith(".state.json")})
    index = client.bucket("state-bucket").blob("run/checkpoints/checkpoint").download_as_text()
    assert kept == states == [2, 3, 4], sorted(names)
    assert all(any(n.startswith(f"ckpt-{k}.data-") for n in names) for k in kept), sorted(names)
    assert [f'"ckpt-{k}"' in index for k in (1, 2, 3, 4)] == [False, True, True, True], index

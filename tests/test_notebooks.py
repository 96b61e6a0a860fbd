"""notebooks/01-03 executed on the CPU with papermill, on a local folder and on the GCS emulator.

Each run starts a fresh kernel from an explicit kernel spec (this interpreter, so a fresh clone's
.venv works without ``ipykernel install``), injects parameters after the cell tagged ``parameters``
and reads back the JSON summary the last cell prints. The install cell runs as shipped: it installs
the wheel that ``make wheel`` built (in the environment under test) into a private folder, and the
notebook imports tfpipe from there. The GCS kernels get
``gcs.env()`` in their environment before anything imports TensorFlow.

On the emulator, DST (01), RUN_DIR (02, 03) and OUT (03) are gs:// paths; DATA for training and
prediction stays local, because the tensorflow-io plugin's reads of multi-MB TFRecord files from
fake-gcs-server crash the reading process (SIGSEGV/SIGABRT) in a good part of runs, even through the
emulator's pacing relay.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import papermill
import pyarrow.parquet as pq
import pytest
from gcs_emulator import HAS_TF_GCS_PLUGIN, NO_TF_GCS_PLUGIN, GcsEmulator
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from tfpipe.data.schema import get_schema

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = ("01_encode_shard", "02_train_tpu", "03_predict_submit")
KERNEL = "tfpipe-test"
BUCKET = "tfpipe-notebooks"
STEPS = 36  # half a day of 20-minute steps: with notebook 01's 16 blocks per file, fewer training
# files than the tiny config's 4 sub-epochs (each shard writes files of 16 and 2 blocks)
SAMPLES = STEPS * 384
TRAIN_OVERRIDES = ["model.name=mlp", "model.mlp_units=[32,32]", "epochs=1"]  # else the tiny config as shipped
WARNING = re.compile(r"\b\w*Warning: ")  # a Python warning printed in a cell's output
# TensorFlow's native start-up lines (absl/XLA INFO, oneDNN notices) that would fill a notebook's output
NATIVE_NOISE = re.compile(r"^[IW]\d{4} \d\d:\d\d|oneDNN custom operations|absl::InitializeLog", re.M)


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A kernel spec that runs this interpreter's ipykernel."""
    root = tmp_path_factory.mktemp("kernels")
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tfpipe tests",
        "language": "python",
    }
    (root / KERNEL).mkdir()
    (root / KERNEL / "kernel.json").write_text(json.dumps(spec))
    return [str(root)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make wheel`` with this interpreter's environment, into a fresh folder."""
    dist = tmp_path_factory.mktemp("dist")
    venv = Path(sys.executable).parents[1]
    result = subprocess.run(["make", "-s", "wheel", f"VENV={venv}", f"DIST={dist}"], cwd=REPO, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (built,) = dist.glob("tfpipe-*-py3-none-any.whl")
    return built


def load(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def run_notebook(
    name: str, params: dict, out_dir: Path, kernel_dirs: list[str], env: dict | None = None, tag: str = ""
) -> dict:
    """Execute ``name`` as shipped, installing ``params["TFPIPE"]`` into a private folder; returns the
    JSON its last cell prints, plus ``installed_from`` (the install cell's line)."""
    nb = load(name)
    target = out_dir / f"site-{name}{tag}"
    params = {"PIP_ARGS": f"--no-deps --upgrade --target {target}", **params}
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs))
    # as on Colab or Kaggle: no TF_CPP_MIN_LOG_LEVEL of our own (importing tfpipe sets what the notebooks need)
    kernel_env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    km.start_kernel(env={**kernel_env, **(env or {})}, cwd=str(NOTEBOOKS))
    try:
        done = papermill.execute_notebook(
            nb, str(out_dir / f"{name}{tag}.ipynb"), parameters=params, km=km, kernel_name=KERNEL,
            progress_bar=False, start_timeout=120, execution_timeout=300,
        )  # fmt: skip
    finally:
        km.shutdown_kernel(now=True)
    printed = [o.text for c in done.cells for o in c.get("outputs", []) if o.output_type == "stream"]
    assert not [t for t in printed if WARNING.search(t)], [t for t in printed if WARNING.search(t)]
    assert not [t for t in printed if NATIVE_NOISE.search(t)], [t for t in printed if NATIVE_NOISE.search(t)]
    stdout = [o.text for o in done.cells[-1].outputs if o.output_type == "stream" and o.name == "stdout"]
    install = next(c for c in done.cells if "install" in c.metadata.get("tags", []))
    line = "".join(o.get("text", "") for o in install.outputs if o.output_type == "stream").strip()
    assert line.startswith("tfpipe ") and f" from {target}/tfpipe/__init__.py" in line, line
    return json.loads("".join(stdout)) | {"installed_from": line}


@pytest.mark.scenario
def test_notebook_structure() -> None:
    """A literal-only parameters cell first, the install cell next, then calls only (no logic)."""
    for name in NAMES:
        code = [c for c in load(name).cells if c.cell_type == "code"]
        tags = [c.metadata.get("tags", []) for c in code]
        assert tags[0] == ["parameters"] and tags[1] == ["install"], name
        assert sum("parameters" in t for t in tags) == 1 and sum("install" in t for t in tags) == 1, name
        assert '"pip", "install"' in code[1].source and "/kaggle/input/" in code[1].source, name
        assert "github.com" not in code[1].source and "YOUR" not in code[0].source, name  # no placeholders
        for stmt in ast.parse(code[0].source).body:
            assert isinstance(stmt, ast.Assign) and stmt.targets[0].id.isupper(), name
            ast.literal_eval(stmt.value)  # papermill parameters are plain literals
        for cell in code[2:]:
            calls_only = (ast.Import, ast.ImportFrom, ast.Assign, ast.Expr)
            logic = (ast.IfExp, ast.Lambda, ast.comprehension, ast.BoolOp)
            for stmt in ast.parse(cell.source).body:
                assert isinstance(stmt, calls_only), (name, cell.source)
                assert not any(isinstance(n, logic) for n in ast.walk(stmt)), (name, cell.source)


@pytest.fixture(scope="module")
def half_day(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw tree of half a day (36 steps)."""
    from data_prep.synth import synthesize

    out = tmp_path_factory.mktemp("half-day") / "raw"
    synthesize(out, days=STEPS / 72, start="0001-01-31", seed=0)
    return out


@pytest.fixture(scope="module")
def local_run(
    half_day: Path, tmp_path_factory: pytest.TempPathFactory, kernel_dirs: list[str], wheel: Path
) -> dict:
    """01 for shards 0 and 1, 02 twice (one sub-epoch, then the other three), 03; all on a local folder,
    with the notebooks' defaults (16 blocks per file; the tiny config's 4 sub-epochs)."""
    root = tmp_path_factory.mktemp("notebooks-local")
    enc, run, out = root / "encoded", root / "run", root / "submission.parquet"
    res: dict = {"root": root, "encoded": enc, "run": run, "out": out}
    for shard in (0, 1):
        res[f"encode{shard}"] = run_notebook(
            "01_encode_shard",
            dict(SHARD=shard, NUM_SHARDS=2, SRC=str(half_day), DST=str(enc), WORKERS=1, PROGRESS=False,
                 TFPIPE=str(wheel)),
            root, kernel_dirs, tag=f"-{shard}",
        )  # fmt: skip
    for session, stop in ((1, 1), (2, None)):
        res[f"train{session}"] = run_notebook(
            "02_train_tpu",
            dict(CONFIG="tiny", DATA=str(enc), RUN_DIR=str(run), TIME_BUDGET="1h", OVERRIDES=TRAIN_OVERRIDES,
                 STOP_AFTER_SUB_EPOCHS=stop, VERBOSE=0, TFPIPE=str(wheel)),
            root, kernel_dirs, tag=f"-{session}",
        )  # fmt: skip
    res["predict"] = run_notebook(
        "03_predict_submit",
        dict(RUN_DIR=str(run), CHECKPOINT="best.keras", DATA=str(enc), OUT=str(out), WEIGHTS=None, TFPIPE=str(wheel)),
        root, kernel_dirs,
    )  # fmt: skip
    return res


@pytest.mark.scenario
def test_encode_notebook_local(local_run: dict) -> None:
    first, last, enc = local_run["encode0"], local_run["encode1"], local_run["encoded"]
    assert first["stats"] == {"stats": str(enc / "stats.json"), "written": False, "missing_shards": [1]}
    assert last["stats"]["written"] and last["stats"]["samples"] == SAMPLES
    assert first["encode"]["samples"] + last["encode"]["samples"] == SAMPLES
    assert not first["encode"]["skipped"] and last["encode"]["num_shards"] == 2
    assert sorted(p.name for p in enc.glob("manifest-*")) == [
        "manifest-00000-of-00002.json",
        "manifest-00001-of-00002.json",
    ]
    assert (enc / "grid-info.nc").is_file() and json.loads((enc / "stats.json").read_text())


@pytest.mark.scenario
def test_train_notebook_resumes_local(local_run: dict) -> None:
    first, second, run = local_run["train1"], local_run["train2"], local_run["run"]
    assert first["resumed_from"] is None and first["sub_epochs_run"] == 1 and not first["finished"]
    assert first["stopped"] == "stop-after-sub-epochs" and first["next"] == {"epoch": 0, "sub_epoch": 1}
    assert second["resumed_from"] == "ckpt-1" and second["sub_epochs_run"] == 3 and second["finished"]
    assert second["next"] == {"epoch": 1, "sub_epoch": 0} and second["step"] > first["step"] > 0
    assert first["strategy"] == "default" and first["precision"] == "float32"
    assert (run / "checkpoints" / "ckpt-4.index").is_file() and (run / "best.keras").is_file()
    assert len((run / "metrics.csv").read_text().splitlines()) == 5  # header + one row per sub-epoch


@pytest.mark.scenario
def test_the_notebook_defaults_on_half_a_day_leave_fewer_files_than_sub_epochs(local_run: dict) -> None:
    """What the chain above proves: sub-epochs no longer need one training file each."""
    from tfpipe.config import load_config
    from tfpipe.data.manifest import read_manifests
    from tfpipe.data.sampling import DataFile, split_files

    data = load_config("tiny").data
    manifests = read_manifests(str(local_run["encoded"]))
    files = [DataFile(f.name, f.samples) for m in manifests for f in m.files]
    train, _ = split_files(files, data.val_fraction, data.val_split)
    assert len(train) < data.sub_epochs == 4 and "data.sub_epochs=4" not in TRAIN_OVERRIDES


def _check_submission(table, rows: int) -> None:
    schema = get_schema("kaggle")
    assert table.num_rows == rows
    assert table.column_names == ["sample_id", *schema.target_columns]
    values = np.column_stack([table.column(c).to_numpy() for c in schema.target_columns])
    assert values.dtype == np.float64 and np.isfinite(values).all()


@pytest.mark.scenario
def test_predict_notebook_local(local_run: dict) -> None:
    summary = local_run["predict"]
    assert summary["out"] == str(local_run["out"]) and summary["rows"] == SAMPLES
    assert summary["columns"] == 1 + get_schema("kaggle").n_targets
    _check_submission(pq.read_table(local_run["out"]), SAMPLES)


@pytest.mark.skipif(not HAS_TF_GCS_PLUGIN, reason=NO_TF_GCS_PLUGIN)
def test_notebooks_on_gcs_emulator(
    gcs: GcsEmulator, half_day: Path, local_run: dict, kernel_dirs: list[str], tmp_path: Path, wheel: Path
) -> None:
    """01 encodes to gs:// (and writes stats there), 02 trains twice into a gs:// RUN_DIR, 03 writes gs://."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_storage

    gcs.create_bucket(BUCKET)
    client = gcs_storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs.endpoint}
    )
    env = {**gcs.env(), "TFPIPE_GCS_DEADLINE_S": "30"}
    dst, run_dir, out = f"gs://{BUCKET}/encoded", f"gs://{BUCKET}/run", f"gs://{BUCKET}/submission.parquet"
    for shard in (0, 1):
        summary = run_notebook(
            "01_encode_shard",
            dict(SHARD=shard, NUM_SHARDS=2, SRC=str(half_day), DST=dst, WORKERS=1, PROGRESS=False,
                 TFPIPE=str(wheel)),
            tmp_path, kernel_dirs, env, tag=f"-{shard}",
        )  # fmt: skip
        assert summary["encode"]["dst"] == dst and not summary["encode"]["skipped"]
        assert summary["encode"]["samples"] == local_run[f"encode{shard}"]["encode"]["samples"]
    stats = {"stats": f"{dst}/stats.json", "written": True, "missing_shards": [], "samples": SAMPLES}
    assert summary["stats"] == stats

    # The same bytes on gs:// as in the local run: every TFRecord file, the grid and the statistics.
    local = local_run["encoded"]
    blobs = {b.name.split("/", 1)[1]: b for b in client.list_blobs(BUCKET, prefix="encoded/")}
    expected = {p.name for p in local.iterdir() if p.suffix in (".tfrecord", ".nc") or p.name == "stats.json"}
    assert expected and expected <= set(blobs)
    assert {n for n in blobs if n.startswith("manifest-")} == {p.name for p in local.glob("manifest-*")}
    for name in expected:
        md5 = base64.b64encode(hashlib.md5((local / name).read_bytes()).digest()).decode()
        assert blobs[name].md5_hash == md5, name

    # 02 twice with RUN_DIR on gs:// (DATA local: see the module docstring); the second run resumes.
    for session, resumed in ((1, None), (2, "ckpt-1")):
        summary = run_notebook(
            "02_train_tpu",
            dict(CONFIG="tiny", DATA=str(local), RUN_DIR=run_dir, TIME_BUDGET="1h",
                 OVERRIDES=[*TRAIN_OVERRIDES, "data.sub_epochs=2"], STOP_AFTER_SUB_EPOCHS=1, VERBOSE=0,
                 TFPIPE=str(wheel)),
            tmp_path, kernel_dirs, env, tag=f"-{session}",
        )  # fmt: skip
        assert summary["run_dir"] == run_dir and summary["resumed_from"] == resumed
        assert summary["sub_epochs_run"] == 1 and summary["finished"] == (session == 2)
    names = {b.name.split("/", 1)[1] for b in client.list_blobs(BUCKET, prefix="run/")}
    for name in (
        "config.yaml",
        "metrics.csv",
        "best.keras",
        "checkpoints/checkpoint",
        "checkpoints/ckpt-2.index",
    ):
        assert name in names, sorted(names)

    # 03 reads the run from gs:// and writes the submission there.
    summary = run_notebook(
        "03_predict_submit",
        dict(RUN_DIR=run_dir, CHECKPOINT="best.keras", DATA=str(local), OUT=out, WEIGHTS=None, TFPIPE=str(wheel)),
        tmp_path, kernel_dirs, env,
    )  # fmt: skip
    assert summary["out"] == out and summary["rows"] == SAMPLES
    client.bucket(BUCKET).blob("submission.parquet").download_to_filename(str(tmp_path / "sub.parquet"))
    _check_submission(pq.read_table(tmp_path / "sub.parquet"), SAMPLES)

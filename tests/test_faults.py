"""The fault suite: bad inputs and kill points, each with its promise checked.

Every bad-input case runs the real command in a subprocess and asserts: exit code 2, one line on
stderr that names the file and the problem, and committed outputs unchanged (sha256 of every file
before and after). The kill points kill real processes and assert what a reader, or the next run of
the same command, finds. The README's "Reliability" section counts and lists them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import pytest

from data_prep.encode import EncodeConfig, encode_shard, list_raw_pairs
from data_prep.stats import compute_stats
from tfpipe.data.manifest import read_manifests

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def run(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative names)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def encode(src: Path, dst: Path, shards: int = 1, **kw) -> Path:
    for i in range(shards):
        encode_shard(EncodeConfig(str(src), str(dst), i, shards, blocks_per_file=1, progress=False, **kw))
    return dst


@pytest.fixture(scope="module")
def good(small_raw_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete 3-shard set (4 steps) with its statistics."""
    dst = encode(small_raw_tree, tmp_path_factory.mktemp("faults") / "good", shards=3)
    (dst / "stats.json").write_text(compute_stats(str(dst)).to_json())
    return dst


@pytest.fixture(scope="module")
def csv_files(small_raw_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Kaggle-layout test.csv and its broken variants (an extra field, a NaN, swapped columns)."""
    from tfpipe.data.schema import KAGGLE
    from tfpipe.evaluate.export import export_parquet

    folder = tmp_path_factory.mktemp("csv")
    frame = pd.read_parquet(
        export_parquet(str(encode(small_raw_tree, folder / "enc")), str(folder / "x.parquet"))["out"]
    )
    frame = frame[["sample_id", *KAGGLE.input_columns]].iloc[:600]
    good = folder / "test.csv"
    frame.to_csv(good, index=False, float_format="%.17g")
    lines = good.read_text().splitlines()
    (folder / "extra-field.csv").write_text("\n".join(lines[:5] + [lines[5] + ",1.0"] + lines[6:]) + "\n")
    nan = frame.copy()
    nan.iloc[3, 7] = np.nan
    nan.to_csv(folder / "nan.csv", index=False)
    frame.rename(columns={"state_t_0": "state_T_0"}).to_csv(folder / "bad-header.csv", index=False)
    return {p.stem: p for p in folder.glob("*.csv")}


@pytest.fixture(scope="module")
def trained(good: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MLP run with two checkpoints (ckpt-1, ckpt-2) on the good set."""
    run_dir = tmp_path_factory.mktemp("faults-run") / "run"
    result = run("-m", "tfpipe.train", *train_args(good, run_dir), "--stop-after-sub-epochs", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def train_args(data: Path, run_dir: Path) -> list[str]:
    return ["--config", "configs/tiny.yaml", f"data.sources.0.path={data}", "model.name=mlp", "model.mlp_units=[32]",
            "data.batch_size=64", "data.sub_epochs=2", "epochs=2", "data.val_fraction=0.3", "--run-dir", str(run_dir),
            "--quiet", "--deterministic"]  # fmt: skip


# ------------------------------------------------------------------ bad inputs: a table


@dataclass
class Case:
    name: str
    command: Callable[[dict], list[str]]
    """Arguments after the Python executable, from the case's paths."""
    message: Callable[[dict], list[str]]
    """What the one line of stderr must contain (the file and the problem)."""
    committed: str = "dst"
    """The folder whose files must be unchanged."""


def encode_cmd(src: str, dst: str, *extra: str, shards: int = 3) -> list[str]:
    return ["-m", "data_prep.encode", "--src", src, "--dst", dst, "--shard", "0", "--num-shards", str(shards),
            "--blocks-per-file", "1", "--no-progress", *extra]  # fmt: skip


CASES = [
    Case("overwrite from a truncated source keeps the committed shard",
         lambda p: encode_cmd(p["truncated_tree"], p["dst"], "--overwrite"),
         lambda p: [p["truncated_mli"]]),
    Case("other --schema on a complete shard",
         lambda p: encode_cmd(p["tree"], p["dst"], "--schema", "v1"),
         lambda p: ["manifest-00000-of-00003.json", "--schema 'kaggle' vs 'v1'", "--overwrite"]),
    Case("other --stride on a complete shard",
         lambda p: encode_cmd(p["tree"], p["dst"], "--stride", "2"),
         lambda p: ["manifest-00000-of-00003.json", "--stride 1 vs 2", "--overwrite"]),
    Case("other --src on a complete shard",
         lambda p: encode_cmd(p["tree_copy"], p["dst"]),
         lambda p: ["manifest-00000-of-00003.json", "--src", "another --dst"]),
    Case("another --num-shards into the same folder",
         lambda p: encode_cmd(p["tree"], p["dst"], shards=2),
         lambda p: ["manifest-0000", "--num-shards 3 vs 2", "another --dst"]),
    Case("a missing variable", lambda p: encode_cmd(p["renamed_tree"], p["fresh"]),
         lambda p: [p["renamed_mli"], "missing variable state_t"], "fresh"),
    Case("NaN in a raw file", lambda p: encode_cmd(p["nan_tree"], p["fresh"]),
         lambda p: [p["nan_mli"], "NaN/Inf"], "fresh"),
    Case("a Kaggle CSV row with an extra field",
         lambda p: encode_cmd(p["csv"]["extra-field"], p["fresh"], "--format", "kaggle-csv"),
         lambda p: ["extra-field.csv", "row 5 has", "fields, the header has"], "fresh"),
    Case("a Kaggle CSV with swapped column names",
         lambda p: encode_cmd(p["csv"]["bad-header"], p["fresh"], "--format", "kaggle-csv"),
         lambda p: ["bad-header.csv", "state_T_0"], "fresh"),
    Case("an invalid bucket name", lambda p: encode_cmd(p["tree"], "gs://Bad_Bucket!!/x"),
         lambda p: ["gs://Bad_Bucket!!/x", "not a valid bucket name"]),
    Case("gs:// without credentials", lambda p: encode_cmd("gs://some-bucket/raw", p["fresh"]),
         lambda p: ["gs://some-bucket/raw", "cannot create a GCS client"], "fresh"),
    Case("statistics of an incomplete shard set",
         lambda p: ["-m", "data_prep.stats", "--data", p["partial"], "--out", p["partial"] + "/s.json"],
         lambda p: ["manifest-00001-of-00003.json", "1 of 3 shards are missing", "--allow-partial"], "partial"),
    Case("statistics of a folder that mixes two shard sets",
         lambda p: ["-m", "data_prep.stats", "--data", p["mixed"], "--out", p["mixed"] + "/s.json"],
         lambda p: ["not one shard set", "--num-shards 2 vs 3"], "mixed"),
    Case("export of a folder that does not exist",
         lambda p: ["-m", "tfpipe.cli.main", "export", "--data", p["fresh"] + "/nope", "--out", p["fresh"] + "/x.parquet"],
         lambda p: ["/nope: no such folder"], "fresh"),
    Case("train on an incomplete shard set",
         lambda p: ["-m", "tfpipe.train", *train_args(Path(p["partial"]), Path(p["fresh"]) / "run")],
         lambda p: ["1 of 3 shards are missing", "--allow-partial"], "partial"),
    Case("predict a CSV with an extra field",
         lambda p: ["-m", "tfpipe.predict", "--checkpoint", p["model"], "--data", p["csv"]["extra-field"],
                    "--out", p["fresh"] + "/p.parquet"],
         lambda p: ["extra-field.csv", "row 5 has"], "run"),
    Case("predict a CSV with a NaN",
         lambda p: ["-m", "tfpipe.predict", "--checkpoint", p["model"], "--data", p["csv"]["nan"],
                    "--out", p["fresh"] + "/p.parquet"],
         lambda p: ["nan.csv", "row 4", "fill or remove such rows"], "run"),
]  # fmt: skip


@pytest.fixture(scope="module")
def paths(good: Path, small_raw_tree: Path, csv_files: dict, trained: Path, tmp_path_factory) -> dict:
    """Broken inputs, built once: trees with one bad file, partial and mixed shard sets."""
    base = tmp_path_factory.mktemp("fault-inputs")
    out = {"tree": str(small_raw_tree), "csv": {k: str(v) for k, v in csv_files.items()}, "run": str(trained)}
    out["model"] = str(trained / "best.keras")
    for name, damage in (("truncated", _truncate), ("renamed", _rename_variable), ("nan", _add_nan)):
        tree = base / name
        shutil.copytree(small_raw_tree, tree)
        mli = Path(list_raw_pairs(str(tree), 1)[0][0])
        damage(mli)
        out[f"{name}_tree"], out[f"{name}_mli"] = str(tree), mli.name
    shutil.copytree(small_raw_tree, base / "tree-copy")
    out["tree_copy"] = str(base / "tree-copy")
    partial = base / "partial"
    shutil.copytree(good, partial)
    (partial / "manifest-00001-of-00003.json").unlink()
    out["partial"] = str(partial)
    mixed = base / "mixed"
    shutil.copytree(good, mixed)
    encode(small_raw_tree, base / "two", shards=2)
    shutil.copy(base / "two" / "manifest-00000-of-00002.json", mixed)
    out["mixed"] = str(mixed)
    return out


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:5000])


def _rename_variable(path: Path) -> None:
    with netCDF4.Dataset(path, "a") as ds:
        ds.renameVariable("state_t", "state_T")


def _add_nan(path: Path) -> None:
    with netCDF4.Dataset(path, "a") as ds:
        t = ds["state_t"][:]
        t[5, 17] = np.nan
        ds["state_t"][:] = t


@pytest.mark.cli
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_one_line_exit_2_nothing_committed_changes(
    case: Case, paths: dict, good: Path, tmp_path: Path
) -> None:
    p = dict(paths, dst=str(tmp_path / "dst"), fresh=str(tmp_path / "fresh"))
    shutil.copytree(good, p["dst"])
    Path(p["fresh"]).mkdir()
    committed = Path(p[case.committed])
    before = digest(committed)
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "no-key.json"), "STORAGE_EMULATOR_HOST": ""}
    result = run(*case.command(p), env=env)
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("[train]")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and ": error: " in lines[0], result.stderr[-2000:]
    for part in case.message(p):
        assert part in lines[0], (part, lines[0])
    assert digest(committed) == before
    if case.committed == "dst":
        assert len(read_manifests(p["dst"])) == 3  # still one complete, readable set


@pytest.mark.cli
def test_a_partial_set_is_used_when_allowed_and_named(paths: dict, tmp_path: Path) -> None:
    result = run(
        "-m",
        "data_prep.stats",
        "--data",
        paths["partial"],
        "--out",
        str(tmp_path / "s.json"),
        "--allow-partial",
    )
    assert result.returncode == 0, result.stderr
    assert "1 of 3 shards are missing (manifest-00001-of-00003.json)" in result.stderr
    assert (
        json.loads(result.stdout.strip().splitlines()[-1])["count"] == 3 * 384
    )  # shards 0 and 2 of [0, 3], [1], [2]


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(
    trained: Path, good: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    data = next((run_dir / "checkpoints").glob("ckpt-2.data-*"))
    data.write_bytes(data.read_bytes()[:100])
    strict = run("-m", "tfpipe.train", *train_args(good, run_dir), "--no-fallback")
    assert strict.returncode == 2 and "ckpt-2.index / .data-*: cannot be restored" in strict.stderr
    result = run("-m", "tfpipe.train", *train_args(good, run_dir), "--stop-after-sub-epochs", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        "ckpt-2.index / .data-*: cannot be restored" in result.stderr
        and "resuming from ckpt-1" in result.stderr
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"] == "ckpt-1" and summary["next"] == {"epoch": 1, "sub_epoch": 0}
    # an unreadable state record falls back the same way
    (run_dir / "checkpoints" / "ckpt-2.state.json").write_text("{not json")
    again = run("-m", "tfpipe.train", *train_args(good, run_dir), "--stop-after-sub-epochs", "1")
    assert again.returncode == 0 and "ckpt-2.state.json: cannot read" in again.stderr, again.stderr[-2000:]


# ------------------------------------------------------------------ kill points


def processes_with(marker: str) -> list[int]:
    """PIDs of live processes whose environment holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    state = (entry / "stat").read_text().split(")")[-1].split()[0]
                    if state != "Z":
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find processes")
@pytest.mark.scenario
def test_kill_9_of_encode_with_workers_leaves_no_process(raw_tree: Path, tmp_path: Path) -> None:
    marker = f"TFPIPE_FAULT_MARK={uuid.uuid4().hex}"
    key, value = marker.split("=")
    proc = subprocess.Popen(
        [PY, "-m", "data_prep.encode", "--src", str(raw_tree), "--dst", str(tmp_path / "enc"), "--shard", "0",
         "--num-shards", "1", "--workers", "2", "--no-progress"],
        cwd=ROOT, env={**os.environ, key: value}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(processes_with(marker)) < 3 and time.monotonic() < deadline:  # parent + 2 workers (+ tracker)
        time.sleep(0.1)
    assert len(processes_with(marker)) >= 3, "the workers never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_with(marker) == []  # workers and multiprocessing's resource tracker are gone
    assert not list((tmp_path / "enc").glob("manifest-*"))


STARTUP_PAUSED = """
import sys, time
from pathlib import Path
from tfpipe.console import quiet_native_logs
quiet_native_logs()  # first, as the command line does: TensorFlow's start-up lines stay out
import tfpipe.train.loop as loop
from tfpipe.cli.main import train_main

def open_session(*args, **kwargs):  # start-up: TensorFlow loaded, nothing written; the test's SIGTERM comes here
    Path(sys.argv[1]).touch()
    while True:
        time.sleep(0.01)

loop.open_session = open_session
sys.exit(train_main(sys.argv[2:], prog="python -m tfpipe.train"))
"""


@pytest.mark.scenario
def test_sigterm_during_start_up_is_one_line(good: Path, tmp_path: Path) -> None:
    marker = tmp_path / "starting"
    proc = subprocess.Popen([PY, "-c", STARTUP_PAUSED, str(marker), *train_args(good, tmp_path / "run")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not marker.exists():  # the event: start-up reached, not a guess at how long imports take
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and out == "", err[-2000:]
    assert err.strip().splitlines()[-1] == (
        "python -m tfpipe.train: stopped by SIGTERM (nothing half-written was published)"
    )
    assert "Traceback" not in err and not (tmp_path / "run").exists()


SIGNALS_AFTER_MAIN = """
import json, signal, sys
from tfpipe.cli import main as cli

def mine(signum, frame):
    pass

for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, mine)
codes = [cli.main(["schema", "--name", "v1"]), cli.main(["train", "--config", sys.argv[1]]),
         cli.main(["predict", "--checkpoint", sys.argv[1], "--data", sys.argv[1], "--out", sys.argv[1]]),
         cli.train_main(["--config", sys.argv[1]])]
kept = [signal.getsignal(sig) is mine for sig in (signal.SIGTERM, signal.SIGINT)]
print(json.dumps({"codes": codes, "kept": kept}))
"""


@pytest.mark.cli
def test_cli_main_puts_back_the_callers_signal_handlers(tmp_path: Path) -> None:
    """cli.main called in-process (a notebook, a script) leaves SIGTERM and SIGINT as it found them."""
    result = subprocess.run([PY, "-c", SIGNALS_AFTER_MAIN, str(tmp_path / "nope.yaml")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"codes": [0, 2, 2, 2], "kept": [True, True]}


SIGTERM_IN_NATIVE_IMPORT = """
import os, signal, sys
import tfpipe.cli.main as cli, tfpipe.config as config

def load_config(*args, **kwargs):  # a SIGTERM while TensorFlow's native module initialises:
    try:                           # pybind11 turns the handler's SystemExit into an ImportError
        os.kill(os.getpid(), signal.SIGTERM)
    except SystemExit:
        raise ImportError("initialization failed") from None

config.load_config = load_config
sys.exit(cli.train_main(["--config", "tiny"], prog="tfpipe train"))
"""


@pytest.mark.scenario
def test_sigterm_inside_a_native_import_is_still_one_line() -> None:
    """The CI race of the test above, made deterministic: the signal's exit, not an ImportError traceback."""
    result = subprocess.run([PY, "-c", SIGTERM_IN_NATIVE_IMPORT], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 143, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "tfpipe train: stopped by SIGTERM (nothing half-written was published)"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.scenario
def test_leftovers_of_killed_runs_are_removed_by_the_next_run(good: Path, trained: Path, small_raw_tree: Path,
                                                             tmp_path: Path) -> None:  # fmt: skip
    # encode: a manifest temp, a file temp and a published file of an abandoned attempt
    enc = tmp_path / "enc"
    shutil.copytree(good, enc)
    before = digest(enc)
    left = [enc / ".manifest-00000-of-00003.json.123-abcd.tfpipe-tmp", enc / ".part-00000-of-00003-00000.tmp-99",
            enc / "part-00000-of-00003-00000-deadbeef.tfrecord"]  # fmt: skip
    for path in left:
        path.write_bytes(b"left by a kill")
    other_shard_temp = enc / ".manifest-00001-of-00003.json.456-ef01.tfpipe-tmp"  # another writer's: kept
    other_shard_temp.write_bytes(b"in progress elsewhere")
    result = run(*encode_cmd(str(small_raw_tree), str(enc)))
    assert result.returncode == 0 and json.loads(result.stdout.strip().splitlines()[-1])["skipped"]
    assert not any(p.exists() for p in left) and other_shard_temp.exists()
    other_shard_temp.unlink()
    assert digest(enc) == before
    # train: TF's ckpt-N_temp folder and temporary files of atomic writes
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    junk = [
        run_dir / "checkpoints" / "ckpt-3_temp",
        run_dir / ".best.keras.x1.tfpipe-tmp.keras",
        run_dir / ".metrics.csv.9-ab.tfpipe-tmp",
        run_dir / "checkpoints" / ".ckpt-3.state.json.1-2.tfpipe-tmp",
    ]
    junk[0].mkdir()
    (junk[0] / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half")
    for path in junk[1:]:
        path.write_bytes(b"")
    result = run("-m", "tfpipe.train", *train_args(good, run_dir), "--stop-after-sub-epochs", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not any(p.exists() for p in junk)


@pytest.mark.cli
def test_published_files_are_readable_by_others(trained: Path, good: Path, tmp_path: Path) -> None:
    for path in (
        trained / "best.keras",
        trained / "config.yaml",
        trained / "stats.json",
        trained / "metrics.csv",
    ):
        assert path.stat().st_mode & 0o044 == 0o044, (path, oct(path.stat().st_mode))
    result = run("-m", "tfpipe.predict", "--checkpoint", str(trained), "--data", str(good), "--out",
                 str(tmp_path / "p.parquet"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "p.parquet").stat().st_mode & 0o044 == 0o044

"""The fault suite of ``tfpipe train`` (issue 23): bad configs, racing trainers, kills at checkpoint writes.

Bad inputs run the real command in a subprocess and assert exit code 2 and one line on stderr naming
the file or key; kill points kill a real trainer where an event (a file appearing) says it is, and
check what a reader, and the next run, find. Runs are the tiny 2-sub-epoch MLP of tests/tiny_runs.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
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
    """The single stderr line (besides ``[train]`` progress lines) of a command that failed with exit 2,
    holding every one of ``words``."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("[train] ")]
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


# -- item 1: the run dir is claimed atomically -----------------------------------------------------------

HOLD_CLAIM = """
import sys
import time
import uuid
from tfpipe.train.claim import Claim
claim = Claim(sys.argv[1])
print("held", flush=True)
sys.stdin.read()
"""


@pytest.mark.scenario
def test_claim_of_a_killed_holder_does_not_block_and_a_live_one_refuses(tmp_path: Path) -> None:
    from tfpipe.train.claim import Claim, RunDirBusy

    run = str(tmp_path / "run")
    holder = subprocess.Popen(
        [PY, "-c", HOLD_CLAIM, run], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunDirBusy, match=rf"train\.lock: .* pid {holder.pid}"):
        Claim(run)
    holder.kill()  # SIGKILL: the kernel drops its lock
    holder.wait()
    with Claim(run):
        with pytest.raises(RunDirBusy):
            Claim(run)
    Claim(run).release()


@pytest.fixture
def gcs_env(gcs, monkeypatch: pytest.MonkeyPatch):
    from tfpipe import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    monkeypatch.setenv("TFPIPE_GCS_DEADLINE_S", "5")
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    storage.reset_clients()
    yield gcs
    storage.reset_clients()


def test_gcs_claim_is_exclusive_and_a_dead_owners_claim_is_taken_over(gcs_env) -> None:
    import socket

    from tfpipe import storage
    from tfpipe.train.claim import Claim, RunDirBusy, claim_path

    bucket = f"claim-{uuid.uuid4().hex[:8]}"
    gcs_env.create_bucket(bucket)
    run = f"gs://{bucket}/runs/a"
    gone = subprocess.run([PY, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = {"host": socket.gethostname(), "pid": int(gone.stdout), "time": time.time(), "token": "x"}
    storage.write_bytes(claim_path(run), json.dumps(dead).encode())
    other = {"host": "elsewhere", "pid": 1, "time": time.time(), "token": "y"}
    with Claim(run) as claim:  # the dead pid's claim is taken over
        assert json.loads(storage.read_bytes(claim_path(run)))["token"] == claim.record["token"]
        with pytest.raises(RunDirBusy, match="is being trained by"):
            Claim(run)
    assert not storage.exists(claim_path(run))  # released: deleted
    storage.write_bytes(claim_path(run), json.dumps(other).encode())  # another host, fresh heartbeat
    with pytest.raises(RunDirBusy, match="elsewhere pid 1"):
        Claim(run)
    storage.write_bytes(claim_path(run), json.dumps(other | {"time": time.time() - 3600}).encode())
    Claim(run).release()  # an hour without a heartbeat: dead


PAUSED_AT_FIRST_CHUNK = """
import sys, time
from pathlib import Path
from tfpipe.console import quiet_native_logs
quiet_native_logs()  # first, as the command line does: TensorFlow's start-up lines stay out
from tfpipe.cli.main import train_main
from tfpipe.train.step import TrainStep

marker, go = Path(sys.argv[1]), Path(sys.argv[2])
run_steps = TrainStep.run_steps

def paused(self, *args, **kwargs):
    # the first chunk of steps: this trainer holds the run dir; say so and wait for `go`
    if not marker.exists():
        marker.write_text(str(self.step))
        while not go.exists():
            time.sleep(0.01)
    return run_steps(self, *args, **kwargs)

TrainStep.run_steps = paused
sys.exit(train_main(sys.argv[3:], prog="python -m tfpipe.train"))
"""


@pytest.mark.scenario
def test_two_trainers_started_together_one_refuses_at_once(tiny_encoded: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--config", TINY_CONFIG, *tiny_overrides(tiny_encoded, run), "--quiet"]
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [PY, "-c", PAUSED_AT_FIRST_CHUNK, str(tmp_path / f"at{i}"), str(go), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    try:
        # the loser exits at the claim; the winner waits at its first chunk of steps until `go`
        loser = next(iter(wait_any_exit(procs)))
        winner = procs[1 - procs.index(loser)]
        out, err = loser.communicate()
        assert loser.returncode == 2 and not (tmp_path / f"at{procs.index(loser)}").exists(), err[-3000:]
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "train.lock" in lines[0] and f"pid {winner.pid}" in lines[0], err[-3000:]
    except BaseException:
        for proc in procs:  # a failed check leaves no trainer behind
            proc.kill()
            proc.wait()
        raise
    finally:
        go.touch()
    out, err = winner.communicate(timeout=600)
    assert winner.returncode == 0, err[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert (status["state"], status["pid"]) == ("finished", winner.pid)


def wait_any_exit(procs: list[subprocess.Popen], timeout: float = 600) -> list[subprocess.Popen]:
    """The processes of ``procs`` that have exited, once at least one has (polling their state)."""
    deadline = time.monotonic() + timeout
    while not (done := [p for p in procs if p.poll() is not None]):
        assert time.monotonic() < deadline, "neither trainer ended"
        time.sleep(0.05)
    return done


# -- kill points and failed writes at a checkpoint (items 2, 13, 18) --------------------------------------

AT_CHECKPOINT = """
import os, resource, sys, time, uuid
from pathlib import Path
from tfpipe.console import quiet_native_logs
quiet_native_logs()  # first, as the command line does: TensorFlow's start-up lines stay out
import tfpipe.train.loop as loop
from tfpipe.cli.main import train_main

mode, run, marker = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
committed = run / "checkpoints" / "ckpt-1.state.json"


def stop_here():
    # the kill point: say so, then wait for the test's SIGKILL
    marker.write_text(mode)
    while True:
        time.sleep(1)


if mode == "best-keras":  # best.keras (and best.json) of ckpt-2 written, its state not yet
    export = loop.export_keras
    def export_keras(step, target):
        export(step, target)
        if committed.exists():
            stop_here()
    loop.export_keras = export_keras
elif mode == "index":  # inside TensorFlow's atomic write of checkpoints/checkpoint for ckpt-2
    from tensorflow.python.lib.io import file_io
    atomic = file_io.atomic_write_string_to_file
    def atomic_write(filename, contents, overwrite=True):
        if committed.exists() and filename.endswith("checkpoints/checkpoint"):
            open(filename + ".tmp" + uuid.uuid4().hex, "w").close()  # TF's temp file, not yet written
            stop_here()
        return atomic(filename, contents, overwrite)
    file_io.atomic_write_string_to_file = atomic_write
elif mode.startswith("state-"):  # right after ckpt-N.state.json, before the rotation's clean-up
    write_state, last = loop.write_state, int(mode[len("state-"):])
    def after_state(run_dir, state):
        write_state(run_dir, state)
        if state.checkpoint == last:
            stop_here()
    loop.write_state = after_state
elif mode == "full-disk":  # after ckpt-1: no file may grow past 1 MB (a checkpoint's data is 2 MB)
    write_state = loop.write_state
    def then_full(run_dir, state):
        write_state(run_dir, state)
        if state.checkpoint == 1:
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
    loop.write_state = then_full
sys.exit(train_main(sys.argv[4:], prog="python -m tfpipe.train"))
"""


def train_args(encoded: Path, run: Path, *extra: str) -> list[str]:
    return ["--config", TINY_CONFIG, *tiny_overrides(encoded, run, *extra), "--quiet", "--deterministic"]


def killed_at(mode: str, args: list[str], run: Path, tmp: Path) -> str:
    """Run the trainer until it reaches kill point ``mode``, SIGKILL it there; its stderr."""
    marker = tmp / f"at-{mode}"
    proc = subprocess.Popen(
        [PY, "-c", AT_CHECKPOINT, mode, str(run), str(marker), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    try:
        while not marker.exists():
            assert proc.poll() is None, f"the trainer ended before {mode}: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, f"{mode} not reached"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)  # at the kill point (or, on a failure, wherever it is)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return err


@pytest.mark.scenario
def test_killed_after_best_keras_readers_take_the_committed_best(tiny_encoded: Path, tmp_path: Path) -> None:
    import keras
    import numpy as np

    from tfpipe.experiments.runs import read_run
    from tfpipe.predict.loading import _restore_checkpoint, _run_config, load_keras, resolve_checkpoint
    from tfpipe.train.checkpoints import available_checkpoints

    run = tmp_path / "runs" / "a"
    args = train_args(tiny_encoded, run)
    killed_at("best-keras", args, run, tmp_path)
    assert available_checkpoints(str(run)) == [1]
    assert json.loads((run / "best.json").read_text())["checkpoint"] == "ckpt-2"  # best.keras: uncommitted

    assert resolve_checkpoint(str(run)) == (
        str(run),
        str(run / "best" / "ckpt-1"),
    )  # predict --checkpoint RUN
    assert read_run(str(run)).best_checkpoint == "ckpt-1"  # runs ls
    out = tmp_path / "models"
    proc = subprocess.run(
        [PY, "-m", "tfpipe.cli.main", "export-models", "--runs", str(tmp_path / "runs"), "--select", "a", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    entry = json.loads((out / "models.json").read_text())["models"][0]
    assert entry["best_checkpoint"] == "ckpt-1"
    committed = _restore_checkpoint(str(run), str(run / "best" / "ckpt-1"), _run_config(str(run)))
    exported = keras.models.load_model(out / entry["files"]["model"]["file"])
    uncommitted = load_keras(str(run / "best.keras"))
    assert all(
        np.array_equal(a, b) for a, b in zip(committed.get_weights(), exported.get_weights(), strict=True)
    )
    pairs = zip(committed.get_weights(), uncommitted.get_weights(), strict=True)
    assert not all(np.array_equal(a, b) for a, b in pairs)

    proc = train(*args)  # the next start re-exports best.keras from best/ckpt-1, then goes on
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best.keras re-exported from best/ckpt-1" in proc.stderr


@pytest.mark.scenario
def test_kills_at_the_index_write_and_after_the_last_state_leave_nothing_after_the_rerun(
    tiny_encoded: Path, tmp_path: Path
) -> None:
    from tfpipe.train.checkpoints import listed_checkpoints, read_state

    run = tmp_path / "run"
    args = train_args(tiny_encoded, run, "keep_checkpoints=1")
    killed_at("index", args, run, tmp_path)
    assert list((run / "checkpoints").glob("checkpoint.tmp*"))  # TF's temp index, as a kill leaves it
    killed_at("state-2", args, run, tmp_path)  # ckpt-2 committed, ckpt-1 rotated out, its state not dropped
    assert (run / "checkpoints" / "ckpt-1.state.json").exists()
    proc = train(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = read_state(str(run), 2).best_checkpoint
    assert best == 2  # (this deterministic run improves at ckpt-2)
    states = sorted(p.name for p in (run / "checkpoints").glob("*.state.json"))
    assert states == [
        f"ckpt-{n}.state.json" for n in sorted(set(listed_checkpoints(str(run / "checkpoints"))) | {best})
    ]
    assert not list(run.rglob("*.tmp*")) and not list(run.rglob("*tfpipe-tmp*")), sorted(run.rglob("*"))


def test_failed_checkpoint_write_is_one_line_and_the_rerun_resumes(
    tiny_encoded: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = train_args(tiny_encoded, run)
    proc = subprocess.run(
        [PY, "-c", AT_CHECKPOINT, "full-disk", str(run), str(tmp_path / "unused"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    one_line_error(proc, str(run / "best" / "ckpt-2"), "cannot be written", "ckpt-2 is not committed")
    proc = train(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["resumed_from"] == "ckpt-1"

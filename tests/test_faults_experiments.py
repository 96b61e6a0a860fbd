"""The fault suite of the experiment commands: sweep, launch, export-models and predict --models.

Bad inputs run the real command (exit 2, one line naming the file or option, nothing written); kill
points kill real processes at an event they signal (a marker file, a status.json), never after a
guessed time. Checks that a subprocess adds nothing to run in-process (a sampler's draws, a space
file). Two tiny runs, trained once in-process, feed the model-set cases.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_runs import TINY_CONFIG, tiny_overrides

from tfpipe.experiments.model_set import INDEX, ModelSetError, read_index
from tfpipe.train.status import read_status

pytestmark = pytest.mark.scenario  # multi-process choreography: runs in `make test` only

ROOT = Path(__file__).resolve().parents[1]
TFPIPE = Path(sys.executable).parent / "tfpipe"


def tfpipe(*args: object, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(TFPIPE), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, **kwargs)  # fmt: skip


def one_line(result: subprocess.CompletedProcess, command: str) -> str:
    """The one stderr line of a refused command (exit code 2)."""
    assert result.returncode == 2, (result.returncode, result.stdout[-500:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tfpipe {command}: error: "), lines
    return lines[0]


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
    """Poll ``condition`` (the event) until true; fail early if ``proc`` ended first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"ended before {what}: {proc.returncode}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.05)


# ------------------------------------------------------------------ sweep (items 4, 8, 19)


def test_two_seeds_sharing_a_study_draw_different_parameters(tmp_path: Path) -> None:
    """--seed 2 starting a study and --seed 1 joining it after one trial used to get one sampler seed
    (2 + 0 == 1 + 1) and draw the same parameters; each process opens the study as a sweep does."""
    from tfpipe.experiments.space import Param
    from tfpipe.experiments.study import open_study

    space = [
        Param("optim.learning_rate", "float", 1e-4, 1e-2, log=True),
        Param("model.d_model", "int", 8, 512),
    ]
    drawn = []
    for seed in (2, 1):
        study = open_study("shared", str(tmp_path / "s.journal"), "tpe", "median", seed, 60)
        trial = study.ask()
        drawn.append({p.key: p.suggest(trial) for p in space})
        study.tell(trial, 0.5)
    assert len(study.get_trials()) == 2
    assert drawn[0]["optim.learning_rate"] != drawn[1]["optim.learning_rate"], drawn
    assert drawn[0] != drawn[1]
    again = open_study("other", str(tmp_path / "o.journal"), "tpe", "median", 2, 60).ask()  # still seeded
    assert {p.key: p.suggest(again) for p in space} == drawn[0]


@pytest.mark.parametrize("study", ["", "../../escape", ".", "a/b"])
def test_a_study_name_that_is_not_one_folder_is_refused(tmp_path: Path, study: str) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("optim.learning_rate: {type: float, low: 1e-4, high: 1e-2}\n")
    work = tmp_path / "w"
    work.mkdir()
    result = tfpipe("sweep", "--config", "tiny", "--space", space, "--trials", "1", "--study", study,
                    "--storage", work / "s.journal", "--runs-dir", work / "runs" / "sweeps")  # fmt: skip
    assert "--study" in one_line(result, "sweep") and "plain folder name" in result.stderr
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml", "w"]


def test_a_space_file_reads_1e_4_as_a_number_and_refuses_run_dir(tmp_path: Path) -> None:
    from tfpipe.experiments.space import SpaceError, load_space

    path = tmp_path / "space.yaml"
    path.write_text("optim.learning_rate: {type: float, low: 1e-4, high: 3e-3, log: true}\n"
                    "model.d_model: {type: int, low: 64, high: 2e2, step: 64}\n")  # fmt: skip
    space = load_space(path)
    assert (space["optim.learning_rate"].low, space["optim.learning_rate"].high) == (1e-4, 3e-3)
    assert space["model.d_model"].high == 200 and isinstance(space["model.d_model"].high, int)
    path.write_text("run_dir: {type: categorical, choices: [a, b]}\n")
    with pytest.raises(SpaceError, match=r"space\.yaml: run_dir: a sweep sets it"):
        load_space(path)


# ------------------------------------------------------------------ launch (items 7, 21, 22, 23)


def _study_with_two_complete_trials(journal: Path) -> None:
    import optuna

    from tfpipe.experiments.study import open_journal

    study = optuna.create_study(study_name="s", storage=open_journal(str(journal)), direction="maximize")
    for value in (0.1, 0.2):
        trial = study.ask()
        trial.set_user_attr("config", "tiny")
        trial.set_user_attr("overrides", [])
        study.tell(trial, value)


def test_a_sweep_entry_asking_more_trials_than_complete_is_refused(tmp_path: Path) -> None:
    _study_with_two_complete_trials(tmp_path / "s.journal")
    runs = tmp_path / "runs.yaml"
    runs.write_text(yaml.safe_dump({"runs": [{"sweep": {"study": "s", "storage": str(tmp_path / "s.journal"),
                                                        "best": 5}}]}))  # fmt: skip
    line = one_line(tfpipe("launch", "--runs", runs, "--runs-dir", tmp_path / "zoo", "--dry-run"), "launch")
    assert f"{runs}: runs[0]: sweep.best is 5 but study 's'" in line and "only 2 COMPLETE" in line
    assert not (tmp_path / "zoo").exists()


def test_a_bad_gs_runs_dir_is_refused_before_anything_starts(tmp_path: Path) -> None:
    runs = tmp_path / "runs.yaml"
    runs.write_text(yaml.safe_dump({"runs": [{"name": "a", "config": "tiny"}]}))
    line = one_line(tfpipe("launch", "--runs", runs, "--runs-dir", "gs://Bad!!/x"), "launch")
    assert "--runs-dir" in line and "'Bad!!' is not a valid bucket name" in line


def _long_run(tmp_path: Path, encoded: Path, epochs: int = 2) -> Path:
    """A RUNS file of one run ``v`` with 3 sub-epochs per epoch (a window to act while it trains)."""
    runs = tmp_path / "runs.yaml"
    overrides = tiny_overrides(encoded, None, f"epochs={epochs}", "data.sub_epochs=3")
    runs.write_text(yaml.safe_dump({"runs": [{"name": "v", "config": TINY_CONFIG, "overrides": overrides}]}))
    return runs


def _trainer_running(run_dir: Path) -> dict | None:
    status = read_status(str(run_dir))
    return status if status is not None and status.get("state") == "running" else None


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
def test_a_relaunch_right_after_kill_9_waits_for_the_stopping_trainer(
    tiny_encoded: Path, tmp_path: Path
) -> None:
    """The killed launch's trainer gets SIGTERM and stops after its chunk; it is held stopped (SIGSTOP)
    until the relaunch says it waits, so that the relaunch surely meets it still alive."""
    runs, zoo = _long_run(tmp_path, tiny_encoded, epochs=1), tmp_path / "zoo"
    command = [str(TFPIPE), "launch", "--runs", str(runs), "--runs-dir", str(zoo), "--slots", "1"]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _trainer_running(zoo / "v"), "running trainer", first)
    trainer = int(_trainer_running(zoo / "v")["pid"])
    os.kill(trainer, signal.SIGSTOP)
    first.send_signal(signal.SIGKILL)
    first.wait()
    again = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in again.stderr:  # the event: the relaunch waits for the trainer
            if line.startswith(f"[launch] v: its trainer (pid {trainer}) outlived a killed launch"):
                break
    finally:
        os.kill(trainer, signal.SIGCONT)  # its pending SIGTERM now stops it after its chunk
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["counts"] == {"finished": 1} and summary["runs"][0]["attempts"] == 1, summary
    assert "busy" not in err and _gone(trainer)


@pytest.mark.slow
def test_under_ray_a_killed_launcher_stops_its_trainer_with_sigterm(
    tiny_encoded: Path, tmp_path: Path
) -> None:
    """A Ray worker SIGKILLs its direct children when its driver dies; the shield makes the trainer a
    grandchild, which gets SIGTERM and records a clean stop (docs/launch.md)."""
    pytest.importorskip("ray")
    runs, zoo = _long_run(tmp_path, tiny_encoded), tmp_path / "zoo"
    command = [str(TFPIPE), "launch", "--runs", str(runs), "--runs-dir", str(zoo), "--engine", "ray",
               "--cpus-per-run", "1"]  # fmt: skip
    launcher = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _trainer_running(zoo / "v"), "running trainer", launcher)
    trainer = int(_trainer_running(zoo / "v")["pid"])
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    wait_for(lambda: _gone(trainer), "end of the trainer", timeout=120)
    status = read_status(str(zoo / "v"))
    assert (status["state"], status.get("reason")) == ("stopped", "signal 15"), status


# ------------------------------------------------------------------ model sets (items 5, 6, 11)


@pytest.fixture(scope="module")
def model_set(tiny_encoded: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny runs (in-process) exported as a set: ``SET/runs/{a,b}``, ``SET/models``."""
    from tfpipe.config import load_config
    from tfpipe.experiments.export_models import export_models
    from tfpipe.train import train

    root = tmp_path_factory.mktemp("fx-set")
    for name, extra in (("a", []), ("b", ["seed=4"])):
        config = load_config(TINY_CONFIG, tiny_overrides(tiny_encoded, root / "runs" / name, *extra))
        assert train(config, verbose=0)["finished"]
    export_models(str(root / "runs"), "best:2", str(root / "models"))
    return root


def _set_with_names(tmp_path: Path, names: list[str]) -> Path:
    folder = tmp_path / "set"
    folder.mkdir()
    files = {kind: {"file": "x", "sha256": "0", "bytes": 1} for kind in ("model", "config", "stats")}
    index = {"version": 1, "kind": "tfpipe-model-set", "models": [{"name": n, "files": files} for n in names]}
    (folder / INDEX).write_text(json.dumps(index))
    return folder


def test_a_model_set_with_a_repeated_name_is_refused(tiny_encoded: Path, tmp_path: Path) -> None:
    folder = _set_with_names(tmp_path, ["a", "b", "a"])
    result = tfpipe("predict", "--models", folder, "--data", tiny_encoded, "--out-dir", tmp_path / "pred")
    line = one_line(result, "predict")
    assert f"{folder / INDEX}: model name 'a' appears twice" in line and not (tmp_path / "pred").exists()
    for bad in ("../x", "", ".."):
        shutil.rmtree(tmp_path / "set")
        with pytest.raises(ModelSetError, match="not a plain folder name"):
            read_index(str(_set_with_names(tmp_path, ["a", bad])))


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _limit_file_size() -> None:  # pragma: no cover - runs in the child
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # a full disk: EFBIG past 1 MiB


def test_predict_models_on_a_full_disk_names_the_file_and_publishes_nothing(
    model_set: Path, tiny_encoded: Path, tmp_path: Path
) -> None:
    pred = tmp_path / "pred"
    result = tfpipe("predict", "--models", model_set / "models", "--data", tiny_encoded, "--out-dir", pred,
                    "--quiet", preexec_fn=_limit_file_size)  # fmt: skip
    line = one_line(result, "predict")
    assert line.endswith(f"{pred}/a.parquet: cannot write it: File too large"), line
    assert _files(pred) == []  # no parquet, no temp, no marker


KILLED_AT_PUBLISH = """
import sys, time
from pathlib import Path
from tfpipe import storage
from tfpipe.cli.main import predict_main


publish = storage.publish

def paused(local, target):  # the test's SIGKILL comes after the set's first file is published
    publish(local, target)
    if str(target).endswith(".parquet"):
        Path(sys.argv[1]).touch()
        while True:
            time.sleep(0.01)

storage.publish = paused
sys.exit(predict_main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_predict_models_killed_between_two_files_leaves_a_refused_folder_and_reruns_whole(
    model_set: Path, tiny_encoded: Path, tmp_path: Path
) -> None:
    pred, marker = tmp_path / "pred", tmp_path / "published-one"
    args = [
        "--models",
        str(model_set / "models"),
        "--data",
        str(tiny_encoded),
        "--out-dir",
        str(pred),
        "--quiet",
    ]
    proc = subprocess.Popen([sys.executable, "-c", KILLED_AT_PUBLISH, str(marker), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    wait_for(marker.exists, "first published parquet", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = _files(pred)
    assert {".tfpipe-publishing.json", "a.parquet"} <= set(left) and "b.parquet" not in left, left
    line = one_line(tfpipe("blend", "--pred-dir", pred, "--method", "equal", "--out", tmp_path / "b.parquet"),
                    "blend")  # fmt: skip
    assert f"--pred-dir {pred}: tfpipe predict --models was stopped while it replaced the files" in line
    again = tfpipe("predict", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _files(pred) == ["a.parquet", "b.parquet"]  # whole, the temps of the killed run removed


def test_export_refuses_a_truncated_best_keras_and_predict_names_the_file(
    model_set: Path, tiny_encoded: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(model_set / "runs" / "a", runs / "a")
    model = runs / "a" / "best.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    line = one_line(tfpipe("export-models", "--runs", runs, "--select", "best:1", "--out", tmp_path / "m"),
                    "export-models")  # fmt: skip
    assert f"{model}: not a loadable .keras file" in line
    assert _files(tmp_path / "m") == []
    line = one_line(tfpipe("predict", "--checkpoint", model, "--data", tiny_encoded, "--out", tmp_path / "p.parquet"),
                    "predict")  # fmt: skip
    assert f"{model}: not a loadable model" in line and "/model.keras" not in line
    assert not (tmp_path / "p.parquet").exists()

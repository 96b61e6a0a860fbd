"""``tfpipe sweep`` with real Optuna: a killed sweep (SQLite) resumes its trial in the same run dir, two
processes share one study (a journal file), trials train in child processes that the pruner stops, a bad
search space is one line and exit code 2."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_runs import TINY_CONFIG, tiny_overrides

from tfpipe.experiments.runs import read_run
from tfpipe.experiments.space import SpaceError, load_space, override
from tfpipe.experiments.sweep import SweepSpec, run_sweep

pytestmark = pytest.mark.scenario  # multi-process choreography: runs in `make test` only

ROOT = Path(__file__).resolve().parents[1]
LR = "optim.learning_rate: {type: float, low: 1.0e-3, high: 3.0e-3, log: true}\n"
SPACE = LR + "epochs: {type: int, low: 1, high: 2}\n"
"""The learning rate, and 1 or 2 epochs of 2 sub-epochs (the tiny data has 3 training files)."""


def _overrides(encoded: Path) -> list[str]:
    """The tiny run's overrides without ``epochs`` (the space samples it)."""
    return [o for o in tiny_overrides(encoded) if not o.startswith("epochs=")]


def _sweep_cmd(overrides: list[str], tmp: Path, study: str, trials: int, *extra: str,
               storage: str | None = None) -> list[str]:  # fmt: skip
    return [
        sys.executable, "-m", "tfpipe.cli.main", "sweep", "--config", TINY_CONFIG, *overrides,
        "--space", str(tmp / "space.yaml"), "--trials", str(trials), "--study", study,
        "--storage", storage or f"sqlite:///{tmp}/sweeps.db", "--runs-dir", str(tmp / "runs"), "--seed", "0",
        *extra,
    ]  # fmt: skip


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _study(tmp: Path, name: str, storage: str | None = None):
    import optuna

    from tfpipe.experiments.study import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(storage or f"sqlite:///{tmp}/sweeps.db", 60))


def test_killed_sweep_resumes_its_trial_in_the_same_run_dir(tiny_encoded: Path, tmp_path: Path) -> None:
    """SIGKILL mid-trial; the next sweep fails the dead trial and retries it in trial-0000, which continues
    from its checkpoint; the study ends with exactly 3 finished trials."""
    import optuna

    (tmp_path / "space.yaml").write_text(SPACE)
    study = optuna.create_study(
        study_name="k", storage=f"sqlite:///{tmp_path}/sweeps.db", direction="maximize"
    )
    for epochs in (2, 1, 1):  # the first trial (4 sub-epochs) is long enough to be killed mid-run
        study.enqueue_trial({"epochs": epochs})
    cmd = _sweep_cmd([*_overrides(tiny_encoded), "keep_checkpoints=4"], tmp_path, "k", 3)
    run0 = tmp_path / "runs" / "k" / "trial-0000"
    first = run0 / "checkpoints" / "ckpt-1.state.json"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert first.exists(), err[-3000:]
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before the kill"
    kept = first.stat().st_mtime_ns
    first_row = _metrics(run0)[0]
    assert _study(tmp_path, "k").trials[0].state.name == "RUNNING"

    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = _last_json(done.stdout)
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 3, summary
    assert summary["trials"]["fail"] == 1 and summary["trials"]["running"] == 0, summary
    assert "left running by a dead process" in done.stderr
    trials = _study(tmp_path, "k").trials
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE", [t.state for t in trials]
    retry = retry[0]
    assert retry.user_attrs["run_dir"] == str(run0)
    assert retry.user_attrs["resumed_from"].startswith("ckpt-"), retry.user_attrs
    assert 4 in retry.intermediate_values and set(retry.intermediate_values) <= {1, 2, 3, 4}
    assert first.stat().st_mtime_ns == kept  # ckpt-1 was not trained again
    rows = _metrics(run0)
    assert [int(row["checkpoint"]) for row in rows] == [1, 2, 3, 4] and rows[0] == first_row
    finished = [t for t in trials if t.state.name == "COMPLETE"]
    assert len({t.user_attrs["run_dir"] for t in finished}) == 3
    # The attributes `tfpipe launch` reads give back each trial's run.
    for trial in finished:
        run = read_run(trial.user_attrs["run_dir"])
        assert run.state == "finished" and trial.user_attrs["config"] == TINY_CONFIG
        assert trial.value == pytest.approx(run.best_r2)
        assert run.config["epochs"] == trial.params["epochs"]
        assert run.config["optim.learning_rate"] == pytest.approx(trial.params["optim.learning_rate"])
        assert f"epochs={trial.params['epochs']}" in trial.user_attrs["overrides"]
    assert summary["best_run_dir"] in {t.user_attrs["run_dir"] for t in finished}
    assert summary["best_value"] == max(t.value for t in finished)

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and _last_json(again.stdout)["trials"] == summary["trials"]


def test_two_processes_share_one_study(tiny_encoded: Path, tmp_path: Path) -> None:
    """Two sweep processes on one journal-file study (Optuna's JournalStorage) finish exactly 3 trials
    together, in distinct run dirs, each trained by a child process; with tracking.backend=mlflow each
    trial is an MLflow run nested under its process's study run (the id passed to the child)."""
    (tmp_path / "space.yaml").write_text(LR)
    mlruns = tmp_path / "mlruns"
    journal = str(tmp_path / "sweeps.journal")
    tracked = [*tiny_overrides(tiny_encoded), "tracking.backend=mlflow", f"tracking.uri={mlruns}"]
    procs = [
        subprocess.Popen(
            _sweep_cmd(tracked, tmp_path, "shared", 3, "--seed", str(seed), "--pruner", "none", storage=journal),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for seed in (1, 2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
        assert _last_json(out)["study"] == "shared"
    trials = _study(tmp_path, "shared", journal).trials
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 3, [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert all(t.user_attrs.get("surplus") for t in trials if t.number not in {d.number for d in done})
    assert len({t.user_attrs["run_dir"] for t in done}) == 3
    workers = {t.user_attrs["worker"].rsplit(":", 2)[1] for t in done}
    assert workers == {str(p.pid) for p in procs}, "both processes trained trials"
    trainers = {json.loads((Path(t.user_attrs["run_dir"]) / "status.json").read_text())["pid"] for t in done}
    assert len(trainers) == 3 and not trainers & {p.pid for p in procs}, "each trial in a child process"
    _assert_trials_nested_under_study_runs(mlruns, {t.user_attrs["run_dir"] for t in done})


def _assert_trials_nested_under_study_runs(mlruns: Path, run_dirs: set[str]) -> None:
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlruns.as_uri())
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    studies = {r.info.run_id for r in runs if r.data.tags.get("tfpipe.study") == "shared"}
    trials = [r for r in runs if r.data.tags.get("tfpipe.run_dir") in run_dirs]
    assert len(studies) == 2 and len(trials) == 3, [(r.info.run_name, r.data.tags) for r in runs]
    assert all(r.data.tags.get("mlflow.parentRunId") in studies for r in trials)
    assert all(r.info.status == "FINISHED" for r in trials) and all(
        "val_r2" in r.data.metrics for r in trials
    )


def _bad(tmp: Path, text: str, *overrides: str) -> str:
    space = tmp / "bad.yaml"
    space.write_text(text)
    spec = SweepSpec(TINY_CONFIG, str(space), 2, "bad", list(overrides), f"sqlite:///{tmp}/bad.db")
    with pytest.raises(ValueError) as err:
        run_sweep(spec)
    assert not (tmp / "bad.db").exists()  # refused before the storage is opened
    return str(err.value)


def test_bad_space_is_one_line_naming_the_file_and_key(tmp_path: Path) -> None:
    space = tmp_path / "bad.yaml"
    assert "optim.learnin_rate" in _bad(tmp_path, "optim.learnin_rate: {type: float, low: 0.1, high: 1}")
    assert "low 0.1 is greater than high 0.01" in _bad(
        tmp_path, "optim.lr: {type: float, low: 0.1, high: 0.01}"
    )
    assert "unknown type 'uniform'" in _bad(tmp_path, "optim.clipnorm: {type: uniform, low: 0, high: 1}")
    assert "log: true needs low > 0" in _bad(
        tmp_path, "optim.clipnorm: {type: float, low: 0, high: 1, log: true}"
    )
    assert "low must be an integer" in _bad(tmp_path, "model.d_model: {type: int, low: 1.5, high: 8}")
    assert "choices must be a non-empty list" in _bad(
        tmp_path, "model.name: {type: categorical, choices: []}"
    )
    assert "also set by a command-line override" in _bad(
        tmp_path, "epochs: {type: int, low: 1, high: 2}", "epochs=3"
    )
    message = _bad(tmp_path, "model.d_model: {type: categorical, choices: [32, wide]}")
    assert message.startswith(f"{space}: model.d_model: 'wide' does not fit the config"), message
    assert f"{space}: expected a mapping" in _bad(tmp_path, "- just a list")

    result = subprocess.run(
        [sys.executable, "-m", "tfpipe.cli.main", "sweep", "--config", TINY_CONFIG, "epochs=1", "--space", str(space),
         "--trials", "2", "--study", "bad", "--storage", f"sqlite:///{tmp_path}/bad.db", "model.d_model=8"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tfpipe sweep: error: {space}: expected a mapping"), lines
    assert result.stdout == ""


def test_space_values_round_trip_through_overrides(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        "data.representations: {type: categorical, choices: [[column, log], [column, variable, log]]}\n"
        "model.name: {type: categorical, choices: [mlp, 'yes']}\n"
        "optim.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n"
    )
    params = load_space(space)
    assert params["data.representations"].choices == (["column", "log"], ["column", "variable", "log"])
    assert override("data.representations", ["column", "log"]) == "data.representations=[column, log]"
    assert override("model.name", "yes") == "model.name='yes'"
    assert override("optim.learning_rate", 1e-05) == "optim.learning_rate=1.0e-05"
    with pytest.raises(SpaceError, match="unknown field"):
        space.write_text("optim.learning_rate: {type: float, low: 1, high: 2, choices: [1]}\n")
        load_space(space)


def test_sweep_help_loads_no_engine() -> None:
    probe = (
        "import sys; from tfpipe.cli.main import main\n"
        "try:\n    main(['sweep', '--help'])\nexcept SystemExit as exit:\n    code = exit.code\n"
        "print([m for m in ('tensorflow', 'keras', 'optuna', 'ray', 'mlflow', 'sqlalchemy') if m in sys.modules],"
        " code, file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stderr.strip().splitlines()[-1] == "[] 0", result.stderr
    assert "--heartbeat-interval" in result.stdout and "--pruner" in result.stdout


def test_bad_storage_sampler_or_runs_of_another_study_are_refused(tmp_path: Path) -> None:
    import importlib.util

    import optuna

    space = tmp_path / "space.yaml"
    space.write_text(LR)

    def spec(**kw) -> SweepSpec:
        return SweepSpec(TINY_CONFIG, str(space), 2, "s", ["epochs=1"], **kw)

    sqlite = tmp_path / "sweeps.db"
    optuna.create_study(study_name="other", storage=f"sqlite:///{sqlite}")
    with pytest.raises(ValueError, match=f"--storage {sqlite}: an SQLite database, not a journal: use sqlite:///"):
        run_sweep(spec(storage=str(sqlite)))
    if importlib.util.find_spec("cmaes") is None:
        with pytest.raises(ValueError, match="--sampler cmaes needs the cmaes package"):
            run_sweep(spec(storage=f"sqlite:///{tmp_path}/a.db", sampler="cmaes"))
    (tmp_path / "runs" / "s" / "trial-0000").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"study 's' is new in .* already holds runs"):
        run_sweep(spec(storage=f"sqlite:///{tmp_path}/b.db", runs_dir=str(tmp_path / "runs")))


def test_a_missing_engine_is_one_line_with_the_install_command(tiny_encoded: Path, tmp_path: Path) -> None:
    """tfpipe sweep without Optuna installed (hidden here): exit 2, one line naming the extra."""
    (tmp_path / "space.yaml").write_text(LR)
    argv = _sweep_cmd(tiny_overrides(tiny_encoded), tmp_path, "nope", 1)[3:]  # after `-m tfpipe.cli.main`
    code = f"import sys; sys.modules['optuna'] = None; from tfpipe.cli.main import main; sys.exit(main({argv!r}))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "tfpipe sweep: error: tfpipe sweep needs optuna, which is not installed: pip install 'tfpipe[experiments]'"
    ]


def test_the_pruner_stops_a_trial_in_its_child_process(tiny_encoded: Path, tmp_path: Path) -> None:
    """The child reports its first sub-epoch, the sweep's pruner (a real Optuna ThresholdPruner no run
    can pass) answers prune: the trainer stops there with the reason `pruned`, the trial is PRUNED."""
    import optuna

    from tfpipe.experiments.sweep import Objective

    (tmp_path / "space.yaml").write_text(LR)
    spec = SweepSpec(TINY_CONFIG, str(tmp_path / "space.yaml"), 1, "p", tiny_overrides(tiny_encoded),
                     runs_dir=str(tmp_path / "runs"), verbose=False)  # fmt: skip
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1e9))
    Objective(spec, load_space(spec.space)).optimize(study)
    (trial,) = study.trials
    assert trial.state.name == "PRUNED", (trial.state, trial.user_attrs)
    run_dir = Path(trial.user_attrs["run_dir"])
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["state"], status["reason"]) == ("stopped", "pruned") and status["pid"] != os.getpid()
    assert list(trial.intermediate_values) == [1] and len(_metrics(run_dir)) == 1
    metric = yaml.safe_load((run_dir / "config.yaml").read_text())["select_metric"]
    assert trial.intermediate_values[1] == pytest.approx(float(_metrics(run_dir)[0][metric]), rel=1e-5)
    assert len(list((run_dir / "sweep").glob("*-attempt0.log"))) == 1  # the child's output


def test_a_killed_trainer_is_retried_and_resumes_while_the_sweep_goes_on(tiny_encoded: Path, tmp_path: Path) -> None:
    """SIGKILL of the trial's child trainer (not of the sweep) after its first checkpoint: the sweep queues
    the trial again, the retry resumes in the same run dir, the study ends with its one trial COMPLETE."""
    (tmp_path / "space.yaml").write_text(LR)
    journal = str(tmp_path / "sweeps.journal")
    cmd = _sweep_cmd([*_overrides(tiny_encoded), "epochs=2", "keep_checkpoints=4"], tmp_path, "t", 1, storage=journal)
    run0 = tmp_path / "runs" / "t" / "trial-0000"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 240
    while killed is None and proc.poll() is None and time.time() < deadline:
        status = json.loads((run0 / "status.json").read_text()) if (run0 / "status.json").exists() else {}
        if status.get("state") == "running" and int(status.get("checkpoint", 0)) >= 1:
            os.kill(int(status["pid"]), signal.SIGKILL)
            killed = int(status["checkpoint"])
        time.sleep(0.05)
    out, err = proc.communicate(timeout=300)
    assert killed is not None, err[-3000:]
    assert proc.returncode == 0, err[-3000:]
    assert "trainer was killed by SIGKILL: queued again to resume" in err
    assert "[sweep] trial 0 ckpt-1: " in err and "[sweep] trial 1 ckpt-4: " in err  # a line per report
    summary = _last_json(out)
    assert (summary["trials"]["complete"], summary["trials"]["fail"]) == (1, 1), summary
    retry = next(t for t in _study(tmp_path, "t", journal).trials if t.state.name == "COMPLETE")
    assert retry.user_attrs["run_dir"] == str(run0) and retry.user_attrs["killed"] == 1
    assert int(retry.user_attrs["resumed_from"].split("-")[1]) >= killed
    assert [int(row["checkpoint"]) for row in _metrics(run0)] == [1, 2, 3, 4]

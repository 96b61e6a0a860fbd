"""``tfpipe launch``: the zoo in parallel on local slots and on a real local Ray, a trainer killed and
retried (it resumes), sweep entries from a real Optuna study, bad RUNS files."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tiny_runs import TINY_CONFIG, tiny_overrides

from tfpipe.experiments.launch import LaunchOptions, launch
from tfpipe.experiments.progress import Board
from tfpipe.experiments.zoo import RunSpec, ZooError, load_runs
from tfpipe.train.status import effective_state, read_status

pytestmark = pytest.mark.scenario  # multi-process choreography: runs in `make test` only

REPO = Path(__file__).resolve().parents[1]
TFPIPE = Path(sys.executable).parent / "tfpipe"
LONG = ["epochs=2", "keep_checkpoints=5"]  # the run that is killed: a window after its ckpt-1


def _runs_file(path: Path, encoded: Path, runs: dict[str, list[str]]) -> Path:
    entries = [{"name": name, "config": TINY_CONFIG, "overrides": tiny_overrides(encoded, None, *extra)}
               for name, extra in runs.items()]  # fmt: skip
    path.write_text(yaml.safe_dump({"runs": entries}))
    return path


class Watcher(threading.Thread):
    """Polls two run dirs: notes when both trainers are alive at once, SIGKILLs `victim`'s trainer once
    after its first checkpoint and keeps that moment's ckpt-1 state."""

    def __init__(self, victim: Path, other: Path) -> None:
        super().__init__(daemon=True)
        self.victim, self.other = victim, other
        self.overlap = False
        self.killed_at: int | None = None
        self.ckpt1: bytes | None = None
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 240
        while not self.done.is_set() and time.monotonic() < deadline:
            mine, theirs = read_status(str(self.victim)), read_status(str(self.other))
            alive = [s is not None and effective_state(s) == "running" for s in (mine, theirs)]
            self.overlap |= all(alive)
            if self.killed_at is None and alive[0] and int(mine.get("checkpoint", 0)) >= 1:
                self.ckpt1 = (self.victim / "checkpoints" / "ckpt-1.state.json").read_bytes()
                os.kill(int(mine["pid"]), signal.SIGKILL)
                self.killed_at = int(mine["checkpoint"])
            time.sleep(0.02)


def _check_killed_and_resumed(summary: dict, watcher: Watcher) -> None:
    runs = {run["name"]: run for run in summary["runs"]}
    assert summary["counts"] == {"finished": 2} and summary["finished"] == summary["total"] == 2, summary
    assert watcher.overlap, "the two trainers never ran at the same time"
    assert watcher.killed_at is not None and watcher.killed_at >= 1, "the trainer was never killed"
    assert (runs["victim"]["attempts"], runs["other"]["attempts"]) == (2, 1), runs
    assert runs["victim"]["checkpoints"] == 4 and runs["other"]["checkpoints"] == 2
    assert (watcher.victim / "checkpoints" / "ckpt-1.state.json").read_bytes() == watcher.ckpt1  # kept
    logs = sorted((watcher.victim / "launch").glob("*-attempt2.log"))
    assert len(logs) == 1, list((watcher.victim / "launch").iterdir())
    resumed = json.loads(logs[0].read_text().strip().splitlines()[-1])["resumed_from"]
    assert resumed is not None and int(resumed.split("-")[1]) >= watcher.killed_at, resumed


def test_local_slots_run_in_parallel_and_a_killed_trainer_resumes(tiny_encoded: Path, tmp_path: Path):
    runs = _runs_file(tmp_path / "runs.yaml", tiny_encoded, {"victim": LONG, "other": []})
    zoo = tmp_path / "zoo"
    watcher = Watcher(zoo / "victim", zoo / "other")
    watcher.start()
    result = subprocess.run(
        [str(TFPIPE), "launch", "--runs", str(runs), "--runs-dir", str(zoo), "--slots", "2"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    watcher.done.set()
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    _check_killed_and_resumed(summary, watcher)
    assert "retrying" in result.stderr and "killed by SIGKILL" in result.stderr
    assert "[launch] victim: attempt 2 resumes from its latest checkpoint (ckpt-" in result.stderr
    finished_lines = [line.split() for line in result.stderr.splitlines() if "finished" in line]
    assert {"victim", "other"} <= {words[0] for words in finished_lines}  # a line when a run changes

    again = launch(load_runs(str(runs), str(zoo)), LaunchOptions(slots=2), str(zoo))  # finished: skipped
    assert [(r["state"], r["attempts"], r["skipped"]) for r in again["runs"]] == [("finished", 0, True)] * 2

    master, slave = os.openpty()  # on a terminal the lines are redrawn in place
    with os.fdopen(slave, "w") as tty:
        board = Board(load_runs(str(runs), str(zoo)), tty)
        board.refresh(board.specs, force=True)
        board.refresh(board.specs, force=True)
        drawn = b""
        while select.select([master], [], [], 0.2)[0]:  # read while the terminal is open (then: EIO)
            drawn += os.read(master, 65536)
    os.close(master)
    drawn = drawn.decode()
    assert drawn.count("\x1b[2K") == 4 and "\x1b[2F" in drawn and "victim" in drawn


@pytest.fixture
def local_ray() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_retries_a_killed_trainer_which_resumes(tiny_encoded: Path, tmp_path: Path, local_ray: None):
    runs = _runs_file(tmp_path / "runs.yaml", tiny_encoded, {"victim": LONG, "other": []})
    zoo = tmp_path / "zoo"
    watcher = Watcher(zoo / "victim", zoo / "other")
    watcher.start()
    options = LaunchOptions(engine="ray", cpus_per_run=1, max_retries=2)
    out = _Lines()
    summary = launch(load_runs(str(runs), str(zoo)), options, str(zoo), out)  # reuses the Ray of this process
    watcher.done.set()
    _check_killed_and_resumed(summary, watcher)
    assert any(line.startswith("[launch] victim: attempt 2 resumes from its latest checkpoint") for line in out.lines)


class _Lines:
    """A non-terminal progress stream that keeps its lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines += text.splitlines()

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_ray_ctrl_c_leaves_a_run_that_never_started_queued(tiny_encoded: Path, tmp_path: Path, local_ray: None):
    """Two runs that each take the whole (2-CPU) Ray: Ctrl-C while the first trains stops it (with its log
    in the summary) and leaves the second queued with 0 attempts, as the local engine reports it."""
    runs = _runs_file(tmp_path / "runs.yaml", tiny_encoded, {"a": LONG, "b": LONG})
    zoo = tmp_path / "zoo"

    def interrupt() -> None:
        while True:
            statuses = [read_status(str(zoo / name)) for name in ("a", "b")]
            if any(s is not None and s["state"] == "running" and int(s.get("checkpoint", 0)) >= 1 for s in statuses):
                os.kill(os.getpid(), signal.SIGINT)  # the launcher's handler, in the main thread
                return
            time.sleep(0.05)

    threading.Thread(target=interrupt, daemon=True).start()
    summary = launch(load_runs(str(runs), str(zoo)), LaunchOptions(engine="ray", cpus_per_run=2), str(zoo))
    assert summary["stopped_by"] == "SIGINT", summary
    started, waiting = sorted(summary["runs"], key=lambda run: -run["attempts"])
    assert (started["state"], started["attempts"]) == ("stopped", 1), started
    assert started["log"] is not None and Path(started["log"]).is_file() and "attempt1" in started["log"]
    assert (waiting["state"], waiting["attempts"], waiting["log"]) == ("queued", 0, None), waiting
    assert summary["counts"] == {"queued": 1, "stopped": 1}


FINISHED_PROBE = """
import sys
from tfpipe.experiments.launch import LaunchOptions, launch
from tfpipe.experiments.zoo import RunSpec
summary = launch([RunSpec("done", {config!r}, {run_dir!r}, [])], LaunchOptions(engine="ray"), {zoo!r})
print(summary["runs"][0]["state"], summary["runs"][0]["skipped"], "ray" in sys.modules)
"""


def test_a_launch_of_finished_runs_does_not_start_ray(tmp_path: Path):
    from tfpipe.train.status import write_status

    run_dir = tmp_path / "zoo" / "done"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text((REPO / TINY_CONFIG).read_text())
    write_status(str(run_dir), "finished", checkpoints=2)
    code = FINISHED_PROBE.format(config=str(REPO / TINY_CONFIG), run_dir=str(run_dir), zoo=str(tmp_path / "zoo"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["finished", "True", "False"]


def test_a_bad_input_is_not_retried(tmp_path: Path):
    """Exit code 2 of the trainer (here a key it refuses) fails the run at once, with its error line."""
    spec = RunSpec("bad", TINY_CONFIG, str(tmp_path / "zoo" / "bad"), ["model.no_such_key=1"])
    summary = launch([spec], LaunchOptions(slots=1, max_retries=2), str(tmp_path / "zoo"))
    (run,) = summary["runs"]
    assert (run["state"], run["attempts"], summary["finished"]) == ("failed", 1, 0), run
    assert "error:" in run["detail"] and "no_such_key" in run["detail"], run


def test_a_sweep_entry_expands_into_its_best_complete_trials(tmp_path: Path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    study = optuna.create_study(study_name="mlp-lr", storage=storage, direction="maximize")
    for value, lr in [(0.1, "1e-2"), (0.5, "3e-3"), (0.3, "1e-3"), (0.4, "3e-4")]:
        attrs = {"config": TINY_CONFIG, "overrides": ["model.name=mlp", f"optim.learning_rate={lr}"]}
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={}))
    runs = tmp_path / "runs.yaml"
    runs.write_text(yaml.safe_dump({"runs": [
        {"name": "sq", "config": "tiny", "overrides": ["seed=1"]},
        {"sweep": {"study": "mlp-lr", "storage": storage, "best": 2}, "overrides": ["epochs=3"]},
    ]}))  # fmt: skip
    specs = load_runs(str(runs), "gs://bucket/zoo")
    assert [s.name for s in specs] == ["sq", "mlp-lr-trial-0001", "mlp-lr-trial-0003"]
    assert specs[0].config.endswith("tfpipe/configs/tiny.yaml") and specs[1].config == TINY_CONFIG
    assert specs[1].run_dir == "gs://bucket/zoo/mlp-lr-trial-0001"
    assert specs[1].overrides == [
        "model.name=mlp",
        "optim.learning_rate=3e-3",
        "epochs=3",
        "name=mlp-lr-trial-0001",
    ]
    assert specs[2].train_args()[-4:] == ["name=mlp-lr-trial-0003", "--run-dir", specs[2].run_dir, "--quiet"]


BAD = {
    "no list": ({"run": []}, "expected a mapping with a non-empty list 'runs:'"),
    "missing config": ({"runs": [{"name": "a"}]}, "runs[0]: missing config"),
    "duplicate": ({"runs": [{"name": "a", "config": "tiny"}, {"name": "a", "config": "tiny"}]},
                  "runs[1]: duplicate run name 'a' (also runs[0])"),
    "bad key": ({"runs": [{"name": "a", "config": "tiny", "overrides": ["model.nope=1"]}]},
                "runs[0] (a): unknown key 'model.nope'"),
    "no config file": ({"runs": [{"name": "a", "config": "nope.yaml"}]}, "runs[0] (a): cannot read config nope.yaml"),
    "no study": ({"runs": [{"sweep": {"study": "x", "storage": "sqlite:///{tmp}/s.db", "best": 1}}]},
                 "runs[0]: no study 'x' in sqlite:///"),
    "bad name": ({"runs": [{"name": "a/b", "config": "tiny"}]}, "runs[0]: name 'a/b' is not a folder name"),
}  # fmt: skip


def test_a_bad_runs_file_is_one_line_naming_the_file_and_the_entry(tmp_path: Path):
    import optuna

    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path}/s.db")
    for case, (tree, message) in BAD.items():
        path = tmp_path / f"{case.replace(' ', '-')}.yaml"
        path.write_text(yaml.safe_dump(json.loads(json.dumps(tree).replace("{tmp}", str(tmp_path)))))
        with pytest.raises(ZooError) as err:
            load_runs(str(path), str(tmp_path / "zoo"))
        text = str(err.value)
        assert text.startswith(f"{path}: ") and message in text and "\n" not in text, (case, text)
    path = tmp_path / "duplicate.yaml"
    result = subprocess.run([str(TFPIPE), "launch", "--runs", str(path), "--runs-dir", str(tmp_path / "zoo")],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"tfpipe launch: error: {path}: runs[1]: duplicate run name 'a' (also runs[0])"
    ]
    assert not (tmp_path / "zoo").exists()


HELP_PROBE = """
import runpy, sys

sys.argv = ["tfpipe", "launch", "--help"]
try:
    runpy.run_module("tfpipe.cli.main", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print([m for m in ("tensorflow", "keras", "optuna", "ray", "mlflow") if m in sys.modules], file=sys.stderr)
"""


def test_launch_help_loads_no_engine():
    result = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, timeout=60)
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr
    assert "--max-retries" in result.stdout and "(default: 2)" in result.stdout


def test_local_slots_share_out_the_visible_gpus_and_a_dead_ray_address_is_refused():
    from tfpipe.experiments.launch import local_slots

    gpus = ["0", "1", "2", "3"]
    assert local_slots(LaunchOptions(), gpus) == [{"CUDA_VISIBLE_DEVICES": g} for g in gpus]
    assert local_slots(LaunchOptions(gpus_per_run=2), gpus) == [
        {"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}
    ]  # fmt: skip
    shared = local_slots(LaunchOptions(slots=2), ["0"])  # two runs on one GPU: each grows its memory
    assert shared == [{"CUDA_VISIBLE_DEVICES": "0", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}] * 2
    assert local_slots(LaunchOptions(gpus_per_run=0, slots=3), gpus) == [{"CUDA_VISIBLE_DEVICES": "-1"}] * 3
    assert local_slots(LaunchOptions(cpus_per_run=1, slots=None), []) != []
    with pytest.raises(ValueError, match="--gpus-per-run 2: only 1 GPU"):
        local_slots(LaunchOptions(gpus_per_run=2), ["0"])
    from tfpipe.experiments.launch_ray import check_reachable

    with pytest.raises(ConnectionError, match="no Ray cluster reachable at 127.0.0.1:1: "):
        check_reachable("127.0.0.1:1")  # Ray itself would retry it for minutes

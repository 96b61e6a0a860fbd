"""``tfpipe runs ls``: a folder of real runs (finished, stopped, failed) as a table and as JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_runs import TINY_CONFIG, tiny_overrides
from tfpipe.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _ls(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfpipe.cli", "runs", "ls", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)  # fmt: skip


@pytest.fixture(scope="module")
def runs(tiny_encoded: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``stopped`` (after one sub-epoch of two), ``done`` (a copy of it resumed to the end) and
    ``sweep/failed`` (another learning rate; its checkpoint hook raised), all trained in-process."""
    from tfpipe.train import train

    root = tmp_path_factory.mktemp("runs-ls") / "runs"

    def config(name: str, *extra: str):
        return load_config(ROOT / TINY_CONFIG, tiny_overrides(tiny_encoded, root / name, *extra))

    train(config("stopped"), verbose=0, stop_after_sub_epochs=1)
    shutil.copytree(root / "stopped", root / "done")
    train(config("done"), verbose=0)

    def boom(row: dict) -> None:
        raise RuntimeError("disk on fire\nsecond line")

    with pytest.raises(RuntimeError):
        train(config("sweep/failed", "optim.learning_rate=2e-3"), verbose=0, on_checkpoint=boom)
    return root


def test_the_table_shows_what_differs_scores_checkpoints_and_status(runs: Path) -> None:
    result = _ls(str(runs), "--sort", "name")
    assert result.returncode == 0, result.stderr
    *table, last = result.stdout.strip().splitlines()
    assert table[0].split() == ["run", "optim.learning_rate", "best", "R²", "last", "R²", "ckpts", "status"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert list(rows) == ["done", "stopped", "sweep/failed"]
    assert rows["done"].split()[1:2] == ["0.001"] and rows["done"].endswith("2/2  finished")
    assert rows["stopped"].endswith("1/2  stopped: stop-after-sub-epochs (resumable)")
    assert rows["sweep/failed"].split()[1] == "0.002"
    assert rows["sweep/failed"].endswith("1/2  failed: RuntimeError: disk on fire")
    summary = json.loads(last)
    assert summary["runs"] == 3 and summary["states"] == {"finished": 1, "stopped": 1, "failed": 1}
    assert summary["best"]["run"] in rows and summary["dir"] == str(runs)


def test_json_lists_every_run_and_sort_orders_them(runs: Path) -> None:
    result = _ls(str(runs), "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert len(result.stdout.strip().splitlines()) == 1 and len(listed) == 3
    by_run = {r["run"]: r for r in listed}
    assert by_run["sweep/failed"]["differs"] == {"optim.learning_rate": 0.002}
    done = by_run["done"]
    assert (done["state"], done["checkpoints"], done["total"], done["resumable"]) == ("finished", 2, 2, False)
    assert done["config"]["model.name"] == "mlp" and done["path"] == str(runs / "done")
    assert (by_run["stopped"]["detail"], by_run["stopped"]["resumable"]) == ("stop-after-sub-epochs", True)
    best = [r["best_r2"] for r in listed]
    assert best == sorted(best, reverse=True)  # the default order: best R² first
    order = {s: [r["run"] for r in json.loads(_ls(str(runs), "--json", "--sort", s).stdout)]
             for s in ("name", "state", "last_r2")}  # fmt: skip
    assert order["name"] == ["done", "stopped", "sweep/failed"]
    assert order["state"] == ["done", "stopped", "sweep/failed"]  # finished, stopped, failed
    last = {r["run"]: r["last_r2"] for r in listed}
    assert [last[r] for r in order["last_r2"]] == sorted(last.values(), reverse=True)
    relative = json.loads(_ls("runs", "--json", cwd=runs.parent).stdout)
    assert sorted(r["run"] for r in relative) == ["done", "stopped", "sweep/failed"]


def test_a_folder_without_runs_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    for folder, message in [("empty", "no runs (no run dir with a config.yaml at or below it)"),
                            ("missing", "no such folder")]:  # fmt: skip
        result = _ls(str(tmp_path / folder))
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.strip().splitlines() == [
            f"tfpipe runs ls: error: {tmp_path / folder}: {message}"
        ]
    bad = _ls(str(tmp_path), "--sort", "loss")
    assert (
        bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "invalid choice" in bad.stderr
    )


def test_help_loads_none_of_the_engines() -> None:
    probe = (
        "import sys, runpy; sys.argv = ['tfpipe', 'runs', 'ls', '--help']\n"
        "try:\n    runpy.run_module('tfpipe.cli', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'mlflow', 'optuna', 'ray') if m in sys.modules]\n"
        "print(code, heavy, file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.stderr.strip().splitlines()[-1] == "0 []" and "--sort" in result.stdout


def test_a_config_yaml_that_is_not_a_run_is_skipped_with_a_line(tmp_path: Path, capsys) -> None:
    from tfpipe.experiments.runs import find_runs, read_run

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.yaml").write_text("- a list\n- not a run config\n")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.yaml").write_text("key: [unclosed\n")
    assert find_runs(str(tmp_path)) == []
    err = capsys.readouterr().err
    assert "skipped" in err and "not a mapping" in err and "not YAML" in err
    with pytest.raises(ValueError, match="not YAML"):
        read_run(str(tmp_path / "broken"))

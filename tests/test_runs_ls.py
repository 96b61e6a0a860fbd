"""``tfpipe runs ls``: a folder of real runs (finished, stopped, failed) as a table and as JSON."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_runs import TINY_CONFIG, tiny_overrides
from tfpipe.config import load_config

pytestmark = pytest.mark.scenario  # multi-process choreography: runs in `make test` only

ROOT = Path(__file__).resolve().parents[1]


def _ls(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfpipe.cli.main", "runs", "ls", *args], capture_output=True,
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
    header = table[0].split()
    assert header[:2] == ["run", "learning_rate"] and header[-4:] == ["last", "R²", "ckpts", "status"]
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
    best = [r["r2"] for r in listed]
    assert best == sorted(best, reverse=True)  # the default order: the headline R² first
    order = {s: [r["run"] for r in json.loads(_ls(str(runs), "--json", "--sort", s).stdout)]
             for s in ("name", "state", "last_r2")}  # fmt: skip
    assert order["name"] == ["done", "stopped", "sweep/failed"]
    assert order["state"] == ["done", "stopped", "sweep/failed"]  # finished, stopped, failed
    last = {r["run"]: r["last_headline"] for r in listed}
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
        "try:\n    runpy.run_module('tfpipe.cli.main', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
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


def _set_val(run: Path, **val: float | None) -> None:
    """Set (None: remove) keys of the ``val`` dict of every checkpoint state of ``run``."""
    for path in (run / "checkpoints").glob("ckpt-*.state.json"):
        state = json.loads(path.read_text())
        for key, value in val.items():
            state["val"].pop(key, None) if value is None else state["val"].__setitem__(key, value)
        path.write_text(json.dumps(state))


def _zoo(runs: Path, tmp: Path) -> Path:
    """The fixture's runs as a launched zoo: each config's name is its folder, model-specific keys with
    long values differ, scores in the millions below zero."""
    import yaml

    zoo = tmp / "zoo"
    for i, (src, model) in enumerate([("done", "mlp"), ("stopped", "squeezeformer"), ("sweep/failed", "lstm")]):
        dst = zoo / f"run-{model}"
        shutil.copytree(runs / src, dst)
        config = yaml.safe_load((dst / "config.yaml").read_text())
        config["name"] = f"run-{model}"
        config["select_metric"] = "val_r2" if model == "lstm" else "val_r2_train_var"  # lstm: an old run
        config["model"] = {"name": model, f"{model}_specific_setting_with_a_long_name": [512 + i] * 6,
                           f"{model}_depth": i + 1, "dropout_of_the_very_long_named_layer": 0.1 * i}
        (dst / "config.yaml").write_text(yaml.safe_dump(config))
        _set_val(dst, val_r2=-1234567.891 * (i + 1), val_r2_near_constant_as_1=-132.03731)
    return zoo


def test_a_zoo_table_fits_in_120_columns_with_one_number_format(runs: Path, tmp_path: Path) -> None:
    """Model-specific keys (absent from the other runs' configs) and long values: the table stays within
    120 columns, no name column repeats the folder, numbers have 4 significant digits, the keys that do
    not fit are named below the table and --json has them all."""
    zoo = _zoo(runs, tmp_path)
    for run, value in [("run-mlp", 0.61234567), ("run-squeezeformer", 0.7034), ("run-lstm", None)]:
        _set_val(zoo / run, val_r2_train_var=value)  # run-lstm: an older run without the headline metric
    result = _ls(str(zoo), "--sort", "name")
    assert result.returncode == 0, result.stderr
    *table, note, last = result.stdout.strip().splitlines()
    assert max(len(line) for line in [*table, note]) <= 120, table
    header = table[0]
    assert header.split()[0] == "run" and " name " not in header and "Kaggle R²" in header
    columns = re.split(r"\s{2,}", header.strip())
    shown = columns[1 : columns.index("R²")]
    assert "dropout_of_the_ve…" in shown and "model" not in " ".join(shown)  # short key names, cut
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert set(rows) == {"run-mlp", "run-squeezeformer", "run-lstm"}
    assert "0.6123" in rows["run-mlp"] and "-1.235e+06" in rows["run-mlp"]  # headline, Kaggle R² beside it
    assert "0.7034" in rows["run-squeezeformer"] and "-2.469e+06" in rows["run-squeezeformer"]
    assert "-3.704e+06" in rows["run-lstm"]  # an old run: its select_metric (val_r2) as the headline
    assert not any(cell.endswith("0373") or "e+03" in cell for row in rows.values() for cell in row)
    hidden = int(note[2:].split()[0])
    assert note.startswith("(+") and "differing keys, all in --json: " in note
    listed = {r["run"]: r for r in json.loads(_ls(str(zoo), "--json").stdout)}
    differs = listed["run-mlp"]["differs"]
    assert len(shown) + hidden == len(differs) == 10, (shown, differs)
    assert differs["model.mlp_specific_setting_with_a_long_name"] == [512] * 6
    assert "model.squeezeformer_depth" in differs and differs["model.squeezeformer_depth"] is None
    assert (listed["run-mlp"]["headline"], listed["run-lstm"]["headline"]) == ("val_r2_train_var", "val_r2")
    assert listed["run-mlp"]["r2"] == pytest.approx(0.61234567)
    assert listed["run-mlp"]["kaggle_r2"] == pytest.approx(-1234567.891)
    assert json.loads(last)["best"]["run"] == "run-squeezeformer"


def test_old_runs_show_their_select_metric_under_best_r2(runs: Path, tmp_path: Path) -> None:
    """Runs that recorded no val_r2_train_var: no Kaggle R² column, `best R²` is their select_metric."""
    old = tmp_path / "old"
    for name in ("done", "stopped"):
        shutil.copytree(runs / name, old / name)
        config = (old / name / "config.yaml").read_text().replace("select_metric: val_r2_train_var", "")
        (old / name / "config.yaml").write_text(config + "select_metric: val_r2\n")
        _set_val(old / name, val_r2_train_var=None, val_r2=-132.03731 if name == "done" else -1247.3)
    result = _ls(str(old), "--sort", "name")
    assert result.returncode == 0, result.stderr
    table = result.stdout.strip().splitlines()[:-1]
    assert table[0].split() == ["run", "best", "R²", "last", "R²", "ckpts", "status"]
    assert table[1].split()[1:3] == ["-132", "-132"] and table[2].split()[1:3] == ["-1247", "-1247"]

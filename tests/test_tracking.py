"""MLflow tracking of training runs, against a real MLflow file store read back with MlflowClient."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_runs import TINY_CONFIG, tiny_overrides
from tfpipe.config import TrackingConfig, changed_fields, config_to_dict, load_config

pytestmark = pytest.mark.scenario  # multi-process choreography: runs in `make test` only

ROOT = Path(__file__).resolve().parents[1]


def _config(encoded: Path, run: Path, *extra: str):
    return load_config(ROOT / TINY_CONFIG, tiny_overrides(encoded, run, *extra))


def _client(store: Path):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store.as_uri())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tracked(tiny_encoded: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tracked run trained in two sessions (stopped after one sub-epoch, then resumed with another
    tracking.experiment, which must not count as a config change); what MLflow held after each."""
    from tfpipe.train import train
    from tfpipe.train.tracking import read_record

    tmp = tmp_path_factory.mktemp("tracked")
    store, run = tmp / "mlruns", tmp / "runs" / "a"
    first = _config(tiny_encoded, run, "tracking.backend=mlflow", f"tracking.uri={store}")
    train(first, verbose=0, stop_after_sub_epochs=1)
    record = read_record(str(run))
    after_first = _client(store).get_run(record["run_id"])
    (run / "score").mkdir()
    (run / "score" / "r2_per_target.csv").write_text("target,r2\nptend_t_0,0.5\n")
    second = _config(tiny_encoded, run, "tracking.backend=mlflow", f"tracking.uri={store}",
                     "tracking.experiment=elsewhere")  # fmt: skip
    summary = train(second, verbose=0)
    return {"store": store, "run": run, "first": record, "after_first": after_first,
            "second": read_record(str(run)), "summary": summary}  # fmt: skip


def test_a_run_logs_its_config_metrics_and_files(tracked: dict) -> None:
    client, run_id = _client(tracked["store"]), tracked["second"]["run_id"]
    run = client.get_run(run_id)
    params = run.data.params
    assert (params["model.name"], params["data.batch_size"], params["tracking.backend"]) == (
        "mlp",
        "128",
        "mlflow",
    )
    assert params["model.mlp_units"] == "[32]" and params["data.sources.0.weight"] == "1.0"
    with open(tracked["run"] / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    history = client.get_metric_history(run_id, "val_r2")
    assert [m.step for m in history] == [int(r["step"]) for r in rows] and len(rows) == 2
    assert [m.value for m in history] == pytest.approx([float(r["val_r2"]) for r in rows], rel=1e-5)
    assert {
        "loss",
        "lr",
        "val_r2_near_constant_as_1",
        "epoch",
        "sub_epoch",
        "best_r2",
    } <= run.data.metrics.keys()
    assert run.data.metrics["best_r2"] == pytest.approx(tracked["summary"]["best_r2"])
    files = {f.path for f in client.list_artifacts(run_id)} | {
        f.path for f in client.list_artifacts(run_id, "score")
    }
    assert {"best.keras", "metrics.csv", "config.yaml", "stats.json", "score/r2_per_target.csv"} <= files
    assert run.info.run_name == "a" and run.data.tags["tfpipe.run_dir"] == str(tracked["run"].resolve())


def test_a_resumed_run_continues_its_mlflow_run_and_ends_as_its_status(tracked: dict) -> None:
    client = _client(tracked["store"])
    first, second = tracked["first"], tracked["second"]
    assert second == first  # same run id, same store; the new tracking.experiment applies to new runs only
    after_first = tracked["after_first"]
    assert (after_first.info.status, after_first.data.tags["tfpipe.state"]) == ("KILLED", "stopped")
    assert after_first.data.tags["tfpipe.detail"] == "stop-after-sub-epochs"
    run = client.get_run(first["run_id"])
    assert (run.info.status, run.data.tags["tfpipe.state"]) == ("FINISHED", "finished")
    assert client.get_experiment(run.info.experiment_id).name == "tfpipe"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert client.get_experiment_by_name("elsewhere") is None
    assert tracked["summary"]["resumed_from"] == "ckpt-1" and tracked["summary"]["finished"]


def test_runs_trained_inside_a_study_run_are_nested_under_it(
    tiny_encoded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """study_run (what tfpipe sweep wraps a study in) with an in-process train inside (an empty
    tracking.uri: the study's store), stopped by the caller's hook (a pruner) after MLflow logged its
    row; then one nested through nested_under (how a sweep's child process is given its parent run id)."""
    import mlflow

    from tfpipe.experiments.study_tracking import study_run
    from tfpipe.train import train
    from tfpipe.train.tracking import nested_under, read_record

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "mlruns"
    seen: list[dict] = []
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store needs it with MLflow 3
    before = dict(os.environ)
    with study_run(TrackingConfig(backend="mlflow", uri=str(store), experiment="sweep"), "study-1") as parent:
        assert mlflow.active_run().info.run_id == parent
        a = _config(tiny_encoded, tmp_path / "a", "tracking.backend=mlflow", "tracking.experiment=sweep")
        train(a, verbose=0, on_checkpoint=lambda row: seen.append(row) or "pruned")
    assert mlflow.active_run() is None
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the study's store was the default inside only
    assert dict(os.environ) == before  # no private variables, no HTTP settings left behind
    b = _config(tiny_encoded, tmp_path / "b", "tracking.backend=mlflow", f"tracking.uri={store}")
    with nested_under(parent):
        train(b, verbose=0, stop_after_sub_epochs=1)
    client = _client(store)
    study = client.get_run(parent)
    assert (study.info.status, study.info.run_name) == ("FINISHED", "study-1")
    children = [client.get_run(read_record(str(tmp_path / n))["run_id"]) for n in ("a", "b")]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent
        assert child.info.experiment_id == study.info.experiment_id
    assert (children[0].info.status, children[0].data.tags["tfpipe.detail"]) == ("KILLED", "pruned")
    assert len(seen) == 1 and len(client.get_metric_history(children[0].info.run_id, "val_r2")) == 1


def test_study_run_is_a_no_op_without_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tfpipe.experiments.study_tracking import study_run

    monkeypatch.chdir(tmp_path)
    with study_run(TrackingConfig(), "study") as parent:
        assert parent is None
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_server_is_one_error_before_training(tiny_encoded: Path, tmp_path: Path) -> None:
    from tfpipe.experiments.study_tracking import study_run
    from tfpipe.train import train
    from tfpipe.train.tracking import TrackingError

    uri = f"http://127.0.0.1:{_closed_port()}"
    config = _config(tiny_encoded, tmp_path / "run", "tracking.backend=mlflow", f"tracking.uri={uri}")
    with pytest.raises(TrackingError, match=f"tracking.uri {uri}: the MLflow tracking server is unreachable"):
        train(config, verbose=0)
    assert not (tmp_path / "run").exists()
    with pytest.raises(TrackingError, match="unreachable"), study_run(config.tracking, "study"):
        pass
    result = subprocess.run(
        [sys.executable, "-m", "tfpipe.train", "--config", str(ROOT / TINY_CONFIG),
         *tiny_overrides(tiny_encoded, tmp_path / "cli"), "tracking.backend=mlflow", f"tracking.uri={uri}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"python -m tfpipe.train: error: tracking.uri {uri}: the MLflow tracking server is unreachable ("
    ), lines


def test_tracking_settings_and_the_old_mlflow_flag(tmp_path: Path) -> None:
    """`mlflow: true` of an older config is tracking.backend mlflow; tracking keys are no config change."""
    old = tmp_path / "old.yaml"
    old.write_text("mlflow: true\nname: old\n")
    config = load_config(old)
    assert config.tracking == TrackingConfig(backend="mlflow", uri="", experiment="tfpipe")
    assert load_config(old, ["tracking.uri=http://host:5000"]).tracking.uri == "http://host:5000"
    saved = config_to_dict(dataclasses.replace(config, tracking=TrackingConfig()))
    legacy = {k: v for k, v in saved.items() if k != "tracking"} | {"mlflow": False}
    now = config_to_dict(
        dataclasses.replace(config, tracking=TrackingConfig("mlflow", "sqlite:///x.db", "e"))
    )
    assert changed_fields(saved, now) == [] and changed_fields(legacy, now) == []
    assert json.loads(json.dumps(config_to_dict(config)))["tracking"]["backend"] == "mlflow"


def test_a_sqlite_store_keeps_artifacts_beside_its_database(
    tiny_encoded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tracking.uri sqlite:///DIR/mlflow.db: the files go to DIR/mlartifacts/EXPERIMENT, not ./mlruns of
    the current folder; MLflow's HTTP settings are not left in the environment."""
    from tfpipe.train import train
    from tfpipe.train.tracking import HTTP_LIMITS, read_record

    for name in HTTP_LIMITS:
        monkeypatch.delenv(name, raising=False)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    (tmp_path / "db").mkdir()
    config = _config(tiny_encoded, tmp_path / "run", "tracking.backend=mlflow", f"tracking.uri={uri}",
                     "tracking.experiment=lite")  # fmt: skip
    train(config, verbose=0, stop_after_sub_epochs=1)
    assert list(elsewhere.iterdir()) == [] and not any(name in os.environ for name in HTTP_LIMITS)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(read_record(str(tmp_path / "run"))["run_id"])
    assert run.info.artifact_uri.startswith((tmp_path / "db" / "mlartifacts" / "lite").as_uri())
    logged = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"metrics.csv", "config.yaml"} <= logged
    assert (tmp_path / "db" / "mlartifacts" / "lite" / run.info.run_id / "artifacts" / "metrics.csv").is_file()

"""``tfpipe export-models``, ``tfpipe predict --models`` and ``tfpipe blend --pred-dir`` on two tiny runs.

The runs train once, in-process (module fixture); the commands whose contract is the command line
(exit codes, one-line errors, the JSON line) run as subprocesses (``export-models`` and ``blend``
import no TensorFlow: about a second each; ``predict --models`` once); the rest runs in-process.

Predictions are compared bit for bit: the same float32 batches through the same XLA-compiled graph
of the same weights (restored from a checkpoint or loaded from a ``.keras`` copy) give the same
float32 outputs, and the float64 post-processing is per row. ``predict --models`` is even the same
parquet file, byte for byte, as predicting the model alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tiny_runs import TINY_CONFIG, tiny_overrides

from tfpipe import storage
from tfpipe.experiments.model_set import INDEX, ModelSetError, read_index

ROOT = Path(__file__).resolve().parents[1]
TFPIPE = Path(sys.executable).parent / "tfpipe"


def tfpipe(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(TFPIPE), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def last_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def one_line_error(result: subprocess.CompletedProcess, command: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tfpipe {command}: error: "), lines
    return lines[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(tiny_encoded: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished tiny runs, ``RUNS/a`` and ``RUNS/b`` (another seed and width), trained in-process."""
    from tfpipe.config import load_config
    from tfpipe.train import train

    root = tmp_path_factory.mktemp("zoo") / "runs"
    for name, extra in (("a", []), ("b", ["seed=4", "model.mlp_units=[16]"])):
        config = load_config(TINY_CONFIG, tiny_overrides(tiny_encoded, root / name, *extra))
        assert train(config, verbose=0)["finished"]
    return root


@pytest.fixture(scope="module")
def models(runs: Path) -> Path:
    """``export-models --select best:2`` of the two runs."""
    out = runs.parent / "models"
    summary = last_json(tfpipe("export-models", "--runs", runs, "--select", "best:2", "--out", out))
    assert summary["out"] == str(out) and summary["index"] == str(out / INDEX)
    return out


def best_r2(run: Path) -> float:
    record = json.loads((run / "best.json").read_text())
    return record[record["metric"]]


def test_export_best_k_and_by_name(runs: Path, models: Path, tmp_path: Path) -> None:
    order = sorted(["a", "b"], key=lambda n: -best_r2(runs / n))
    index = read_index(str(models))
    assert [m["name"] for m in index["models"]] == order
    assert (index["kind"], index["version"], index["schema"], index["select"]) == (
        "tfpipe-model-set", 1, "kaggle", "best:2"
    )  # fmt: skip
    assert sorted(p.name for p in models.iterdir()) == sorted(
        [INDEX] + [f"{n}{s}" for n in "ab" for s in (".keras", ".config.yaml", ".stats.json")]
    )
    for entry in index["models"]:
        run, name = runs / entry["name"], entry["name"]
        assert (
            entry["best_r2"] == best_r2(run) and entry["run_dir"] == str(run) and entry["state"] == "finished"
        )
        assert entry["best_checkpoint"] == json.loads((run / "best.json").read_text())["checkpoint"]
        assert entry["params"] == {
            "model.mlp_units": [32 if name == "a" else 16],
            "seed": 3 if name == "a" else 4,
        }
        for kind, source in (("model", "best.keras"), ("config", "config.yaml"), ("stats", "stats.json")):
            copy = models / entry["files"][kind]["file"]
            assert copy.read_bytes() == (run / source).read_bytes()
            assert (
                entry["files"][kind]["sha256"] == sha(copy)
                and entry["files"][kind]["bytes"] == copy.stat().st_size
            )

    by_name = tmp_path / "by-name"
    summary = last_json(tfpipe("export-models", "--runs", runs, "--select", "b,a", "--out", by_name))
    assert summary["models"] == ["b", "a"] and summary["best_r2"] == [
        best_r2(runs / "b"),
        best_r2(runs / "a"),
    ]
    again = read_index(str(by_name))
    assert [m["name"] for m in again["models"]] == ["b", "a"] and again["select"] == "b,a"
    assert (by_name / "a.keras").read_bytes() == (models / "a.keras").read_bytes()


def test_bad_selections_exit_2_with_one_line(runs: Path, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(runs / "a", mixed / "a")
    shutil.copytree(runs / "b", mixed / "grid" / "v1run")  # a nested run: its name is grid-v1run
    config_file = mixed / "grid" / "v1run" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["data"]["schema"] = "v1"
    config_file.write_text(yaml.safe_dump(config))
    (mixed / "fresh").mkdir()  # a run that has not scored a checkpoint yet: not exportable
    (mixed / "fresh" / "config.yaml").write_text((runs / "a" / "config.yaml").read_text())
    out = tmp_path / "out"
    cases = [
        (runs, "best:3", "--select best:3: " + f"{runs} has only 2 run(s) with a best.keras and a best_r2"),
        (runs, "a,c", f"--runs {runs}: no run named 'c' with a best.keras (there are: a, b)"),
        (runs, "best:0", "--select 'best:0': best:K needs a whole number K >= 1"),
        (runs, "a,,b", "--select 'a,,b': give best:K or run names separated by commas"),
        (mixed, "best:3", f"{mixed} has only 2 run(s) with a best.keras"),
        (mixed, "fresh", "no run named 'fresh' with a best.keras (there are: a, grid-v1run)"),
        (mixed, "a,grid/v1run", "the runs have different schemas (a: kaggle, grid-v1run: v1); a set has one"),
        (tmp_path / "nope", "best:1", f"--runs {tmp_path / 'nope'}: no such folder"),
    ]
    for root, select, needle in cases:
        line = one_line_error(
            tfpipe("export-models", "--runs", root, "--select", select, "--out", out), "export-models"
        )
        assert needle in line, (select, line)
    assert not out.exists()  # nothing was written by a refused export
    line = one_line_error(
        tfpipe("export-models", "--runs", runs, "--select", "a", "--out", out, "--metric", "loss"),
        "export-models",
    )
    assert "invalid choice: 'loss'" in line


def test_the_index_is_written_last(runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export that dies half-way leaves the folder's previous index, and files it names, as they were."""
    import tfpipe.experiments.export_models as export
    from tfpipe.experiments.predict_set import load_model_set

    out = tmp_path / "set"
    export.export_models(str(runs), "a", str(out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    copy, calls = export._copy, []

    def dies_at_the_fourth_file(src: str, dst: str) -> dict:
        calls.append(dst)
        if len(calls) == 4:  # b's three files are written, then the process is interrupted
            raise KeyboardInterrupt
        return copy(src, dst)

    monkeypatch.setattr(export, "_copy", dies_at_the_fourth_file)
    with pytest.raises(KeyboardInterrupt):
        export.export_models(str(runs), "b,a", str(out))
    assert [Path(c).name for c in calls] == ["b.keras", "b.config.yaml", "b.stats.json", "a.keras"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old index, old files, no b.*
    monkeypatch.undo()

    summary = export.export_models(str(runs), "b,a", str(out))
    assert summary["models"] == ["b", "a"] and summary["removed"] == []
    summary = export.export_models(str(runs), "b", str(out))  # a smaller set: a's files go, after the index
    assert summary["removed"] == ["a.config.yaml", "a.keras", "a.stats.json"]
    assert sorted(p.name for p in out.iterdir()) == ["b.config.yaml", "b.keras", "b.stats.json", INDEX]

    shutil.copyfile(runs / "a" / "best.keras", out / "b.keras")  # a file replaced under its index
    with pytest.raises(ValueError, match="b.keras: its sha256 is not the one its index records"):
        load_model_set(str(out))
    (out / INDEX).write_text("{}")
    with pytest.raises(ModelSetError, match="not a model set index"):
        read_index(str(out))


def test_exported_models_predict_like_their_checkpoints(
    runs: Path, models: Path, tiny_encoded: Path, tmp_path: Path
) -> None:
    from tfpipe.predict import predict

    for name in ("a", "b"):
        best = json.loads((runs / name / "best.json").read_text())["checkpoint"]
        predict(str(runs / name / best), str(tiny_encoded), str(tmp_path / f"{name}.ckpt.parquet"))
        summary = predict(str(models / f"{name}.keras"), str(tiny_encoded), str(tmp_path / f"{name}.parquet"))
        assert summary["rows"] == 1536
        ckpt, exported = (pd.read_parquet(tmp_path / f"{name}{s}.parquet") for s in (".ckpt", ""))
        pd.testing.assert_frame_equal(ckpt, exported, check_exact=True)


def test_predict_models_equals_each_model_alone_and_blends(
    runs: Path, models: Path, tiny_encoded: Path, tmp_path: Path
) -> None:
    from tfpipe.experiments.predict_set import predict_models
    from tfpipe.predict import predict

    pred = tmp_path / "pred"
    summary = last_json(
        tfpipe("predict", "--models", models, "--data", tiny_encoded, "--out-dir", pred, "--quiet")
    )
    assert summary["rows"] == 1536 and summary["batch_size"] == 128 and set(summary["models"]) == {"a", "b"}
    assert sorted(p.name for p in pred.iterdir()) == ["a.parquet", "b.parquet"]
    for name in ("a", "b"):  # the model's own config beside it gives the same default batch size
        alone = tmp_path / f"{name}.alone.parquet"
        predict(str(models / f"{name}.keras"), str(tiny_encoded), str(alone))
        assert alone.read_bytes() == (pred / f"{name}.parquet").read_bytes()

    oof = tmp_path / "oof"  # the models' common validation files, with their truth
    summary = predict_models(str(models), None, str(oof), oof=True)
    assert summary["rows"] == 384 and summary["truth"] == str(oof / "truth.parquet")
    single = predict(str(runs / "a"), None, str(tmp_path / "a.oof.parquet"), oof=True)
    assert (oof / "a.parquet").read_bytes() == (tmp_path / "a.oof.parquet").read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(oof / "truth.parquet"), pd.read_parquet(single["truth"]))

    # Fit a blend on the out-of-fold set (truth found beside it), apply it to the test set: a submission.
    report = last_json(
        tfpipe("blend", "--pred-dir", oof, "--method", "hill-climb", "--out", tmp_path / "b.oof.parquet")
    )
    # fitted on the runs' own headline metric (the truth carries the training std): never below an input
    assert report["models"] == ["a", "b"] and report["objective"] == "r2_train_var"
    assert report["fit"]["blend"] >= max(report["fit"]["a"], report["fit"]["b"]) - 1e-9
    for name in ("a", "b"):
        assert report["fit"][name] == pytest.approx(best_r2(runs / name), rel=1e-6)
    spec = report["spec"]
    sub = last_json(tfpipe("blend", "--apply", spec, "--pred-dir", pred, "--out", tmp_path / "sub.parquet"))
    assert sub["matched"] == {"a": str(pred / "a.parquet"), "b": str(pred / "b.parquet")}
    swapped = last_json(tfpipe("blend", "--apply", spec, "--pred", pred / "b.parquet", pred / "a.parquet",
                               "--out", tmp_path / "sub2.parquet"))  # fmt: skip
    assert swapped["matched"] == sub["matched"]  # the file list form, in any order: matched by name
    assert (tmp_path / "sub.parquet").read_bytes() == (tmp_path / "sub2.parquet").read_bytes()
    blended = pd.read_parquet(tmp_path / "sub.parquet")
    weights = json.loads(Path(spec).read_text())["weights"]
    expected = sum(
        w * pd.read_parquet(pred / f"{n}.parquet").iloc[:, 1:].to_numpy()
        for w, n in zip(weights, "ab", strict=True)
    )
    np.testing.assert_allclose(blended.iloc[:, 1:].to_numpy(), expected, rtol=1e-12, atol=0)

    other = tmp_path / "other-set"  # the predictions of another model set: an error, not a positional match
    other.mkdir()
    for old, new in (("a", "c"), ("b", "b")):
        (other / f"{new}.parquet").write_bytes((pred / f"{old}.parquet").read_bytes())
    line = one_line_error(
        tfpipe("blend", "--apply", spec, "--pred-dir", other, "--out", tmp_path / "x.parquet"), "blend"
    )
    assert "missing: ['a'], not in the spec: ['c']" in line

    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_line_error(
        tfpipe("blend", "--pred-dir", empty, "--method", "equal", "--out", tmp_path / "x.parquet"), "blend"
    )
    assert line.endswith(f"--pred-dir {empty}: no prediction files (NAME.parquet) in it")
    line = one_line_error(
        tfpipe("predict", "--models", models, "--data", tiny_encoded, "--out", tmp_path / "x.parquet"),
        "predict",
    )
    assert "--models writes one file per model: give --out-dir DIR, not --out" in line


def test_export_and_predict_a_set_on_gcs(
    runs: Path, tiny_encoded: Path, tmp_path: Path, gcs, monkeypatch
) -> None:
    """Runs on gs://, the set on gs://: found, copied and read back through tfpipe.storage."""
    from tfpipe.experiments.export_models import export_models
    from tfpipe.experiments.predict_set import predict_models
    from tfpipe.predict import predict

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    monkeypatch.setenv("TFPIPE_GCS_DEADLINE_S", "5")
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    storage.reset_clients()
    bucket = f"tfpipe-zoo-{uuid.uuid4().hex[:8]}"
    gcs.create_bucket(bucket)
    for path in (runs / "b").rglob("*"):
        if path.is_file() and "tb" not in path.parts:
            storage.upload_file(path, f"gs://{bucket}/runs/{path.relative_to(runs)}")
    try:
        summary = export_models(f"gs://{bucket}/runs", "best:1", f"gs://{bucket}/models")
        assert summary["models"] == ["b"]
        assert storage.read_bytes(f"gs://{bucket}/models/b.keras") == (runs / "b" / "best.keras").read_bytes()
        assert read_index(f"gs://{bucket}/models")["models"][0]["run_dir"] == f"gs://{bucket}/runs/b"
        predict_models(f"gs://{bucket}/models", str(tiny_encoded), str(tmp_path / "pred"), batch_size=512)
        predict(
            str(runs / "b" / "best.keras"), str(tiny_encoded), str(tmp_path / "b.parquet"), batch_size=512
        )
        assert (tmp_path / "pred" / "b.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    finally:
        storage.reset_clients()


HELP_PROBE = """
import json, runpy, sys
sys.argv = ["tfpipe.cli.main", *sys.argv[1:]]
try:
    runpy.run_module("tfpipe.cli.main", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "heavy": [m for m in ("tensorflow", "keras", "optuna", "ray", "mlflow") if m in sys.modules]}))
"""


def test_help_loads_no_tensorflow() -> None:
    for args in (["export-models", "--help"], ["predict", "--help"], ["blend", "--help"]):
        result = subprocess.run(
            [sys.executable, "-c", HELP_PROBE, *args], capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        lines = result.stdout.strip().splitlines()
        assert json.loads(lines[-1]) == {"code": 0, "heavy": []}, (args, result.stderr[-2000:])
        assert "usage:" in result.stdout
    assert "--pred-dir" in result.stdout

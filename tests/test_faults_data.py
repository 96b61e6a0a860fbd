"""The fault suite, data side: damaged part files, malformed gs:// URLs, a bad grid file, a full disk,
kill -9 at a publish point, and one source folder spelled two ways.

Every case runs the real command in a subprocess. A bad input must give exit code 2 and one line on
stderr naming the file and the problem, and write nothing; a killed command's re-run must leave no
temporary file. The data is a copy of a small encoded set (2 files of 2 records) damaged per test; the
model is one tiny run trained once in-process and exported as a one-model set.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tiny_runs import TINY_CONFIG, tiny_overrides

from data_prep.encode import EncodeConfig, encode_shard
from data_prep.stats import compute_stats
from tfpipe.data.manifest import read_manifests
from tfpipe.storage import staging

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TEMPS = "*tfpipe-tmp*"


def run(
    *args: object, cwd: Path = ROOT, preexec_fn: Callable | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [PY, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300, env=env,
        preexec_fn=preexec_fn,
    )  # fmt: skip


def one_line(result: subprocess.CompletedProcess, *names: str) -> str:
    """The one stderr line of a refused command (exit 2), which must name each of ``names``."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0], lines
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def data(small_raw_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``small_raw_tree`` encoded into 2 part files of 2 records each, with its stats.json."""
    dst = tmp_path_factory.mktemp("faults-data") / "enc"
    encode_shard(EncodeConfig(str(small_raw_tree), str(dst), 0, 1, blocks_per_file=2, progress=False))
    (dst / "stats.json").write_text(compute_stats(str(dst)).to_json())
    return dst


@pytest.fixture(scope="module")
def run_dir(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run on ``data`` (``RUNS/a``), trained in-process."""
    from tfpipe.config import load_config
    from tfpipe.train import train

    out = tmp_path_factory.mktemp("faults-data-runs") / "runs" / "a"
    assert train(load_config(TINY_CONFIG, tiny_overrides(data, out)), verbose=0)["finished"]
    return out


@pytest.fixture(scope="module")
def models(run_dir: Path) -> Path:
    """``export-models`` of the run: a one-model set."""
    out = run_dir.parent.parent / "models"
    result = run("-m", "tfpipe.cli.main", "export-models", "--runs", run_dir.parent, "--select", "a", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def damaged_copy(data: Path, tmp_path: Path, damage: Callable[[Path], None]) -> tuple[Path, Path]:
    """(a copy of ``data``, its first part file) after ``damage`` of that file."""
    copy = tmp_path / "enc"
    shutil.copytree(data, copy)
    victim = sorted(copy.glob("part-*.tfrecord"))[0]
    damage(victim)
    return copy, victim


def cut_at_a_record_boundary(path: Path) -> None:
    """Keep the first record of the file: a cut that reads as a shorter, valid TFRecord file."""
    content = path.read_bytes()
    (length,) = struct.unpack_from("<Q", content, 0)
    end = 12 + length + 4
    assert end < len(content)
    path.write_bytes(content[:end])


def flip_a_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))


def reader_commands(data: Path, run_dir: Path, models: Path, out: Path) -> dict[str, list[object]]:
    """Every command that reads encoded data, on ``data``."""
    train = ["-m", "tfpipe.train", "--config", TINY_CONFIG, *tiny_overrides(data, out / "run"), "--quiet"]
    return {
        "predict": ["-m", "tfpipe.predict", "--checkpoint", run_dir, "--data", data, "--out", out / "p.parquet",
                    "--quiet"],
        "predict --allow-partial": ["-m", "tfpipe.predict", "--checkpoint", run_dir, "--data", data,
                                    "--out", out / "p.parquet", "--allow-partial", "--quiet"],
        "predict --models": ["-m", "tfpipe.predict", "--models", models, "--data", data, "--out-dir", out / "set",
                             "--quiet"],
        "export": ["-m", "tfpipe.cli.main", "export", "--data", data, "--out", out / "x.parquet"],
        "stats": ["-m", "data_prep.stats", "--data", data, "--out", out / "stats.json", "--no-progress"],
        "train": train,
    }  # fmt: skip


@pytest.mark.cli
def test_a_part_file_cut_at_a_record_boundary_is_refused_by_every_reader(
    data: Path, run_dir: Path, models: Path, tmp_path: Path
) -> None:
    damaged, victim = damaged_copy(data, tmp_path, cut_at_a_record_boundary)
    out = tmp_path / "out"
    commands = reader_commands(damaged, run_dir, models, out)
    # predict --oof reads the run's own data (its validation files): a copy of the run on the damaged set
    oof_run = tmp_path / "oof-run"
    shutil.copytree(run_dir, oof_run)
    config = oof_run / "config.yaml"
    config.write_text(config.read_text().replace(str(data), str(damaged)))
    oof = ["-m", "tfpipe.predict", "--checkpoint", oof_run, "--oof", "--out", out / "o.parquet", "--quiet"]
    commands["predict --oof"] = oof
    for name, command in commands.items():
        line = one_line(run(*command), str(victim), "bytes")
        assert "re-encode" in line, (name, line)
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


@pytest.mark.cli
def test_a_cut_part_file_on_gcs_is_refused_from_the_listing(
    data: Path, tmp_path: Path, gcs, monkeypatch
) -> None:
    from tfpipe import storage

    damaged, victim = damaged_copy(data, tmp_path, cut_at_a_record_boundary)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    gcs.create_bucket(bucket)
    for path in damaged.iterdir():
        storage.upload_file(str(path), f"gs://{bucket}/enc/{path.name}")
    data_url, out = f"gs://{bucket}/enc", tmp_path / "s.json"
    result = run("-m", "data_prep.stats", "--data", data_url, "--out", out, "--no-progress", env=gcs.env())
    one_line(result, f"gs://{bucket}/enc/{victim.name}", "bytes")
    assert not (tmp_path / "s.json").exists()


@pytest.mark.cli
def test_a_bit_flip_in_a_part_file_is_one_line_naming_it_in_predict(
    data: Path, run_dir: Path, models: Path, tmp_path: Path
) -> None:
    damaged, victim = damaged_copy(data, tmp_path, flip_a_byte)
    out = tmp_path / "out"
    commands = reader_commands(damaged, run_dir, models, out)
    for name in ("predict", "predict --models", "export", "stats"):
        one_line(run(*commands[name]), str(victim), "corrupted")
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


@pytest.mark.cli
def test_gs_urls_without_a_bucket_are_refused_by_every_command(
    data: Path, run_dir: Path, small_raw_tree: Path, tmp_path: Path
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cases = {
        "encode --dst gs://": ["-m", "data_prep.encode", "--src", small_raw_tree, "--dst", "gs://", "--shard", "0",
                               "--num-shards", "1"],
        "train --run-dir gs://": ["-m", "tfpipe.train", "--config", ROOT / TINY_CONFIG, *tiny_overrides(data),
                                  "--run-dir", "gs://"],
        "train run_dir=gs://": ["-m", "tfpipe.train", "--config", ROOT / TINY_CONFIG,
                                *tiny_overrides(data, "gs://")],
        "predict --out gs:/x": ["-m", "tfpipe.predict", "--checkpoint", run_dir, "--data", data,
                                "--out", "gs:/b/p.parquet", "--quiet"],
        "export --out gs://": ["-m", "tfpipe.cli.main", "export", "--data", data, "--out", "gs:///x.parquet"],
        "stats --data gs:": ["-m", "data_prep.stats", "--data", "gs:", "--out", "s.json"],
    }  # fmt: skip
    for name, command in cases.items():
        line = one_line(run(*command, cwd=cwd))
        assert "gs://" in line or "gs:" in line, (name, line)
        assert "bucket" in line or "not a gs:// URL" in line, (name, line)
    assert list(cwd.iterdir()) == []  # no local folder ./gs: and nothing else


@pytest.mark.cli
@pytest.mark.parametrize("content", [b"", b"CDF\x01 not really netCDF"], ids=["empty", "garbage"])
def test_a_damaged_grid_file_is_refused_by_encode(
    small_raw_tree: Path, tmp_path: Path, content: bytes
) -> None:
    src = tmp_path / "raw"
    shutil.copytree(small_raw_tree, src)
    (src / "grid-info.nc").write_bytes(content)
    dst = tmp_path / "enc"
    result = run("-m", "data_prep.encode", "--src", src, "--dst", dst, "--shard", "0", "--num-shards", "1",
                 "--no-progress")  # fmt: skip
    one_line(result, str(src / "grid-info.nc"), "grid file")
    assert not [p for p in dst.rglob("*") if p.is_file()]


@contextlib.contextmanager
def small_disk(folder: Path) -> Iterator[Callable | None]:
    """A 1 MiB filesystem at ``folder`` (tmpfs, where this user may mount); else a 1 MiB limit on the
    size of any file the command writes (RLIMIT_FSIZE: EFBIG instead of ENOSPC). Yields the
    subprocess's ``preexec_fn`` (None with tmpfs)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0  # fmt: skip

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    try:
        yield None if mounted else limit
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.cli
@pytest.mark.parametrize("workers", [1, 2])
def test_encode_on_a_full_disk_is_one_line_naming_the_file(
    small_raw_tree: Path, tmp_path: Path, workers: int
) -> None:
    with small_disk(tmp_path / "disk") as preexec_fn:
        dst = tmp_path / "disk" / "enc"
        result = run("-m", "data_prep.encode", "--src", small_raw_tree, "--dst", dst, "--shard", "0",
                     "--num-shards", "1", "--workers", workers, "--blocks-per-file", "1", "--no-progress",
                     preexec_fn=preexec_fn)  # fmt: skip
        line = one_line(result, str(dst / "part-00000-of-00001-"), ".tfrecord")
        assert "No space left on device" in line or "File too large" in line, line
        assert not list(dst.glob("manifest-*")) and not list(dst.glob(TEMPS))


KILLED_AT_PUBLISH = """
import os, sys, time
from pathlib import Path
from tfpipe import storage
from tfpipe.storage import staging

publish_local = staging.publish_local

def paused(temp, target, overwrite=True):  # the test's SIGKILL comes here, the temps written whole
    name = os.path.basename(target)
    if os.path.dirname(os.path.abspath(target)) == sys.argv[2] and (
        (staging.temp_target(name) or name).endswith((".keras", ".parquet"))
    ):
        Path(sys.argv[1]).touch()
        while True:
            time.sleep(0.01)
    return publish_local(temp, target, overwrite)

storage.publish_local = staging.publish_local = paused
from tfpipe.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


def kill_at_publish(command: list[object], folder: Path, marker: Path) -> None:
    """Run the tfpipe ``command``, paused at its first publish of a .keras or .parquet file in ``folder``;
    SIGKILL it there."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [PY, "-c", KILLED_AT_PUBLISH, marker, folder, *command]
    proc = subprocess.Popen(list(map(str, argv)), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():  # the event: the command reached the publish point
            assert proc.poll() is None, f"ended ({proc.returncode}) before publishing: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no publish in 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


@pytest.mark.scenario
def test_kill_9_at_a_publish_point_leaves_no_temp_after_the_rerun(
    data: Path, run_dir: Path, models: Path, tmp_path: Path
) -> None:
    out, model_set = tmp_path / "out", tmp_path / "models"
    cases = {
        "predict": (["predict", "--checkpoint", run_dir, "--data", data, "--out", out / "p.parquet"], out),
        "predict --models": (["predict", "--models", models, "--data", data, "--out-dir", out], out),
        "export-models": (["export-models", "--runs", run_dir.parent, "--select", "a", "--out", model_set],
                          model_set),
    }  # fmt: skip
    for name, (command, folder) in cases.items():
        kill_at_publish(command, folder, tmp_path / f"{name}.published")
        left = sorted(p.name for p in folder.glob(TEMPS))
        assert left and all(n.count(staging.TEMP_MARK) == 1 for n in left), (name, left)
        result = run("-m", "tfpipe.cli.main", *command)
        assert result.returncode == 0, (name, result.stderr[-3000:])
        assert not list(folder.glob(TEMPS)), (name, sorted(p.name for p in folder.glob(TEMPS)))
    assert all(p.is_file() for p in (out / "p.parquet", out / "a.parquet", model_set / "a.keras"))


def test_publishing_removes_only_dead_writers_temps_and_never_doubles_the_suffix(tmp_path: Path) -> None:
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()  # a pid that no process has now (reaped)
    target = tmp_path / "best.keras"
    mine = Path(staging.local_temp_for(target))
    inner = staging.temp_name(mine.name)  # a copy staged into a staged file
    assert staging.temp_target(inner) == "best.keras" and inner.count(staging.TEMP_MARK) == 1
    dead_temp = tmp_path / mine.name.replace(f".{os.getpid()}-", f".{dead.pid}-")
    live_temp = tmp_path / mine.name.replace(f".{os.getpid()}-", f".{os.getppid()}-")
    other_host = tmp_path / f".best.keras.{dead.pid}-000000-00000000.tfpipe-tmp"
    other_target = tmp_path / dead_temp.name.replace("best.keras", "last.keras")
    for path in (dead_temp, live_temp, other_host, other_target):
        path.write_bytes(b"left")
    mine.write_bytes(b"model")
    staging.publish_local(str(mine), str(target))
    assert target.read_bytes() == b"model"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["best.keras", live_temp.name, other_host.name, other_target.name]
    )


@pytest.mark.cli
def test_one_source_folder_spelled_relative_and_absolute_is_one_source(
    small_raw_tree: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "enc"
    cwd = small_raw_tree.parent
    for shard, src in ((0, small_raw_tree.name), (1, str(small_raw_tree))):
        result = run("-m", "data_prep.encode", "--src", src, "--dst", dst, "--shard", shard, "--num-shards", "2",
                     "--no-progress", cwd=cwd)  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
    manifests = read_manifests(str(dst))
    assert [m.shard for m in manifests] == [0, 1]
    assert {m.source for m in manifests} == {os.path.realpath(small_raw_tree)}
    again = run("-m", "data_prep.encode", "--src", f"./{small_raw_tree.name}/", "--dst", dst, "--shard", "0",
                "--num-shards", "2", "--no-progress", cwd=cwd)  # fmt: skip
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1])["skipped"], (
        again.stderr
    )

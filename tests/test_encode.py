"""data_prep.encode: raw trees and Kaggle CSVs to TFRecord shards; export back to parquet."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import pytest

from data_prep.encode import EncodeConfig, EncodeError, encode_shard, list_raw_pairs
from data_prep.raw import read_pair
from tfpipe.data.manifest import Manifest, read_manifests
from tfpipe.data.schema import KAGGLE, NCOL
from tfpipe.evaluate.export import export_parquet

ROOT = Path(__file__).resolve().parents[1]


def run_encode(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data_prep.encode", "--no-progress", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def encode_all(src: Path | str, dst: Path | str, n: int, **kw) -> list:
    return [encode_shard(EncodeConfig(str(src), str(dst), i, n, progress=False, **kw)) for i in range(n)]


def tree_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def expected_frame(tree: Path) -> pd.DataFrame:
    """What the raw files say, computed directly with read_pair (float64)."""
    rows = []
    for mli, mlo in list_raw_pairs(str(tree), 1):
        raw = read_pair(mli, mlo, KAGGLE)
        frame = pd.DataFrame(np.concatenate([raw.inputs, raw.targets], axis=1), columns=KAGGLE.columns)
        frame.insert(0, "sample_id", [f"{raw.time.stamp}_{c}" for c in raw.ncol])
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)


def test_round_trip_matches_netcdf(small_raw_tree: Path, tmp_path: Path) -> None:
    summaries = encode_all(small_raw_tree, tmp_path / "enc", 2, blocks_per_file=1)
    assert [s.samples for s in summaries] == [2 * NCOL, 2 * NCOL]
    out = tmp_path / "all.parquet"
    summary = export_parquet(str(tmp_path / "enc"), str(out))
    assert summary["rows"] == 4 * NCOL
    got = pd.read_parquet(out).sort_values("sample_id").reset_index(drop=True)
    want = expected_frame(small_raw_tree).sort_values("sample_id").reset_index(drop=True)
    assert list(got.columns[:3]) == ["sample_id", "ncol", "time"]
    assert list(got.columns[3:]) == list(KAGGLE.columns)
    assert (got["sample_id"] == want["sample_id"]).all()
    assert (got["ncol"] == got["sample_id"].str.split("_").str[-1].astype(int)).all()
    assert sorted(got["ncol"]) == sorted(np.tile(np.arange(NCOL), 4))
    q = [c for c in KAGGLE.columns if c.startswith(("state_q0002_", "ptend_q0002_"))]  # kept in float64
    others = [c for c in KAGGLE.columns if c not in q]
    # float32 columns: exactly the float64 value rounded to float32 (0 ULP, within the 1 ULP promise)
    np.testing.assert_array_equal(got[others].to_numpy(), want[others].to_numpy().astype(np.float32))
    # q0002 (inputs and targets) to float64 precision, also the 1e-50 traces, and so the replacement rule
    np.testing.assert_array_equal(got[q].to_numpy(), want[q].to_numpy())
    assert (got[q].to_numpy() < 1e-40).any()
    rule = -got[[f"state_q0002_{k}" for k in range(12, 28)]].to_numpy() / 1200
    np.testing.assert_array_equal(rule, want[[f"ptend_q0002_{k}" for k in range(12, 28)]].to_numpy())


def test_sharding_covers_every_file_once(raw_tree: Path, tmp_path: Path) -> None:
    pairs = list_raw_pairs(str(raw_tree), 1)
    assert len(pairs) == 74
    encode_all(raw_tree, tmp_path / "enc", 5, blocks_per_file=4)
    manifests = read_manifests(str(tmp_path / "enc"))
    assert [m.shard for m in manifests] == list(range(5))
    seen = [f for m in manifests for f in m.source_files if ".mli." in f]
    assert sorted(seen) == sorted(os.path.relpath(m, raw_tree) for m, _ in pairs)
    assert len(seen) == len(set(seen))
    assert sum(m.samples for m in manifests) == 74 * NCOL


def test_stride_keeps_every_kth_step(raw_tree: Path, tmp_path: Path) -> None:
    (summary,) = encode_all(raw_tree, tmp_path / "enc", 1, stride=7)
    assert summary.samples == len(range(0, 74, 7)) * NCOL


def test_rerun_skips_and_overwrite_is_byte_identical(small_raw_tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "enc"
    first = encode_all(small_raw_tree, dst, 1, blocks_per_file=2)[0]
    assert not first.skipped and first.files == 2
    before = tree_files(dst)
    again = encode_all(small_raw_tree, dst, 1, blocks_per_file=2)[0]
    assert again.skipped
    redo = encode_all(small_raw_tree, dst, 1, blocks_per_file=2, overwrite=True)[0]
    assert not redo.skipped
    assert tree_files(dst) == before
    # a damaged file makes the manifest fail verification: the shard is redone, identically
    part = next(p for p in dst.iterdir() if p.name.startswith("part-"))
    part.write_bytes(part.read_bytes()[:100])
    assert not encode_all(small_raw_tree, dst, 1, blocks_per_file=2)[0].skipped
    assert tree_files(dst) == before
    # fewer, larger files on a redo: the old shard's extra files are removed
    encode_all(small_raw_tree, dst, 1, blocks_per_file=4, overwrite=True)
    names = sorted(p.name for p in dst.iterdir() if p.name.startswith("part-"))
    assert len(names) == 1 and re.fullmatch(r"part-00000-of-00001-00000-[0-9a-f]{8}\.tfrecord", names[0]), (
        names
    )


@pytest.mark.scenario
def test_killed_shard_rerun_equals_uninterrupted(raw_tree: Path, tmp_path: Path) -> None:
    args = ["--src", str(raw_tree), "--shard", "0", "--num-shards", "1", "--blocks-per-file", "2"]
    clean = tmp_path / "clean"
    assert run_encode(*args, "--dst", str(clean)).returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_prep.encode", "--no-progress", *args, "--dst", str(killed)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if killed.is_dir() and len([p for p in killed.iterdir() if p.name.startswith("part-")]) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(killed.glob("manifest-*")), "the kill came too late to test anything"
    with pytest.raises(ValueError, match="no encoded shards"):
        read_manifests(str(killed))  # a reader takes nothing from an unfinished shard

    result = run_encode(*args, "--dst", str(killed))
    assert result.returncode == 0, result.stderr
    assert tree_files(killed) == tree_files(clean)


def test_cli_contract_and_shard_from_environment(small_raw_tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "enc"
    result = run_encode(
        "--src", str(small_raw_tree), "--dst", str(dst), "--num-shards", "2", "--workers", "2",
        env={"JOB_COMPLETION_INDEX": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["shard"] == 1 and summary["samples"] == 2 * NCOL and not summary["skipped"]
    manifest = Manifest.from_json((dst / "manifest-00001-of-00002.json").read_text(), "m")
    assert manifest.schema == "kaggle" and manifest.layout_version == 2
    assert (dst / "grid-info.nc").is_file()
    again = run_encode("--src", str(small_raw_tree), "--dst", str(dst), "--num-shards", "2", "--shard", "1")
    assert json.loads(again.stdout.strip().splitlines()[-1])["skipped"] is True
    one = tmp_path / "one-reader"  # reader processes change the speed, never the bytes
    single = run_encode("--src", str(small_raw_tree), "--dst", str(one), "--num-shards", "2", "--shard", "1")
    assert single.returncode == 0, single.stderr
    assert tree_files(one) == tree_files(dst)


# ------------------------------------------------------------------ bad input


@pytest.fixture
def tree_copy(small_raw_tree: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "tree"
    shutil.copytree(small_raw_tree, copy)
    return copy


def first_mli(tree: Path) -> Path:
    return Path(list_raw_pairs(str(tree), 1)[0][0])


def expect_cli_error(tree: Path, dst: Path, pattern: str, *extra: str) -> None:
    result = run_encode("--src", str(tree), "--dst", str(dst), "--shard", "0", "--num-shards", "1", *extra)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("data_prep.encode: error:"), result.stderr
    assert pattern in lines[0], lines[0]
    assert not list(dst.glob("manifest-*")) if dst.exists() else True


def test_truncated_netcdf(tree_copy: Path, tmp_path: Path) -> None:
    mli = first_mli(tree_copy)
    mli.write_bytes(mli.read_bytes()[:5000])
    expect_cli_error(tree_copy, tmp_path / "out", mli.name)


def test_missing_variable_and_wrong_levels(tree_copy: Path, tmp_path: Path) -> None:
    mli = first_mli(tree_copy)
    with netCDF4.Dataset(mli, "a") as ds:
        ds.renameVariable("state_t", "state_T")
    with pytest.raises(EncodeError, match=f"{mli.name}: missing variable state_t"):
        encode_all(tree_copy, tmp_path / "a", 1)
    with netCDF4.Dataset(mli, "a") as ds:
        ds.renameVariable("state_T", "state_t")
    mlo = Path(list_raw_pairs(str(tree_copy), 1)[1][1])
    with netCDF4.Dataset(mlo) as src:
        values = {n: src[n][:] for n in src.variables}
        dims = {n: src[n].dimensions for n in src.variables}
    mlo.unlink()
    with netCDF4.Dataset(mlo, "w") as ds:  # the same variables on 59 levels
        ds.createDimension("lev", 59)
        ds.createDimension("ncol", NCOL)
        for name, value in values.items():
            ds.createVariable(name, "f8", dims[name])[:] = value[1:] if dims[name][0] == "lev" else value
    with pytest.raises(
        EncodeError, match=rf"{mlo.name}: state_t has shape \(59, 384\), expected \(60, 384\)"
    ):
        encode_all(tree_copy, tmp_path / "b", 1)


def test_nan_is_an_error_or_dropped_and_counted(tree_copy: Path, tmp_path: Path) -> None:
    mli = first_mli(tree_copy)
    with netCDF4.Dataset(mli, "a") as ds:
        t = ds["state_t"][:]
        t[5, 17] = np.nan
        t[7, 18] = np.inf
        ds["state_t"][:] = t
    expect_cli_error(tree_copy, tmp_path / "a", f"{mli.name}: state_t has 2 NaN/Inf values")
    (summary,) = encode_all(tree_copy, tmp_path / "b", 1, on_bad_values="drop-sample")
    assert summary.samples == 4 * NCOL - 2 and summary.dropped_samples == 2
    (manifest,) = read_manifests(str(tmp_path / "b"))
    assert manifest.dropped_samples == 2 and manifest.bad_values[0]["file"].endswith(mli.name)
    ids = set(
        pd.read_parquet(Path(export_parquet(str(tmp_path / "b"), str(tmp_path / "b.parquet"))["out"]))[
            "sample_id"
        ]
    )
    stamp = mli.name.split(".")[2]
    assert f"{stamp}_17" not in ids and f"{stamp}_18" not in ids and f"{stamp}_19" in ids


def test_mli_without_mlo(tree_copy: Path, tmp_path: Path) -> None:
    mli, mlo = list_raw_pairs(str(tree_copy), 1)[2]
    Path(mlo).unlink()
    expect_cli_error(tree_copy, tmp_path / "out", f"{mli}: its partner {mlo} is missing")


def test_bad_shard_empty_source_and_unwritable_dst(small_raw_tree: Path, tmp_path: Path) -> None:
    result = run_encode(
        "--src", str(small_raw_tree), "--dst", str(tmp_path / "o"), "--shard", "3", "--num-shards", "3"
    )
    assert result.returncode == 2 and "shard 3 out of range 0..2" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_cli_error(empty, tmp_path / "o", "no E3SM-MMF.mli.*.nc files found")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    expect_cli_error(small_raw_tree, blocker / "sub", "not writable")  # fails for root too


# ------------------------------------------------------------------ Kaggle CSV


def write_kaggle_csv(tree: Path, path: Path, with_targets: bool = True) -> pd.DataFrame:
    frame = expected_frame(tree)
    frame["sample_id"] = [f"train_{i}" for i in range(len(frame))]
    if not with_targets:
        frame = frame[["sample_id", *KAGGLE.input_columns]]
    frame.to_csv(path, index=False, float_format="%.17g")
    return frame


def test_kaggle_csv_round_trip(small_raw_tree: Path, tmp_path: Path) -> None:
    csv = tmp_path / "train.csv"
    frame = write_kaggle_csv(small_raw_tree, csv)
    summaries = encode_all(csv, tmp_path / "enc", 3, format="kaggle-csv", block_size=100, blocks_per_file=3)
    assert sum(s.samples for s in summaries) == len(frame)
    got = pd.read_parquet(export_parquet(str(tmp_path / "enc"), str(tmp_path / "x.parquet"))["out"])
    assert list(got["sample_id"]) == list(frame["sample_id"])  # row order kept across shards
    assert (got["ncol"].to_numpy() == np.arange(len(frame)) % NCOL).all()
    assert (got["time"] == -1).all()
    cols = list(KAGGLE.columns)
    q = [c for c in cols if c.startswith(("state_q0002_", "ptend_q0002_"))]  # float64 in the records too
    np.testing.assert_array_equal(got[q].to_numpy(), frame[q].to_numpy())
    others = [c for c in cols if c not in q]
    np.testing.assert_array_equal(got[others].to_numpy(), frame[others].to_numpy().astype(np.float32))


def test_kaggle_test_csv_has_no_targets(small_raw_tree: Path, tmp_path: Path) -> None:
    csv = tmp_path / "test.csv"
    write_kaggle_csv(small_raw_tree, csv, with_targets=False)
    encode_all(csv, tmp_path / "enc", 1, format="kaggle-csv")
    (manifest,) = read_manifests(str(tmp_path / "enc"))
    assert not manifest.has_targets
    got = pd.read_parquet(export_parquet(str(tmp_path / "enc"), str(tmp_path / "t.parquet"))["out"])
    assert got.shape[1] == 3 + KAGGLE.n_inputs and (got["ncol"] == -1).all()


def test_kaggle_csv_bad_header_and_bad_cell(small_raw_tree: Path, tmp_path: Path) -> None:
    csv = tmp_path / "train.csv"
    frame = write_kaggle_csv(small_raw_tree, csv)
    swapped = frame.rename(columns={"state_t_3": "state_t_4", "state_t_4": "state_t_3"})
    swapped.to_csv(tmp_path / "swapped.csv", index=False)
    result = run_encode("--src", str(tmp_path / "swapped.csv"), "--dst", str(tmp_path / "o"),
                        "--format", "kaggle-csv", "--shard", "0", "--num-shards", "1")  # fmt: skip
    assert result.returncode == 2
    assert "swapped.csv: column 4 is 'state_t_4', expected 'state_t_3'" in result.stderr
    frame.drop(columns=["cam_out_SOLLD"]).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(EncodeError, match="short.csv: missing columns from .cam_out_SOLLD."):
        encode_all(tmp_path / "short.csv", tmp_path / "o", 1, format="kaggle-csv")
    bad = frame.astype({"pbuf_N2O_7": object})
    bad.loc[700, "pbuf_N2O_7"] = "oops"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(EncodeError, match="bad.csv: row 701, column pbuf_N2O_7: 'oops' is not a number"):
        encode_all(tmp_path / "bad.csv", tmp_path / "o2", 1, format="kaggle-csv")
    assert not (tmp_path / "o2").exists() or not list((tmp_path / "o2").glob("manifest-*"))


# ------------------------------------------------------------------ GCS emulator


def test_encode_to_gcs_emulator_matches_local(small_raw_tree: Path, tmp_path: Path, gcs, monkeypatch) -> None:
    from tfpipe import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    gcs.create_bucket("enc-bucket")
    local = encode_all(small_raw_tree, tmp_path / "local", 2, blocks_per_file=1)
    remote = encode_all(small_raw_tree, "gs://enc-bucket/data", 2, blocks_per_file=1)
    assert [s.files for s in remote] == [s.files for s in local]
    for name, data in tree_files(tmp_path / "local").items():
        if name.endswith(".tfrecord") or name.startswith("manifest-"):
            assert storage.read_bytes(f"gs://enc-bucket/data/{name}") == data, name
    assert all(s.skipped for s in encode_all(small_raw_tree, "gs://enc-bucket/data", 2, blocks_per_file=1))
    # a killed shard on gs:// (a file published, no manifest) is redone, byte for byte the same
    storage.delete("gs://enc-bucket/data/manifest-00001-of-00002.json")
    storage.write_bytes("gs://enc-bucket/data/part-00001-of-00002-00000.tfrecord", b"half a file")
    assert not encode_all(small_raw_tree, "gs://enc-bucket/data", 2, blocks_per_file=1)[1].skipped
    for name, data in tree_files(tmp_path / "local").items():
        if name.endswith(".tfrecord") or name.startswith("manifest-"):
            assert storage.read_bytes(f"gs://enc-bucket/data/{name}") == data, name
    a = pd.read_parquet(export_parquet("gs://enc-bucket/data", str(tmp_path / "g.parquet"))["out"])
    b = pd.read_parquet(export_parquet(str(tmp_path / "local"), str(tmp_path / "l.parquet"))["out"])
    pd.testing.assert_frame_equal(a, b)


def test_encode_reads_a_raw_tree_on_gcs(small_raw_tree: Path, tmp_path: Path, gcs, monkeypatch) -> None:
    from tfpipe import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    storage.reset_clients()
    gcs.create_bucket("raw-bucket")
    for path in small_raw_tree.rglob("*.nc"):
        storage.upload_file(str(path), f"gs://raw-bucket/tree/{path.relative_to(small_raw_tree).as_posix()}")
    encode_all("gs://raw-bucket/tree", tmp_path / "from-gcs", 1)
    encode_all(small_raw_tree, tmp_path / "from-local", 1)
    local = {k: v for k, v in tree_files(tmp_path / "from-local").items() if k.startswith("part-")}
    assert local and local == {
        k: v for k, v in tree_files(tmp_path / "from-gcs").items() if k.startswith("part-")
    }
    assert (tmp_path / "from-gcs" / "grid-info.nc").is_file()


def test_unreachable_and_missing_buckets_fail_fast(small_raw_tree: Path, tmp_path: Path, gcs) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    for host, pattern in ((gcs.endpoint, "bucket does not exist"), (f"http://127.0.0.1:{closed}", "gs://")):
        start = time.monotonic()
        result = run_encode(
            "--src", str(small_raw_tree), "--dst", "gs://no-such-bucket/x", "--shard", "0", "--num-shards", "1",
            env={"STORAGE_EMULATOR_HOST": host, "TFPIPE_GCS_DEADLINE_S": "3"},
        )  # fmt: skip
        assert result.returncode == 2 and pattern in result.stderr, result.stderr[-1000:]
        assert len(result.stderr.strip().splitlines()) == 1
        assert time.monotonic() - start < 60

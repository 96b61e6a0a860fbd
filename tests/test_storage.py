"""tfpipe.storage on local paths, on gs:// (fake-gcs-server emulator) and on hf:// (loopback hub)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from gcs_emulator import HAS_TF_GCS_PLUGIN, NO_TF_GCS_PLUGIN, GcsEmulator
from test_download import COMMIT, FakeHub, hub, hub_tree  # noqa: F401  (fixtures)

from tfpipe import storage

REPO = Path(__file__).resolve().parents[1]


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tfpipe-tmp")]


# -- paths --------------------------------------------------------------------------------------------


def test_join_is_remote_and_split() -> None:
    assert storage.join("gs://b", "x", "y.txt") == "gs://b/x/y.txt"
    assert storage.join("gs://b/", "/x/", "y") == "gs://b/x/y"
    assert storage.join("hf://datasets/o/r", "train", "a.nc") == "hf://datasets/o/r/train/a.nc"
    assert storage.join("data", "x", "y") == os.path.join("data", "x", "y")
    assert storage.is_remote("gs://b/x") and storage.is_remote("hf://datasets/o/r")
    assert not storage.is_remote("/tmp/x") and not storage.is_remote(Path("rel/x"))
    assert storage.split_gs("gs://b/a/b") == ("b", "a/b") and storage.split_gs("gs://b") == ("b", "")
    with pytest.raises(storage.StorageError, match="unsupported URL scheme"):
        storage.exists("s3://bucket/x")
    with pytest.raises(storage.StorageError, match="without a bucket"):
        storage.read_bytes("gs:///x")


# -- local --------------------------------------------------------------------------------------------


def test_local_round_trip_of_every_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    storage.write_bytes(str(root / "a" / "x.bin"), b"hello")  # parent folders are created
    storage.write_bytes(root / "a" / "b" / "y.bin", b"world!")
    storage.write_bytes(str(root / "z.txt"), b"")
    assert storage.read_bytes(root / "a" / "x.bin") == b"hello"
    assert storage.size(str(root / "a" / "b" / "y.bin")) == 6
    assert storage.exists(root / "a") and storage.exists(root / "z.txt") and not storage.exists(root / "nope")
    assert storage.list_files(str(root)) == [
        str(root / "a" / "b" / "y.bin"),
        str(root / "a" / "x.bin"),
        str(root / "z.txt"),
    ]
    assert storage.list_files(str(root), ".bin") == [
        str(root / "a" / "b" / "y.bin"),
        str(root / "a" / "x.bin"),
    ]
    assert storage.list_files(str(root / "a" / "x.bin")) == [str(root / "a" / "x.bin")]
    assert storage.list_files(str(root / "missing")) == []
    assert [i.size for i in storage.list_file_infos(root, ".bin")] == [6, 5]
    assert storage.listdir(root) == ["a", "z.txt"] and storage.listdir(root / "missing") == []

    monkeypatch.chdir(tmp_path)  # relative paths stay relative
    assert storage.list_files("root/a", ".bin") == [os.path.join("root/a", "b", "y.bin"), "root/a/x.bin"]

    storage.download_file(root / "a" / "x.bin", tmp_path / "copy" / "x.bin")
    storage.upload_file(tmp_path / "copy" / "x.bin", str(root / "up" / "x.bin"))
    assert (root / "up" / "x.bin").read_bytes() == b"hello"
    storage.makedirs(root / "new" / "deep")
    assert (root / "new" / "deep").is_dir()
    storage.delete(root / "up" / "x.bin")
    storage.delete(root / "up" / "x.bin", missing_ok=True)
    with pytest.raises(storage.StorageNotFoundError, match="no such file"):
        storage.delete(root / "up" / "x.bin")
    with pytest.raises(FileNotFoundError, match="nope: no such file"):  # also a FileNotFoundError
        storage.read_bytes(root / "nope")
    with pytest.raises(storage.StorageError, match="is a directory"):
        storage.size(root / "a")
    assert _no_temp_files(tmp_path)


def test_local_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.bin"
    storage.write_bytes(target, b"old")
    with pytest.raises(storage.StorageError, match="already exists"):
        storage.write_bytes(target, b"new", overwrite=False)
    with pytest.raises(storage.StorageError, match="needs bytes"):
        storage.write_bytes(target, "text")  # type: ignore[arg-type]
    with pytest.raises(storage.StorageNotFoundError):
        storage.upload_file(tmp_path / "missing", target)
    with pytest.raises(storage.StorageNotFoundError):
        storage.download_file(tmp_path / "missing", target)
    assert target.read_bytes() == b"old"

    # A write that fails at the final rename (disk full, killed, ...) leaves the old file and no temp.
    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device", dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(storage.StorageError, match="No space left on device"):
        storage.write_bytes(target, b"new content")
    with pytest.raises(storage.StorageError, match="No space left on device"):
        storage.download_file(tmp_path / "f.bin", target)
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]

    storage.write_bytes(tmp_path / "g.bin", b"created", overwrite=False)
    storage.write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and _no_temp_files(tmp_path)


def test_one_temp_naming_publish_and_removal_of_leftovers(tmp_path: Path) -> None:
    from tfpipe.storage import staging

    name = staging.temp_name("best.keras", ".keras")
    assert (
        name.startswith(".best.keras.")
        and ".tfpipe-tmp" in name
        and staging.temp_target(name) == "best.keras"
    )
    assert (
        staging.temp_target(".part-00000-of-00003-00000.tmp-99") == "part-00000-of-00003-00000"
    )  # older encoders
    assert staging.temp_target("x.bin") is None and staging.temp_target(".hidden") is None
    mine = storage.local_temp_for(tmp_path / "part-00000-of-00002-00000")
    other = storage.local_temp_for(tmp_path / "part-00001-of-00002-00000")
    manifest = storage.local_temp_for(tmp_path / "manifest-00000-of-00002.json")
    assert storage.listdir(tmp_path) == [] and storage.list_files(tmp_path) == []  # temps are hidden
    assert storage.remove_temps(tmp_path, prefix="part-00000-of-00002-") == [mine]
    assert storage.remove_temps(tmp_path, ["manifest-00000-of-00002.json"]) == [manifest]
    assert storage.remove_temps(tmp_path) == [other] and not list(tmp_path.iterdir())
    local = storage.local_temp_for(tmp_path / "out.bin")
    Path(local).write_bytes(b"done")
    storage.publish(local, tmp_path / "out.bin")
    assert storage.listdir(tmp_path) == ["out.bin"] and (tmp_path / "out.bin").read_bytes() == b"done"
    assert _no_temp_files(tmp_path)


# -- gs:// --------------------------------------------------------------------------------------------


@pytest.fixture
def gcs_env(gcs: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[GcsEmulator]:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    monkeypatch.setenv("TFPIPE_GCS_DEADLINE_S", "5")
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    storage.reset_clients()
    yield gcs
    storage.reset_clients()


@pytest.fixture
def bucket(gcs_env: GcsEmulator) -> str:
    name = f"tfpipe-test-{uuid.uuid4().hex[:10]}"
    gcs_env.create_bucket(name)
    return name


def test_gcs_round_trip_of_every_function(bucket: str, tmp_path: Path) -> None:
    root = f"gs://{bucket}"
    storage.makedirs(f"{root}/dir")  # no-op
    storage.write_bytes(f"{root}/dir/x.bin", b"hello")
    storage.write_bytes(storage.join(root, "dir", "sub", "y.bin"), b"world!")
    storage.write_bytes(f"{root}/dirx.bin", b"sibling")
    assert storage.read_bytes(f"{root}/dir/x.bin") == b"hello"
    assert storage.size(f"{root}/dir/sub/y.bin") == 6
    assert (
        storage.exists(f"{root}/dir/x.bin")
        and storage.exists(f"{root}/dir")
        and storage.exists(f"{root}/dir/")
    )
    assert storage.exists(root) and storage.exists(root + "/")
    assert not storage.exists(f"{root}/dir/nope") and not storage.exists(f"{root}/di")
    assert storage.list_files(f"{root}/dir") == [f"{root}/dir/sub/y.bin", f"{root}/dir/x.bin"]  # not dirx.bin
    assert storage.list_files(root, ".bin") == [
        f"{root}/dir/sub/y.bin",
        f"{root}/dir/x.bin",
        f"{root}/dirx.bin",
    ]
    assert storage.list_files(f"{root}/dir/x.bin") == [f"{root}/dir/x.bin"]
    assert storage.list_files(f"{root}/nothing/") == []
    infos = storage.list_file_infos(f"{root}/dir/")
    assert [(i.size, i.checksum) for i in infos] == [
        (6, "md5:" + hashlib.md5(b"world!").hexdigest()),
        (5, "md5:" + hashlib.md5(b"hello").hexdigest()),
    ]
    assert storage.listdir(root) == ["dir", "dirx.bin"] and storage.listdir(f"{root}/dir") == ["sub", "x.bin"]

    local = tmp_path / "down" / "x.bin"
    storage.download_file(f"{root}/dir/x.bin", local)
    assert local.read_bytes() == b"hello"
    storage.upload_file(local, f"{root}/up/x.bin")
    assert storage.read_bytes(f"{root}/up/x.bin") == b"hello"
    storage.delete(f"{root}/up/x.bin")
    storage.delete(f"{root}/up/x.bin", missing_ok=True)
    assert not storage.exists(f"{root}/up/x.bin")
    with pytest.raises(storage.StorageNotFoundError, match="no such object"):
        storage.delete(f"{root}/up/x.bin")
    with pytest.raises(storage.StorageNotFoundError, match=f"gs://{bucket}/dir/nope: no such object"):
        storage.read_bytes(f"{root}/dir/nope")
    with pytest.raises(FileNotFoundError):
        storage.size(f"{root}/dir/nope")
    assert _no_temp_files(tmp_path)


def test_gcs_resumable_upload_and_download_of_a_multi_chunk_file(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tfpipe.storage.gcs.RESUMABLE_THRESHOLD", 256 * 1024)
    monkeypatch.setattr("tfpipe.storage.gcs.RESUMABLE_CHUNK_SIZE", 256 * 1024)
    data = os.urandom(1024 * 1024 + 12345)  # 5 chunks
    (tmp_path / "big.bin").write_bytes(data)
    storage.upload_file(tmp_path / "big.bin", f"gs://{bucket}/big.bin")
    assert storage.size(f"gs://{bucket}/big.bin") == len(data)
    storage.download_file(f"gs://{bucket}/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data
    assert (
        storage.list_file_infos(f"gs://{bucket}/big.bin")[0].checksum
        == "md5:" + hashlib.md5(data).hexdigest()
    )


def test_gcs_writes_are_atomic_and_create_only_is_honoured(bucket: str, tmp_path: Path) -> None:
    path = f"gs://{bucket}/obj.bin"
    storage.write_bytes(path, b"old")
    with pytest.raises(storage.StorageError, match="obj.bin: already exists"):
        storage.write_bytes(path, b"new", overwrite=False)
    (tmp_path / "new.bin").write_bytes(b"new")
    with pytest.raises(storage.StorageError, match="already exists"):
        storage.upload_file(tmp_path / "new.bin", path, overwrite=False)
    with pytest.raises(storage.StorageNotFoundError):
        storage.upload_file(tmp_path / "missing.bin", path)
    assert storage.read_bytes(path) == b"old"
    storage.write_bytes(f"gs://{bucket}/created.bin", b"c", overwrite=False)
    assert storage.read_bytes(f"gs://{bucket}/created.bin") == b"c"

    # A failed download leaves the old local file and no temporary file.
    local = tmp_path / "keep.bin"
    local.write_bytes(b"local")
    with pytest.raises(storage.StorageNotFoundError):
        storage.download_file(f"gs://{bucket}/missing.bin", local)
    assert local.read_bytes() == b"local" and _no_temp_files(tmp_path)


def test_gcs_missing_bucket_is_a_clear_error(gcs_env: GcsEmulator, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    calls = {
        "exists": lambda: storage.exists("gs://no-such-bucket-tfpipe/a"),
        "size": lambda: storage.size("gs://no-such-bucket-tfpipe/a"),
        "list_files": lambda: storage.list_files("gs://no-such-bucket-tfpipe/a"),
        "listdir": lambda: storage.listdir("gs://no-such-bucket-tfpipe/"),
        "read_bytes": lambda: storage.read_bytes("gs://no-such-bucket-tfpipe/a"),
        "write_bytes": lambda: storage.write_bytes("gs://no-such-bucket-tfpipe/a", b"x"),
        "upload_file": lambda: storage.upload_file(tmp_path / "f", "gs://no-such-bucket-tfpipe/a"),
        "download_file": lambda: storage.download_file("gs://no-such-bucket-tfpipe/a", tmp_path / "g"),
        "delete": lambda: storage.delete("gs://no-such-bucket-tfpipe/a", missing_ok=True),
    }
    for name, call in calls.items():
        t0 = time.monotonic()
        with pytest.raises(storage.StorageError) as info:
            call()
        message = str(info.value)
        assert message.startswith("gs://no-such-bucket-tfpipe/: bucket does not exist"), (name, message)
        assert "\n" not in message and time.monotonic() - t0 < 5, name
    assert not (tmp_path / "g").exists() and _no_temp_files(tmp_path)


def test_gcs_unreachable_or_silent_endpoint_fails_within_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TFPIPE_GCS_DEADLINE_S", "2")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
    silent = socket.socket()  # accepts connections (backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        for port in (closed_port, silent.getsockname()[1]):
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
            storage.reset_clients()
            t0 = time.monotonic()
            with pytest.raises(storage.StorageError, match=f"gs://b-x/k: .*127.0.0.1:{port}"):
                storage.read_bytes("gs://b-x/k")
            assert time.monotonic() - t0 < 10
    finally:
        silent.close()
        storage.reset_clients()


def _tfrecord_bytes(payloads: list[bytes]) -> bytes:
    """TFRecord files built by tfpipe.data.records' pure-Python framing: the pytest process needs no TensorFlow."""
    from tfpipe.data.records import frame_record

    return b"".join(frame_record(p) for p in payloads)


_TF_READER = textwrap.dedent(
    """
    import json, sys
    from tfpipe import storage

    path = storage.tf_path(sys.argv[1])  # loads the tensorflow-io plugin: no TF import before this
    import tensorflow as tf

    records = [r.numpy().decode() for r in tf.data.TFRecordDataset(path)]
    listed = tf.io.gfile.glob(storage.tf_path(sys.argv[2]) + "*.tfrecord")
    bucket = storage.tf_path(sys.argv[3])
    print("RESULT " + json.dumps({"records": records, "glob": listed, "bucket": bucket}))
    """
)


@pytest.mark.skipif(not HAS_TF_GCS_PLUGIN, reason=NO_TF_GCS_PLUGIN)
def test_tensorflow_reads_a_tfrecord_published_with_upload_file(
    bucket: str, gcs_env: GcsEmulator, tmp_path: Path
):
    payloads = [
        f"record-{i:05d}".encode() * 20 for i in range(200)
    ]  # ~50 KB: larger TF reads through the plugin crash now and then against the emulator
    local = tmp_path / "shard-0.tfrecord"
    local.write_bytes(_tfrecord_bytes(payloads))
    storage.upload_file(local, f"gs://{bucket}/data/shard-0.tfrecord")

    # Only the emulator endpoint: tf_path must set TF_USE_MODULAR_FILESYSTEM and the cache variables itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GCS_", "TF_USE_MODULAR"))}
    env.update(
        CLOUD_STORAGE_EMULATOR_ENDPOINT=gcs_env.env()["CLOUD_STORAGE_EMULATOR_ENDPOINT"],
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=str(REPO),
    )
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _TF_READER,
            f"gs://{bucket}/data/shard-0.tfrecord",
            f"gs://{bucket}/data/",
            f"gs://{bucket}",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["records"] == [p.decode() for p in payloads]
    assert result["glob"] == [f"gs://{bucket}/data/shard-0.tfrecord"]
    assert result["bucket"] == f"gs://{bucket}/"


def test_tf_path_without_an_emulator_and_the_late_import_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", raising=False)
    assert storage.tf_path("/data/x.tfrecord") == "/data/x.tfrecord"
    assert storage.tf_path("gs://b/x.tfrecord") == "gs://b/x.tfrecord"  # production: TF's built-in gs://
    assert storage.tf_path("gs://b") == "gs://b/"
    with pytest.raises(storage.StorageError, match="cannot open hf://"):
        storage.tf_path("hf://datasets/o/r/x")
    # With an emulator endpoint, TF imported before TF_USE_MODULAR_FILESYSTEM=1 cannot be fixed: say so.
    monkeypatch.setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("TF_USE_MODULAR_FILESYSTEM", raising=False)
    monkeypatch.setattr("tfpipe.storage.tf._TF_IO_LOADED", False)
    monkeypatch.setitem(sys.modules, "tensorflow", sys.modules.get("tensorflow", object()))
    with pytest.raises(storage.StorageError, match="TF_USE_MODULAR_FILESYSTEM=1"):
        storage.tf_path("gs://b/x")


# -- hf:// --------------------------------------------------------------------------------------------


@pytest.fixture
def hf_env(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:  # noqa: F811
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return hub


def test_hf_listing_and_reading(hf_env: FakeHub, hub_tree: Path, tmp_path: Path) -> None:  # noqa: F811
    root = "hf://datasets/LEAP/ClimSim_low-res"
    files = storage.list_file_infos(f"{root}/train/0001-02", ".nc")
    assert [f.path for f in files] == [
        f"{root}/train/0001-02/{p.name}" for p in sorted((hub_tree / "train" / "0001-02").iterdir())
    ]
    first = hub_tree / "train" / "0001-02" / files[0].path.rsplit("/", 1)[1]
    assert files[0].size == first.stat().st_size
    assert files[0].checksum == "sha256:" + hashlib.sha256(first.read_bytes()).hexdigest()
    readme = storage.list_file_infos(f"{root}/README.md")
    data = (hub_tree / "README.md").read_bytes()
    assert readme[0].checksum == "git-sha1:" + hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    assert len(storage.list_files(root, ".nc")) == 17  # 16 raw files and the grid, over 3 listing pages+
    assert storage.list_files(f"{root}@main/train/0001-03")[0].startswith(f"{root}@main/train/0001-03/E3SM")
    assert storage.listdir(root) == ["README.md", "grid-info.nc", "train"]
    assert storage.listdir(f"{root}/train") == ["0001-01", "0001-02", "0001-03"]
    assert storage.listdir(f"{root}/nope") == [] and storage.list_files(f"{root}/nope") == []
    assert storage.exists(f"{root}/README.md") and storage.exists(f"{root}/train")
    assert not storage.exists(f"{root}/train/nope.nc")
    assert storage.size(f"{root}/README.md") == len(data)
    assert storage.read_bytes(f"{root}/README.md") == data
    assert storage.read_bytes(files[0].path) == first.read_bytes()
    storage.download_file(files[1].path, tmp_path / "x.nc")
    assert (tmp_path / "x.nc").read_bytes() == (hub_tree / files[1].path.split(f"{root}/", 1)[1]).read_bytes()
    assert storage.read_bytes(f"{root}@{COMMIT}/README.md") == data
    assert storage.hf_commit(root) == storage.hf_commit(f"{root}@main") == COMMIT
    # The loopback hub answers Range requests as the hub client expects when it resumes a download.
    url = f"{hf_env.endpoint}/datasets/LEAP/ClimSim_low-res/resolve/main/README.md"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=2-"}), timeout=10) as r:
        assert r.status == 206 and r.read() == data[2:]
        assert r.headers["Content-Range"] == f"bytes 2-{len(data) - 1}/{len(data)}"

    with pytest.raises(storage.StorageNotFoundError, match="repository does not exist"):
        storage.list_files("hf://datasets/LEAP/nope/train")
    with pytest.raises(storage.StorageNotFoundError, match="revision does not exist"):
        storage.read_bytes(f"{root}@v9/README.md")
    with pytest.raises(storage.StorageNotFoundError, match="no such file"):
        storage.read_bytes(f"{root}/missing.txt")
    for write in (
        lambda: storage.write_bytes(f"{root}/x", b"x"),
        lambda: storage.upload_file(tmp_path / "x.nc", f"{root}/x"),
        lambda: storage.delete(f"{root}/README.md"),
    ):
        with pytest.raises(storage.StorageError, match="read-only"):
            write()

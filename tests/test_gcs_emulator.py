"""The local GCS emulator works for google-cloud-storage and for TensorFlow's gs:// filesystem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from gcs_emulator import HAS_TF_GCS_PLUGIN, NO_TF_GCS_PLUGIN, GcsEmulator

storage = pytest.importorskip("google.cloud.storage")
from google.auth.credentials import AnonymousCredentials  # noqa: E402


@pytest.fixture
def client(gcs: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> storage.Client:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    return storage.Client(project="test", credentials=AnonymousCredentials())


def test_round_trip_through_google_cloud_storage(gcs: GcsEmulator, client: storage.Client) -> None:
    gcs.create_bucket("roundtrip")
    bucket = client.bucket("roundtrip")
    assert "roundtrip" in [b.name for b in client.list_buckets()]

    bucket.blob("dir/a.txt").upload_from_string(b"hello")
    assert bucket.blob("dir/a.txt").download_as_bytes() == b"hello"
    assert [b.name for b in client.list_blobs("roundtrip", prefix="dir/")] == ["dir/a.txt"]

    data = os.urandom(20 * 1024 * 1024 + 123)
    bucket.blob("big.bin", chunk_size=4 * 1024 * 1024).upload_from_string(data)  # resumable
    assert bucket.blob("big.bin").download_as_bytes() == data

    bucket.blob("dir/a.txt").delete()
    assert [b.name for b in client.list_blobs("roundtrip")] == ["big.bin"]


def test_stop_kills_the_server() -> None:
    emulator = GcsEmulator(tf_relay=False).start()
    process = emulator._process
    assert process is not None
    emulator.stop()
    assert process.poll() is not None


_TF_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import tensorflow as tf
    import tensorflow_io  # registers the gs:// plugin (TF_USE_MODULAR_FILESYSTEM=1)

    root = sys.argv[1]
    # Small objects (~40 KB): TF reads of multi-MB objects through the tensorflow-io plugin crash now and
    # then against the emulator even with the relay (a test-environment limit; production uses TF's own gs://).
    records = [os.urandom(1000) + bytes([i % 256]) for i in range(40)]
    with tf.io.TFRecordWriter(f"{root}/tf/written.tfrecord") as writer:
        for record in records:
            writer.write(record)
    with tf.io.gfile.GFile(f"{root}/tf/note.txt", "w") as f:
        f.write("from tf")
    tf.io.gfile.rename(f"{root}/tf/note.txt", f"{root}/tf/renamed.txt")
    tf.io.gfile.copy(f"{root}/tf/renamed.txt", f"{root}/tf/doomed.txt")
    tf.io.gfile.remove(f"{root}/tf/doomed.txt")
    result = {
        "exists_bucket": tf.io.gfile.exists(root + "/"),
        "exists_missing": tf.io.gfile.exists(f"{root}/nope"),
        "listdir": sorted(tf.io.gfile.listdir(f"{root}/tf")),
        "glob": sorted(tf.io.gfile.glob(f"{root}/up/*.tfrecord")),
        "renamed": tf.io.gfile.GFile(f"{root}/tf/renamed.txt").read(),
        "uploaded_txt": tf.io.gfile.GFile(f"{root}/up/x.txt").read(),
        "tf_written_ok": [r.numpy() for r in tf.data.TFRecordDataset(f"{root}/tf/written.tfrecord")]
        == records,
        "uploaded_records": [
            r.numpy().decode()
            for r in tf.data.TFRecordDataset(
                tf.data.Dataset.list_files(f"{root}/up/*.tfrecord", shuffle=False)
            )
        ],
    }
    print("RESULT " + json.dumps(result))
    """
)


def _tfrecord_bytes(payloads: list[bytes]) -> bytes:
    """TFRecord files built by tfpipe.data.records' pure-Python framing: the pytest process needs no TensorFlow."""
    from tfpipe.data.records import frame_record

    return b"".join(frame_record(p) for p in payloads)


@pytest.mark.skipif(not HAS_TF_GCS_PLUGIN, reason=NO_TF_GCS_PLUGIN)
def test_tensorflow_reads_and_writes_gs_paths(
    gcs: GcsEmulator, client: storage.Client, tmp_path: Path
) -> None:
    gcs.create_bucket("tfbucket")
    bucket = client.bucket("tfbucket")
    bucket.blob("up/x.txt").upload_from_string(b"uploaded by gcs")
    payloads = [f"up-{i:06d}".encode() * 30 for i in range(150)]  # ~45 KB, see _TF_SCRIPT
    bucket.blob("up/b.tfrecord").upload_from_string(_tfrecord_bytes(payloads))

    script = tmp_path / "tf_gcs.py"
    script.write_text(_TF_SCRIPT)
    env = {**os.environ, **gcs.env(), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    proc = subprocess.run(
        [sys.executable, str(script), "gs://tfbucket"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    line = next(out for out in proc.stdout.splitlines() if out.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])

    assert result["exists_bucket"] is True
    assert result["exists_missing"] is False
    assert result["listdir"] == ["renamed.txt", "written.tfrecord"]
    assert result["glob"] == ["gs://tfbucket/up/b.tfrecord"]
    assert result["renamed"] == "from tf"
    assert result["uploaded_txt"] == "uploaded by gcs"
    assert result["tf_written_ok"] is True
    assert result["uploaded_records"] == [p.decode() for p in payloads]
    # What TF wrote is visible to google-cloud-storage too.
    assert bucket.blob("tf/renamed.txt").download_as_bytes() == b"from tf"
    assert {b.name for b in client.list_blobs("tfbucket", prefix="tf/")} == {
        "tf/renamed.txt",
        "tf/written.tfrecord",
    }

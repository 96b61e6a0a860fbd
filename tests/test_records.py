"""tfpipe.data.records: block layout, TFRecord framing, numpy and tf.data parsing agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfpipe.data.records import (
    decode_block,
    encode_block,
    frame_record,
    iter_records,
    make_block,
    parse_block,
)
from tfpipe.data.schema import KAGGLE, NLEV


def random_block(n: int = 5, with_targets: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(n, KAGGLE.n_inputs)) * 10.0 ** rng.integers(-50, 5, size=(n, KAGGLE.n_inputs))
    targets = rng.normal(size=(n, KAGGLE.n_targets)) if with_targets else None
    ids = [f"train_{i}" for i in range(n)]
    return make_block(KAGGLE, inputs, targets, np.arange(n) % 384, np.arange(n) * 1200, ids), inputs


def test_block_round_trip_in_numpy() -> None:
    block, inputs = random_block()
    back = decode_block(encode_block(block), KAGGLE)
    np.testing.assert_array_equal(back.inputs, inputs.astype(np.float32))
    np.testing.assert_array_equal(back.x64, inputs[:, KAGGLE.input_slice("state_q0002")])
    np.testing.assert_array_equal(back.targets, block.targets)
    assert back.sample_id == block.sample_id and list(back.ncol) == list(block.ncol)
    assert back.time.dtype == np.int64 and list(back.time) == list(block.time)
    assert encode_block(block) == encode_block(back)  # deterministic bytes


def test_framing_is_what_tensorflow_reads_and_writes(tmp_path: Path) -> None:
    records = [encode_block(random_block(n, seed=n)[0]) for n in (1, 3, 384)]
    ours = tmp_path / "ours.tfrecord"
    ours.write_bytes(b"".join(frame_record(r) for r in records))
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(ours))] == records
    theirs = tmp_path / "theirs.tfrecord"
    with tf.io.TFRecordWriter(str(theirs)) as writer:
        for r in records:
            writer.write(r)
    assert theirs.read_bytes() == ours.read_bytes()
    assert list(iter_records(ours.read_bytes(), "ours")) == records


def test_corruption_is_reported_with_the_file_name() -> None:
    data = frame_record(b"hello") + frame_record(b"world")
    with pytest.raises(OSError, match="f.tfrecord: truncated"):
        list(iter_records(data[:-3], "f.tfrecord"))
    flipped = bytearray(data)
    flipped[14] ^= 1
    with pytest.raises(OSError, match="f.tfrecord: corrupted TFRecord data at byte 0"):
        list(iter_records(bytes(flipped), "f.tfrecord"))


def test_parse_block_in_a_graph_matches_numpy() -> None:
    block, _ = random_block(7)
    test_block, _ = random_block(4, with_targets=False, seed=1)

    @tf.function
    def parse(record):
        return parse_block(record, KAGGLE)

    got = parse(tf.constant(encode_block(block)))
    np.testing.assert_array_equal(got["inputs"].numpy(), block.inputs)
    np.testing.assert_array_equal(got["targets"].numpy(), block.targets)
    np.testing.assert_array_equal(got["x64"].numpy(), block.x64)
    assert got["x64"].dtype == tf.float64 and got["x64"].shape[-1] == NLEV
    assert [s.decode() for s in got["sample_id"].numpy()] == block.sample_id
    no_targets = parse_block(tf.constant(encode_block(test_block)), KAGGLE, with_targets=False)
    assert "targets" not in no_targets and no_targets["inputs"].shape == (4, KAGGLE.n_inputs)


def test_hand_written_example_equals_protobufs() -> None:
    """The hand-written wire format parses to exactly the Example protobuf would have built."""
    from tensorflow.core.example import example_pb2, feature_pb2

    for n, with_targets in ((1, True), (384, False)):
        block, _ = random_block(n, with_targets=with_targets, seed=n)

        def b(value: bytes) -> feature_pb2.Feature:
            return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[value]))

        features = {
            "n": feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[n])),
            "x": b(block.inputs.astype("<f4").tobytes()),
            "y": b(b"" if block.targets is None else block.targets.astype("<f4").tobytes()),
            "x64": b(block.x64.astype("<f8").tobytes()),
            "y64": b(b"" if block.y64 is None else block.y64.astype("<f8").tobytes()),
            "ncol": b(block.ncol.astype("<i4").tobytes()),
            "time": b(block.time.astype("<i8").tobytes()),
            "sample_id": b("\n".join(block.sample_id).encode()),
        }
        expected = example_pb2.Example(features=feature_pb2.Features(feature=features))
        ours = encode_block(block)
        assert example_pb2.Example.FromString(ours) == expected
        assert len(ours) == expected.ByteSize()

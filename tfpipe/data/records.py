"""The TFRecord layout of encoded samples: writing blocks (numpy) and parsing them (pure TF ops).

Layout version 2
----------------
One TFRecord record holds a *block* of ``n`` samples (one raw time step = 384 columns, or up to
``block_size`` CSV rows) as a serialized ``tf.train.Example`` with these features:

=============  =========  ===================================================================
feature        kind       content
=============  =========  ===================================================================
``n``          int64      number of samples in the block
``x``          bytes      inputs, float32 little-endian, row-major ``[n, n_inputs]``
``y``          bytes      targets, float32 little-endian ``[n, n_targets]``; empty if unknown
``x64``        bytes      the float64 input columns (``state_q0002`` levels), little-endian
                          ``[n, 60]``; ``[n, 0]`` for a schema without ``state_q0002`` (v1)
``y64``        bytes      the float64 target columns (``ptend_q0002`` levels) ``[n, 60]``;
                          empty if the targets are unknown or the schema has none (v1)
``ncol``       bytes      grid column index, int32 ``[n]``, -1 where unknown (Kaggle test rows)
``time``       bytes      model time in seconds since 0001-01-01 00:00 (noleap), int64 ``[n]``,
                          -1 where unknown
``sample_id``  bytes      the ``n`` sample ids joined by ``\\n`` (UTF-8)
=============  =========  ===================================================================

Why blocks of raw bytes: parsing one Example per sample with float lists costs a protobuf decode
of ~924 floats per sample; here one record carries hundreds of samples and ``tf.io.decode_raw``
turns each feature into a tensor with one copy. ``tf.data`` then ``unbatch``es the blocks into
samples (see :func:`parse_block`).

Precision: inputs and targets are float32 (what models consume). ``state_q0002`` reaches 1e-50,
below float32's smallest subnormal (1.4e-45), so its 60 levels are also kept in float64 (``x64``):
at prediction time ``ptend_q0002_k = -state_q0002_k / 1200`` is computed from ``x64`` in float64,
bit for bit what the raw files give. Its tendency ``ptend_q0002 = (mlo - mli) / 1200`` reaches
1e-53 (``mlo`` is often exactly 0), so what a model is *scored against* keeps its 60 levels in
float64 too (``y64``): ``tfpipe export``, validation and out-of-fold truth take those columns from
``y64``. Cost: 480 bytes per sample for each (``x64`` and ``y64``), +13 % each over the 3 696
bytes of float32 inputs and targets of the Kaggle layout; training reads neither. Statistics are
computed from the float64 values where the encoder has them and from the float32 columns otherwise.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from tfpipe.data.schema import Schema

LAYOUT_VERSION = 2
FLOAT64_VARIABLE = "state_q0002"
"""The input variable whose levels are also stored in float64."""
FLOAT64_TARGET = "ptend_q0002"
"""The target variable whose levels are also stored in float64 (down to 1e-53)."""


@dataclass
class Block:
    """A block of samples in numpy form (what :func:`encode_block` writes and :func:`decode_block` reads)."""

    inputs: np.ndarray  # (n, n_inputs) float32
    targets: np.ndarray | None  # (n, n_targets) float32, None when unknown (test data)
    x64: np.ndarray  # (n, 60) float64 state_q0002 levels; (n, 0) without them
    y64: np.ndarray | None  # (n, 60) float64 ptend_q0002 levels; None when targets are unknown
    ncol: np.ndarray  # (n,) int32
    time: np.ndarray  # (n,) int64 seconds since 0001-01-01, -1 unknown
    sample_id: list[str]

    def __len__(self) -> int:
        return len(self.ncol)


def float64_columns(schema: Schema) -> slice:
    """Input columns that :class:`Block` also keeps in float64 (empty if the schema has none)."""
    return schema.input_slice(FLOAT64_VARIABLE) if FLOAT64_VARIABLE in schema.inputs else slice(0, 0)


def float64_target_columns(schema: Schema) -> slice:
    """Target columns that :class:`Block` also keeps in float64 (empty if the schema has none)."""
    return schema.target_slice(FLOAT64_TARGET) if FLOAT64_TARGET in schema.targets else slice(0, 0)


def _width(columns: slice) -> int:
    return columns.stop - columns.start


def make_block(
    schema: Schema,
    inputs: np.ndarray,
    targets: np.ndarray | None,
    ncol: np.ndarray,
    time: np.ndarray,
    sample_id: list[str],
) -> Block:
    """A :class:`Block` from float64 inputs/targets (float32 copies plus the float64 columns)."""
    inputs = np.asarray(inputs, dtype=np.float64)
    n = len(inputs)
    if inputs.shape != (n, schema.n_inputs):
        raise ValueError(f"inputs have shape {inputs.shape}, expected ({n}, {schema.n_inputs})")
    if targets is not None and np.shape(targets) != (n, schema.n_targets):
        raise ValueError(f"targets have shape {np.shape(targets)}, expected ({n}, {schema.n_targets})")
    if len(ncol) != n or len(time) != n or len(sample_id) != n:
        raise ValueError("ncol, time and sample_id need one entry per sample")
    targets = None if targets is None else np.asarray(targets, dtype=np.float64)
    return Block(
        inputs=inputs.astype(np.float32),
        targets=None if targets is None else targets.astype(np.float32),
        x64=np.ascontiguousarray(inputs[:, float64_columns(schema)]),
        y64=None if targets is None else np.ascontiguousarray(targets[:, float64_target_columns(schema)]),
        ncol=np.asarray(ncol, dtype=np.int32),
        time=np.asarray(time, dtype=np.int64),
        sample_id=list(sample_id),
    )


def _le(array: np.ndarray, dtype: str) -> bytes:
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | 0x80 if value else bits)
        if not value:
            return bytes(out)


def _head(field: int, length: int) -> bytes:
    """Tag (wire type 2, length-delimited) and length of a protobuf field."""
    return _varint(field << 3 | 2) + _varint(length)


def block_pieces(block: Block) -> list[bytes]:
    """A block as a ``tf.train.Example`` in protobuf wire format, as pieces whose concatenation is the record.

    Written by hand rather than through protobuf so that the large arrays are never copied and the bytes
    do not depend on the protobuf version: features in sorted key order, ``n`` as a packed Int64List, every
    other feature a one-value BytesList (``Example.features=1``, ``Features.feature=1`` map entries of
    ``key=1, value=2``, ``Feature.bytes_list=1 | int64_list=3``, ``*List.value=1``).
    """
    if any("\n" in s for s in block.sample_id):
        raise ValueError("sample ids must not contain newlines")
    payloads = {
        "ncol": _le(block.ncol, "i4"),
        "sample_id": "\n".join(block.sample_id).encode(),
        "time": _le(block.time, "i8"),
        "x": _le(block.inputs, "f4"),
        "x64": _le(block.x64, "f8"),
        "y": b"" if block.targets is None else _le(block.targets, "f4"),
        "y64": b"" if block.y64 is None else _le(block.y64, "f8"),
    }
    packed_n = _varint(len(block))
    n_list = _head(1, len(packed_n)) + packed_n
    pieces: list[bytes] = []
    for key in sorted([*payloads, "n"]):
        if key == "n":
            feature = [_head(3, len(n_list)) + n_list]
        else:
            data = payloads[key]
            value_head = _head(1, len(data))
            feature = [_head(1, len(value_head) + len(data)) + value_head, data]
        feature_len = sum(len(p) for p in feature)
        entry_start = _head(1, len(key)) + key.encode() + _head(2, feature_len)
        pieces += [_head(1, len(entry_start) + feature_len) + entry_start, *feature]
    return [_head(1, sum(len(p) for p in pieces)), *pieces]


def encode_block(block: Block) -> bytes:
    """Serialize a block as one ``tf.train.Example`` (deterministic bytes; see :func:`block_pieces`)."""
    return b"".join(block_pieces(block))


def decode_block(record: bytes, schema: Schema) -> Block:
    """Inverse of :func:`encode_block`, in numpy (for export, statistics and tests)."""
    from tensorflow.core.example import example_pb2

    feature = example_pb2.Example.FromString(record).features.feature
    n = int(feature["n"].int64_list.value[0])
    raw = {k: feature[k].bytes_list.value[0] for k in ("x", "y", "x64", "y64", "ncol", "time", "sample_id")}
    inputs = np.frombuffer(raw["x"], dtype="<f4").reshape(n, schema.n_inputs)
    targets = np.frombuffer(raw["y"], dtype="<f4").reshape(n, schema.n_targets) if raw["y"] else None
    ids = raw["sample_id"].decode().split("\n") if n else []
    return Block(
        inputs=inputs,
        targets=targets,
        x64=np.frombuffer(raw["x64"], dtype="<f8").reshape(n, _width(float64_columns(schema))),
        y64=None
        if targets is None
        else np.frombuffer(raw["y64"], dtype="<f8").reshape(n, _width(float64_target_columns(schema))),
        ncol=np.frombuffer(raw["ncol"], dtype="<i4"),
        time=np.frombuffer(raw["time"], dtype="<i8"),
        sample_id=ids,
    )


def _masked_crc(data: bytes) -> int:
    import google_crc32c

    return _mask_int(google_crc32c.value(data))


def _mask_int(crc: int) -> int:
    """TFRecord's CRC masking: rotate right by 15 bits and add a constant."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _mask(digest: bytes) -> int:
    return _mask_int(int.from_bytes(digest, "big"))


def frame_record(data: bytes) -> bytes:
    """One record in TFRecord framing: length, its masked CRC32C, data, its masked CRC32C."""
    return b"".join(frame_pieces([data]))


def frame_pieces(pieces: list[bytes]) -> list[bytes]:
    """TFRecord framing around a record given as pieces (no joined copy of the record is made)."""
    import google_crc32c

    length = struct.pack("<Q", sum(len(p) for p in pieces))
    crc = google_crc32c.Checksum()
    for piece in pieces:
        crc.update(piece)
    return [length + struct.pack("<I", _masked_crc(length)), *pieces, struct.pack("<I", _mask(crc.digest()))]


def iter_records(data: bytes, where: str) -> Iterator[bytes]:
    """The records of a whole TFRecord file's bytes, CRC-checked; OSError naming ``where``."""
    pos, size = 0, len(data)
    while pos < size:
        if pos + 12 > size:
            raise OSError(f"{where}: truncated TFRecord header at byte {pos}")
        (length,) = struct.unpack_from("<Q", data, pos)
        (crc,) = struct.unpack_from("<I", data, pos + 8)
        if crc != _masked_crc(data[pos : pos + 8]):
            raise OSError(f"{where}: corrupted TFRecord length at byte {pos}")
        start, end = pos + 12, pos + 12 + length
        if end + 4 > size:
            raise OSError(f"{where}: truncated TFRecord at byte {pos}")
        record = data[start:end]
        if struct.unpack_from("<I", data, end)[0] != _masked_crc(record):
            raise OSError(f"{where}: corrupted TFRecord data at byte {pos}")
        yield record
        pos = end + 4


def read_blocks(paths: Iterable[str], schema: Schema) -> Iterator[Block]:
    """Every block of the TFRecord files ``paths`` in order, in numpy (local or remote paths)."""
    from tfpipe import storage

    for path in paths:
        for record in iter_records(storage.read_bytes(path), path):
            yield decode_block(record, schema)


_KEY_FEATURES = {
    "inputs": "x",
    "targets": "y",
    "x64": "x64",
    "y64": "y64",
    "ncol": "ncol",
    "time": "time",
    "sample_id": "sample_id",
}


def parse_block(
    record, schema: Schema, with_targets: bool = True, keys: tuple[str, ...] | None = None
) -> dict:
    """Parse one serialized block into a dict of per-sample tensors (pure TF ops, XLA-free graph).

    Returns ``inputs [n, n_inputs] float32``, ``x64 [n, 60] float64``, ``ncol [n] int32``,
    ``time [n] int64``, ``sample_id [n] string`` and, when ``with_targets``, ``targets
    [n, n_targets] float32`` and ``y64 [n, 60] float64``; with ``keys``, only those (the other
    features are not even parsed, which is most of the cost of a training read: ``x64``, ``y64``
    and the sample ids are large).
    """
    import tensorflow as tf

    if keys is None:
        keys = ("inputs", "x64", "ncol", "time", "sample_id") + (("targets", "y64") if with_targets else ())
    spec = {"n": tf.io.FixedLenFeature([], tf.int64)}
    spec.update({_KEY_FEATURES[k]: tf.io.FixedLenFeature([], tf.string) for k in keys})
    f = tf.io.parse_single_example(record, spec)
    n = tf.cast(f["n"], tf.int32)
    decoders = {
        "inputs": lambda: tf.reshape(tf.io.decode_raw(f["x"], tf.float32), [n, schema.n_inputs]),
        "targets": lambda: tf.reshape(tf.io.decode_raw(f["y"], tf.float32), [n, schema.n_targets]),
        "x64": lambda: tf.reshape(
            tf.io.decode_raw(f["x64"], tf.float64), [n, _width(float64_columns(schema))]
        ),
        "y64": lambda: tf.reshape(
            tf.io.decode_raw(f["y64"], tf.float64), [n, _width(float64_target_columns(schema))]
        ),
        "ncol": lambda: tf.reshape(tf.io.decode_raw(f["ncol"], tf.int32), [n]),
        "time": lambda: tf.reshape(tf.io.decode_raw(f["time"], tf.int64), [n]),
        "sample_id": lambda: tf.reshape(tf.strings.split(f["sample_id"], "\n"), [n]),
    }
    return {k: decoders[k]() for k in keys}

"""Decode encoded shards back into one parquet file (``tfpipe export``), for inspection and round trips.

Columns: ``sample_id`` (string), ``ncol`` (int32), ``time`` (int64 seconds since 0001-01-01, -1 if
unknown), then the schema's input columns and, when the data has them, its target columns, all
float64. ``state_q0002_*`` come from the float64 copy in the records (exact); other columns are the
stored float32 values widened to float64. Written one row group per block, to a temporary name
first, so memory stays bounded and a killed export leaves no parquet file behind.

With targets the file is marked as truth (:func:`tfpipe.evaluate.prediction_files.truth_metadata`) and carries
its grid: ``--grid FILE``, else the ``grid-info.nc`` that encoding copied beside the shards, so that
``tfpipe score --metric climsim`` weights with the data's own grid. Without targets it is marked
``inputs``.
"""

from __future__ import annotations

import numpy as np

from tfpipe import storage
from tfpipe.data.grid import GRID_FILE, grid_to_dict, load_grid
from tfpipe.data.manifest import data_files, read_manifests
from tfpipe.data.records import Block, float64_columns, float64_target_columns, read_blocks
from tfpipe.data.schema import Schema, get_schema
from tfpipe.evaluate.prediction_files import arrow_metadata, truth_metadata


def block_columns(block: Block, schema: Schema) -> tuple[np.ndarray, np.ndarray | None]:
    """float64 (inputs, targets) of a block, with the exact float64 state_q0002 and ptend_q0002 levels."""
    inputs = block.inputs.astype(np.float64)
    inputs[:, float64_columns(schema)] = block.x64
    targets = None if block.targets is None else exact_targets(block.targets, block.y64, schema)
    return inputs, targets


def exact_targets(targets: np.ndarray, y64: np.ndarray, schema: Schema) -> np.ndarray:
    """float64 targets: the float32 columns, with the records' float64 copies where they have them."""
    out = np.asarray(targets, dtype=np.float64).copy()
    out[:, float64_target_columns(schema)] = y64
    return out


def data_grid(data: str, grid: str | None = None) -> dict | None:
    """The grid a truth of ``data`` carries: ``grid``, else ``data/grid-info.nc``, else None."""
    path = grid or storage.join(data, GRID_FILE)
    if grid is None and not storage.exists(path):
        return None
    return grid_to_dict(load_grid(path), path)


def export_parquet(
    data: str, out: str, allow_partial: bool = False, grid: str | None = None, extra: dict | None = None
) -> dict:
    """Write every complete shard under ``data`` to the parquet file ``out``; returns a summary.

    ``grid``: the grid-info file the truth carries (default ``data/grid-info.nc`` when there is one);
    ``extra``: more keys for the truth's ``tfpipe`` metadata.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifests = read_manifests(data, allow_partial=allow_partial)
    schema = get_schema(manifests[0].schema)
    has_targets = all(m.has_targets for m in manifests)
    embedded = data_grid(data, grid) if has_targets else None
    if has_targets:
        meta = truth_metadata(schema, embedded, **(extra or {}))
    else:
        meta = {"kind": "inputs", "schema": schema.name}
    names = list(schema.input_columns) + (list(schema.target_columns) if has_targets else [])
    fields = [pa.field("sample_id", pa.string()), pa.field("ncol", pa.int32()), pa.field("time", pa.int64())]
    fields += [pa.field(n, pa.float64()) for n in names]
    arrow_schema = pa.schema(fields, metadata=arrow_metadata(meta))

    rows = 0
    with storage.staged_output(out) as tmp_path, pq.ParquetWriter(tmp_path, arrow_schema) as writer:
        for block in read_blocks(data_files(data, manifests), schema):
            inputs, targets = block_columns(block, schema)
            values = np.concatenate([inputs, targets], axis=1) if has_targets else inputs
            arrays = [pa.array(block.sample_id), pa.array(block.ncol), pa.array(block.time)]
            arrays += [pa.array(values[:, k]) for k in range(values.shape[1])]
            writer.write_table(pa.Table.from_arrays(arrays, schema=arrow_schema))
            rows += len(block)
    return {
        "out": out,
        "rows": rows,
        "columns": 3 + len(names),
        "schema": schema.name,
        "shards": len(manifests),
        "kind": meta["kind"],
        "grid": None if embedded is None else embedded["source"],
    }

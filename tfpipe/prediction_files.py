"""Prediction and truth files of the LEAP score: parquet in, parquet out, weights from a CSV.

Predictions and truth are parquet files with ``sample_id`` first and the target columns in schema
(Kaggle) order. Prediction files must have exactly these columns; a truth file may carry more (e.g.
the inputs of ``tfpipe export``). Rows are matched by ``sample_id``, never by position. Every problem
is a :class:`~tfpipe.metrics.ScoreError` that names the file and, where there is one, the column.
"""

from __future__ import annotations

import os

import numpy as np

from tfpipe import storage
from tfpipe.metrics import ScoreError, default_schema
from tfpipe.schema import Schema

SAMPLE_ID = "sample_id"


def open_parquet(path: str):  # -> pyarrow.parquet.ParquetFile
    """A local or gs:// parquet file, or a ScoreError (FileNotFoundError if a local file is missing)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if storage.is_remote(path):
            return pq.ParquetFile(pa.BufferReader(storage.read_bytes(path)))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
        return pq.ParquetFile(path)
    except pa.ArrowException as err:
        raise ScoreError(f"{path}: not a readable parquet file ({' '.join(str(err).split())})") from None


def _check_columns(path: str, names: list[str], expected: list[str]) -> None:
    """Exact columns in exact order, or a ScoreError naming the first problem and the file."""
    if names == expected:
        return
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ScoreError(f"{path}: duplicate column {name!r}")
        seen.add(name)
    missing = [c for c in expected if c not in seen]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ScoreError(f"{path}: missing column {missing[0]!r}{more}")
    wanted = set(expected)
    extra = [c for c in names if c not in wanted]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ScoreError(f"{path}: unexpected column {extra[0]!r}{more}")
    i = next(i for i, (a, b) in enumerate(zip(names, expected, strict=True)) if a != b)
    raise ScoreError(f"{path}: column {i} is {names[i]!r}, expected {expected[i]!r} (Kaggle column order)")


def _read_columns(path: str, pf, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids as str, float64 [rows, len(columns)]) with duplicate, null and non-numeric checks."""
    import pyarrow as pa

    table = pf.read(columns=[SAMPLE_ID, *columns])
    id_column = table.column(SAMPLE_ID)
    if id_column.null_count:
        raise ScoreError(f"{path}: {id_column.null_count} rows have no sample_id")
    ids = np.array([str(x) for x in id_column.to_pylist()], dtype=object)
    values = np.empty((table.num_rows, len(columns)), dtype=np.float64)
    for k, name in enumerate(columns):
        column = table.column(name)
        if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
            raise ScoreError(f"{path}: column {name!r} has type {column.type}, expected float64")
        values[:, k] = column.to_numpy(zero_copy_only=False)  # nulls become NaN
    unique, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if len(unique) < len(ids):
        dup = unique[counts > 1][0]
        raise ScoreError(f"{path}: duplicate sample_id {str(dup)!r} ({counts[counts > 1][0]} rows)")
    return ids, values


def _check_finite(path: str, values: np.ndarray, columns: tuple[str, ...] | list[str]) -> None:
    finite = np.isfinite(values)
    if finite.all():
        return
    bad = np.flatnonzero(~finite.all(axis=0))
    parts = []
    for k in bad[:8]:
        col = values[:, k]
        nan, inf = int(np.isnan(col).sum()), int(np.isinf(col).sum())
        counts = ", ".join(s for s in (f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else "") if s)
        parts.append(f"{columns[k]} ({counts})")
    more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
    raise ScoreError(f"{path}: non-finite values in {len(bad)} columns: {', '.join(parts)}{more}")


def load_predictions(path: str, schema: Schema | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sample ids, float64 [rows, T]) of a prediction file with exactly ``sample_id`` + targets in order.

    Raises :class:`ScoreError` naming the file and the column for wrong, missing, extra or misordered
    columns, and naming the columns with their NaN/Inf counts for non-finite values.
    """
    schema = default_schema(schema)
    pf = open_parquet(path)
    columns = list(schema.target_columns)
    _check_columns(path, list(pf.schema_arrow.names), [SAMPLE_ID, *columns])
    ids, values = _read_columns(path, pf, columns)
    _check_finite(path, values, columns)
    return ids, values


def load_truth(path: str, schema: Schema | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`load_predictions`, but other columns (inputs, ``ncol``, ...) may be present."""
    schema = default_schema(schema)
    pf = open_parquet(path)
    names = set(pf.schema_arrow.names)
    columns = list(schema.target_columns)
    missing = [c for c in [SAMPLE_ID, *columns] if c not in names]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ScoreError(f"{path}: missing column {missing[0]!r}{more}")
    ids, values = _read_columns(path, pf, columns)
    _check_finite(path, values, columns)
    return ids, values


def load_weights(path: str, schema: Schema | None = None) -> np.ndarray:
    """Per-target weights (float64 [T]) from a ``sample_submission.csv`` (``sample_id`` + targets).

    LEAP has one weight per target, repeated on every row: the first row is taken and every other row
    must equal it (streamed, so the 625k-row Kaggle file is fine).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    schema = default_schema(schema)
    columns = list(schema.target_columns)
    convert = pacsv.ConvertOptions(column_types={c: pa.float64() for c in columns} | {SAMPLE_ID: pa.string()})
    first: np.ndarray | None = None
    row = 0
    with storage.open_binary(path) as f:
        try:
            reader = pacsv.open_csv(f, convert_options=convert)
            _check_columns(path, list(reader.schema.names), [SAMPLE_ID, *columns])
            for batch in reader:
                if batch.num_rows == 0:
                    continue
                values = np.column_stack(
                    [batch.column(k).to_numpy(zero_copy_only=False) for k in range(1, len(columns) + 1)]
                )
                if first is None:
                    first = values[0].copy()
                    _check_finite(path, first[None, :], columns)
                differs = np.flatnonzero((values != first).any(axis=1))
                if differs.size:
                    r = int(differs[0])
                    k = int(np.flatnonzero(values[r] != first)[0])
                    raise ScoreError(
                        f"{path}: weights differ between rows: row {row + r + 1} has {columns[k]}="
                        f"{float(values[r, k])!r}, row 1 has {float(first[k])!r} "
                        "(LEAP weights are one row repeated)"
                    )
                row += batch.num_rows
        except pa.ArrowException as err:
            raise ScoreError(f"{path}: not a readable weights CSV ({' '.join(str(err).split())})") from None
    if first is None:
        raise ScoreError(f"{path}: no weight rows")
    return first


def align(ids_ref: np.ndarray, ids: np.ndarray, ref_path: str, path: str) -> np.ndarray:
    """Row index into ``ids`` that puts its rows in the order of ``ids_ref`` (same ids required)."""
    import pandas as pd

    index = pd.Index(ids)
    order = index.get_indexer(pd.Index(ids_ref))
    if len(ids) == len(ids_ref) and (order >= 0).all():
        return order
    if (order < 0).any():
        first, where = ids_ref[int(np.flatnonzero(order < 0)[0])], f"in {ref_path}, not in {path}"
    else:
        extra = ~index.isin(pd.Index(ids_ref))
        first, where = ids[int(np.flatnonzero(extra)[0])], f"in {path}, not in {ref_path}"
    raise ScoreError(
        f"{ref_path} ({len(ids_ref)} rows) and {path} ({len(ids)} rows) have different sample_ids: "
        f"first differing id {str(first)!r} ({where})"
    )


def write_predictions(path: str, ids: np.ndarray, values: np.ndarray, schema: Schema | None = None) -> str:
    """Write ``sample_id`` (string) + the target columns (float64, Kaggle order) to parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = default_schema(schema)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(ids), schema.n_targets):
        raise ScoreError(f"{path}: values {values.shape} do not match {len(ids)} ids x {schema.n_targets}")
    fields = [pa.field(SAMPLE_ID, pa.string())] + [pa.field(c, pa.float64()) for c in schema.target_columns]
    arrays = [pa.array([str(x) for x in ids], pa.string())] + [
        pa.array(values[:, k]) for k in range(values.shape[1])
    ]
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    with storage.staged_output(path) as tmp_path:
        pq.write_table(table, tmp_path)
    return path


def strip_parquet(path: str) -> str:
    """``path`` without a trailing ``.parquet``."""
    return path[: -len(".parquet")] if path.endswith(".parquet") else path

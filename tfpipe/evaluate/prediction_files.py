"""Prediction and truth files of the LEAP score: parquet in, parquet out, weights from a CSV.

Predictions and truth are parquet files with ``sample_id`` first and the target columns in schema
(Kaggle) order. Prediction files must have exactly these columns; a truth file may carry more (e.g.
the inputs of ``tfpipe export``). Rows are matched by ``sample_id``, never by position. Every problem
is a :class:`~tfpipe.evaluate.metrics.ScoreError` that names the file and, where there is one, the column.

Every file tfpipe writes says what it is in its parquet key-value metadata: key ``tfpipe``, a JSON
object ``{"kind": "truth" | "prediction" | "inputs", "schema": NAME, ...}``; a truth may carry its
``grid`` (:func:`tfpipe.data.grid.grid_to_dict`) and any ``extra`` keys its writer was given. Only a file
marked as truth is accepted as truth (a prediction scored as truth gives a meaningless number), and a
truth is refused as predictions. Predictions from other tools (no metadata) are accepted.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tfpipe import storage
from tfpipe.data.schema import SCHEMAS, Schema, get_schema
from tfpipe.evaluate.metrics import ScoreError, default_schema

SAMPLE_ID = "sample_id"
METADATA_KEY = b"tfpipe"
"""The parquet key-value metadata key of what a tfpipe file is (JSON)."""
TRAIN_STD_KEY = "train_target_std"
"""Truth metadata key: the training std per target of the model that wrote it (``predict --oof``), which
the blend's default objective divides by (:mod:`tfpipe.blend.objective`)."""
REMAKE_TRUTH = "tfpipe export --data ENCODED --out T.parquet"


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


def truth_metadata(schema: Schema, grid: dict | None = None, **extra) -> dict:
    """The ``tfpipe`` metadata of a truth file of ``schema``: with its grid (or none) and ``extra`` keys
    (``kind`` and ``schema`` cannot be overridden)."""
    meta: dict = {"kind": "truth", "schema": schema.name}
    if grid is not None:
        meta["grid"] = grid
    return extra | meta


def prediction_metadata(schema: Schema, **extra) -> dict:
    """The ``tfpipe`` metadata of a prediction file of ``schema``."""
    return extra | {"kind": "prediction", "schema": schema.name}


def arrow_metadata(meta: dict) -> dict[bytes, bytes]:
    """``meta`` as the key-value metadata of a pyarrow schema (``schema.with_metadata(...)``)."""
    return {METADATA_KEY: json.dumps(meta, allow_nan=False).encode()}


def read_tfpipe_metadata(path: str, pf=None) -> dict:
    """The ``tfpipe`` metadata of a parquet file (``pf``: the file, if already open); {} if it has none."""
    pf = open_parquet(path) if pf is None else pf
    raw = (pf.schema_arrow.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("schema") not in SCHEMAS:
        raise ScoreError(f"{path}: unreadable tfpipe metadata; re-make the file with tfpipe")
    return meta


def require_truth(path: str, pf=None) -> dict:
    """The metadata of a truth file, or a one-line ScoreError saying what the file is instead."""
    meta = read_tfpipe_metadata(path, pf)
    kind = meta.get("kind")
    if kind == "truth":
        return meta
    if kind == "prediction":
        raise ScoreError(
            f"{path}: a prediction file, not a truth file; the truth is what `{REMAKE_TRUTH}` "
            "or `tfpipe predict --oof` writes"
        )
    if kind is not None:
        raise ScoreError(f"{path}: a tfpipe {kind!r} file without targets, not a truth file")
    raise ScoreError(
        f"{path}: not a tfpipe truth file (no tfpipe metadata: another tool's file, or one from a tfpipe "
        f"that did not mark truth files); re-make it with `{REMAKE_TRUTH}` (out-of-fold truth: "
        "`tfpipe predict --oof`)"
    )


def _check_targets(path: str, meta: dict, schema: Schema, what: str) -> None:
    """A file of another layout (other targets) named as such, rather than as a missing column."""
    name = meta.get("schema")
    if name is not None and get_schema(name).target_columns != schema.target_columns:
        raise ScoreError(f"{path}: {what} of the {name} layout, expected {schema.name} targets")


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
    meta = read_tfpipe_metadata(path, pf)
    if meta.get("kind") == "truth":
        raise ScoreError(f"{path}: a truth file, not predictions (pass it as the truth)")
    _check_targets(path, meta, schema, "predictions")
    columns = list(schema.target_columns)
    _check_columns(path, list(pf.schema_arrow.names), [SAMPLE_ID, *columns])
    ids, values = _read_columns(path, pf, columns)
    _check_finite(path, values, columns)
    return ids, values


def load_truth(path: str, schema: Schema | None = None, pf=None) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`load_predictions` for a file marked as truth (:func:`require_truth`); other columns
    (inputs, ``ncol``, ...) may be present. ``schema`` defaults to the truth's own."""
    pf = open_parquet(path) if pf is None else pf
    meta = require_truth(path, pf)
    schema = get_schema(meta["schema"]) if schema is None else schema
    _check_targets(path, meta, schema, "a truth")
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


def write_predictions(
    path: str, ids: np.ndarray, values: np.ndarray, schema: Schema | None = None, metadata: dict | None = None
) -> str:
    """Write ``sample_id`` (string) + the target columns (float64, Kaggle order) to parquet, atomically.

    ``metadata``: the file's ``tfpipe`` metadata, by default :func:`prediction_metadata`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = default_schema(schema)
    metadata = prediction_metadata(schema) if metadata is None else metadata
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(ids), schema.n_targets):
        raise ScoreError(f"{path}: values {values.shape} do not match {len(ids)} ids x {schema.n_targets}")
    fields = [pa.field(SAMPLE_ID, pa.string())] + [pa.field(c, pa.float64()) for c in schema.target_columns]
    arrays = [pa.array([str(x) for x in ids], pa.string())] + [
        pa.array(values[:, k]) for k in range(values.shape[1])
    ]
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=arrow_metadata(metadata)))
    with storage.staged_output(path) as tmp_path:
        pq.write_table(table, tmp_path)
    return path


def write_truth(
    path: str, ids: np.ndarray, values: np.ndarray, schema: Schema | None = None, grid: dict | None = None,
    extra: dict | None = None,
) -> str:  # fmt: skip
    """:func:`write_predictions` marked as truth (:func:`truth_metadata` with ``grid`` and ``extra``)."""
    schema = default_schema(schema)
    return write_predictions(path, ids, values, schema, truth_metadata(schema, grid, **(extra or {})))


def strip_parquet(path: str) -> str:
    """``path`` without a trailing ``.parquet``."""
    return path[: -len(".parquet")] if path.endswith(".parquet") else path
